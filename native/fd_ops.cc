// Generic descriptor syscalls (close is close.cc): dup, ioctl, pread/pwrite, read/write,
// open, fstat, O_NONBLOCK, and the F_SETLEASE "does anyone else have this
// file open" probe.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>

#include "common.h"

namespace devlease {
namespace {

Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return Napi::Number::New(info.Env(), copy);
}

Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  auto request = static_cast<unsigned long>(IntArg(info, 1, "request", 0, UINT32_MAX));
  Napi::Value arg = info[2];
  int rc;
  if (arg.IsNumber()) {
    int64_t v = IntArg(info, 2, "arg", -((int64_t{1} << 53) - 1), (int64_t{1} << 53) - 1);
    rc = ioctl(fd, request, static_cast<unsigned long>(v));
  } else if (arg.IsBigInt()) {
    bool lossless = false;
    uint64_t v = arg.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) ThrowInvalidArg(info.Env(), "arg must fit in 64 bits");
    rc = ioctl(fd, request, static_cast<unsigned long>(v));
  } else {
    Bytes bytes = BytesArg(info, 2, "arg");
    rc = ioctl(fd, request, bytes.data);
  }
  if (rc < 0) ThrowErrno(info.Env(), "ioctl", errno);
  return Napi::Number::New(info.Env(), rc);
}

Napi::Value Pread(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  Bytes buf = BytesArg(info, 1, "buf");
  int64_t offset = OffsetArg(info, 2, "offset");
  ssize_t n = pread(fd, buf.data, buf.length, offset);
  if (n < 0) ThrowErrno(info.Env(), "pread", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value Pwrite(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  Bytes buf = BytesArg(info, 1, "buf");
  int64_t offset = OffsetArg(info, 2, "offset");
  ssize_t n = pwrite(fd, buf.data, buf.length, offset);
  if (n < 0) ThrowErrno(info.Env(), "pwrite", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  Bytes buf = BytesArg(info, 1, "buf");
  ssize_t n = read(fd, buf.data, buf.length);
  if (n < 0) ThrowErrno(info.Env(), "read", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  Bytes buf = BytesArg(info, 1, "buf");
  ssize_t n = write(fd, buf.data, buf.length);
  if (n < 0) ThrowErrno(info.Env(), "write", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  std::string path = StringArg(info, 0, "path");
  int flags = static_cast<int>(IntArg(info, 1, "flags", 0, INT32_MAX));
  int mode = info.Length() > 2 && !info[2].IsUndefined() ? static_cast<int>(IntArg(info, 2, "mode", 0, 07777)) : 0;
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) ThrowErrno(info.Env(), "open", errno);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value Fstat(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct stat st {};
  if (fstat(fd, &st) < 0) ThrowErrno(info.Env(), "fstat", errno);
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_ino)));
  out.Set("dev", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_dev)));
  out.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  out.Set("mode", Napi::Number::New(env, st.st_mode));
  return out;
}

// statx of an fd with AT_STATX_DONT_SYNC: the kernel's cached attributes, so a file system served by a peer
// (FUSE, NFS) is not asked — a FUSE server that never answers GETATTR would otherwise hold the calling thread,
// the broker's one thread among them. Also the mount id (STATX_MNT_ID), to name the file system in an error.
Napi::Value StatCached(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct statx stx {};
  if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_MODE | STATX_INO | STATX_SIZE | STATX_MNT_ID,
            &stx) < 0)
    ThrowErrno(info.Env(), "statx", errno);
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(stx.stx_ino)));
  out.Set("dev", Napi::BigInt::New(env, static_cast<uint64_t>(makedev(stx.stx_dev_major, stx.stx_dev_minor))));
  out.Set("size", Napi::Number::New(env, static_cast<double>(stx.stx_size)));
  out.Set("mode", Napi::Number::New(env, stx.stx_mode));
  out.Set("mntId",
          (stx.stx_mask & STATX_MNT_ID) ? Napi::Number::New(env, static_cast<double>(stx.stx_mnt_id)) : env.Null());
  return out;
}

// fcntl(F_GETFL): the description's access mode and status flags, without a
// read of /proc/self/fdinfo (which costs an open, a read and a close).
Napi::Value StatusFlags(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return Napi::Number::New(info.Env(), flags);
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  bool on = BoolArg(info, 1, "on");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowErrno(info.Env(), "fcntl", errno);
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && fcntl(fd, F_SETFL, wanted) < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return info.Env().Undefined();
}

// F_SETLEASE(F_WRLCK) is granted only when the inode's open-for-write (and,
// with IMA, open-for-read) counts equal those of our own description: any
// other open file description -- including one kept alive only by an mmap
// or by an SCM_RIGHTS message in flight -- makes it fail with EAGAIN. We
// take the lease and drop it at once; it is a probe, not a lock.
// Needs: the caller's fsuid owns the file, or CAP_LEASE; a regular file
// (memfds qualify). Without either the kernel answers EACCES / EINVAL, which
// is thrown rather than guessed at.
Napi::Value LeaseProbe(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (fcntl(fd, F_SETLEASE, F_WRLCK) < 0) {
    if (errno == EAGAIN || errno == EBUSY) return Napi::Boolean::New(info.Env(), true);
    ThrowErrno(info.Env(), "fcntl", errno);
  }
  if (fcntl(fd, F_SETLEASE, F_UNLCK) < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return Napi::Boolean::New(info.Env(), false);
}

}  // namespace

void RegisterFdOps(Napi::Env env, Napi::Object exports) {
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl, "ioctl"));
  exports.Set("pread", Napi::Function::New(env, Pread, "pread"));
  exports.Set("pwrite", Napi::Function::New(env, Pwrite, "pwrite"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("fstat", Napi::Function::New(env, Fstat, "fstat"));
  exports.Set("statCached", Napi::Function::New(env, StatCached, "statCached"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));
  exports.Set("statusFlags", Napi::Function::New(env, StatusFlags, "statusFlags"));
  exports.Set("leaseProbe", Napi::Function::New(env, LeaseProbe, "leaseProbe"));
}

}  // namespace devlease
