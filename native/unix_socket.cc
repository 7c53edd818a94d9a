// AF_UNIX sockets, SOCK_STREAM (the vfio-user wire, as QEMU and libvfio-user
// use it) or SOCK_SEQPACKET (devlease's own admin socket): listen, connect,
// accept, pair, sendmsg and recvmsg with SCM_RIGHTS (who the peer is: peer.cc);
// and one SOCK_DGRAM send, systemd's notify protocol. Every socket is
// non-blocking and close-on-exec; nothing here ever blocks.
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common.h"

namespace devlease {
namespace {

constexpr int kSockFlags = SOCK_NONBLOCK | SOCK_CLOEXEC;

// The socket type argument: true = SOCK_STREAM, false = SOCK_SEQPACKET.
int SockType(const Napi::CallbackInfo& info, size_t i) {
  return (BoolArg(info, i, "stream") ? SOCK_STREAM : SOCK_SEQPACKET) | kSockFlags;
}

sockaddr_un UnixAddress(Napi::Env env, const std::string& path, const char* syscall) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) ThrowErrno(env, syscall, ENAMETOOLONG);
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

int NewSocket(Napi::Env env, int type) {
  int fd = socket(AF_UNIX, type, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno);
  return fd;
}

// A socket file left behind by a dead listener refuses connections; a live
// one accepts (or is merely busy). Only the former may be removed.
bool IsStaleSocket(const sockaddr_un& addr, int type) {
  struct stat st {};
  if (lstat(addr.sun_path, &st) < 0 || !S_ISSOCK(st.st_mode)) return false;
  int probe = socket(AF_UNIX, type, 0);
  if (probe < 0) return false;
  int rc = connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  int err = errno;
  close(probe);
  // A live listener of the other type answers EPROTOTYPE: not stale.
  return rc < 0 && err == ECONNREFUSED;
}

Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  auto mode = static_cast<mode_t>(IntArg(info, 1, "mode", 0, 07777));
  int backlog = static_cast<int>(IntArg(info, 2, "backlog", 1, INT32_MAX));
  int type = SockType(info, 3);
  sockaddr_un addr = UnixAddress(env, path, "bind");

  FdGuard sock(NewSocket(env, type));
  auto* sa = reinterpret_cast<const sockaddr*>(&addr);
  if (bind(sock.get(), sa, sizeof(addr)) < 0) {
    int err = errno;
    if (err != EADDRINUSE || !IsStaleSocket(addr, type)) ThrowErrno(env, "bind", err);
    if (unlink(addr.sun_path) < 0 && errno != ENOENT) ThrowErrno(env, "unlink", errno);
    if (bind(sock.get(), sa, sizeof(addr)) < 0) ThrowErrno(env, "bind", errno);
  }
  // chmod before listen(): nobody can connect in between, so the socket is
  // never reachable with the umask's permissions.
  if (chmod(addr.sun_path, mode) < 0) {
    int err = errno;
    unlink(addr.sun_path);
    ThrowErrno(env, "chmod", err);
  }
  if (listen(sock.get(), backlog) < 0) {
    int err = errno;
    unlink(addr.sun_path);
    ThrowErrno(env, "listen", err);
  }
  return Napi::Number::New(env, sock.release());
}

Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  sockaddr_un addr = UnixAddress(env, path, "connect");
  FdGuard sock(NewSocket(env, SockType(info, 1)));
  // A unix-domain connect completes at once or fails at once; EAGAIN means
  // the listener's backlog is full and is reported like any other error.
  if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) < 0) {
    ThrowErrno(env, "connect", errno);
  }
  return Napi::Number::New(env, sock.release());
}

Napi::Value Accept(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int conn = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (conn < 0) {
    // ECONNABORTED: the client went away before we accepted; nothing to hand out.
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EINTR) {
      return Napi::Number::New(info.Env(), -1);
    }
    ThrowErrno(info.Env(), "accept4", errno);
  }
  return Napi::Number::New(info.Env(), conn);
}

Napi::Value Pair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, SockType(info, 0), 0, sv) < 0) ThrowErrno(info.Env(), "socketpair", errno);
  Napi::Array out = Napi::Array::New(info.Env(), 2);
  out.Set(uint32_t{0}, Napi::Number::New(info.Env(), sv[0]));
  out.Set(uint32_t{1}, Napi::Number::New(info.Env(), sv[1]));
  return out;
}

// sendmsg(fd, data, fds): bytes sent, or -1 when the socket buffer is full.
Napi::Value Sendmsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes data = BytesArg(info, 1, "data");
  int fds[kMaxFds];
  uint32_t nfds = 0;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    if (!info[2].IsArray()) ThrowInvalidArg(env, "fds must be an array of descriptors");
    Napi::Array list = info[2].As<Napi::Array>();
    nfds = list.Length();
    if (nfds > static_cast<uint32_t>(kMaxFds)) {
      ThrowMisuse(env, "ERR_DEVLEASE_TOO_MANY_FDS",
                  "a message carries at most " + std::to_string(kMaxFds) + " fds, got " + std::to_string(nfds));
    }
    for (uint32_t i = 0; i < nfds; i++) fds[i] = FdElement(env, list, i);
  }

  iovec iov{data.data, data.length};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, "sendmsg", errno);
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// Collects the SCM_RIGHTS fds of a received message into out[0, max_fds); any
// beyond are closed (counted against `sender`, the peer's uid or kNoSender, if
// that close is queued) and reported as MSG_CTRUNC. Returns how many were kept.
int TakeFds(msghdr& msg, int max_fds, int* out, int64_t sender) {
  int received = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int rfd;
      memcpy(&rfd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      // Never more than the caller asked for, whatever the kernel did.
      if (received < max_fds) {
        out[received++] = rfd;
      } else {
        CloseReceivedFd(rfd, sender);  // a client's: its close may wait on a server it runs (close.cc)
        msg.msg_flags |= MSG_CTRUNC;
      }
    }
  }
  return received;
}

Napi::Array FdArray(Napi::Env env, const int* fds, int count) {
  Napi::Array out = Napi::Array::New(env, count);
  for (int i = 0; i < count; i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
  return out;
}

// Receive buffer reused by every recvmsg on this thread (one env per thread).
thread_local std::vector<uint8_t> scratch;

// recvmsg(fd, maxBytes, maxFds = 16): null when nothing is queued.
Napi::Value Recvmsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  auto max_bytes = static_cast<size_t>(IntArg(info, 1, "maxBytes", 0, 64 << 20));
  int max_fds = kMaxFds;
  if (info.Length() > 2 && !info[2].IsUndefined()) max_fds = static_cast<int>(IntArg(info, 2, "maxFds", 0, kMaxFds));
  if (scratch.size() < max_bytes) scratch.resize(max_bytes);

  iovec iov{scratch.data(), max_bytes};
  // Room for exactly max_fds descriptors: the kernel installs no more than
  // fit and drops (closes) the rest, reporting MSG_CTRUNC.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = max_fds > 0 ? control : nullptr;
  msg.msg_controllen = max_fds > 0 ? CMSG_SPACE(sizeof(int) * max_fds) : 0;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
    ThrowErrno(env, "recvmsg", errno);
  }

  int received[kMaxFds];
  int count = TakeFds(msg, max_fds, received, kNoSender);  // seqpacket peers: the admin socket's, trusted

  size_t got = static_cast<size_t>(n) < max_bytes ? static_cast<size_t>(n) : max_bytes;
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<uint8_t>::Copy(env, scratch.data(), got));
  out.Set("fds", FdArray(env, received, count));
  out.Set("truncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_TRUNC) != 0));
  out.Set("ctruncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  // A 0-byte read without fds means the peer hung up (both socket types).
  out.Set("eof", Napi::Boolean::New(env, n == 0 && count == 0 && (msg.msg_flags & MSG_CTRUNC) == 0));
  return out;
}

// What the last recvInto on this thread received besides bytes: [0] the number of fds, [1] why control data
// was cut (MSG_CTRUNC; a RecvCut), [2, 2 + [0]) the fds. JS reads it through one Int32Array made at load
// (recvIntoFds) instead of an object and an array built per read (every message of every connection is read
// here).
// thread_local is per environment: one environment per thread (main, each worker), and the thread outlives it.
thread_local int32_t recv_fds[2 + kMaxFds];

// recv_fds[1]. The kernel sets MSG_CTRUNC both when a message carries more fds than the control buffer holds
// and when it cannot install one in this process (scm_detach_fds, net/core/scm.c: it installs them in order and
// stops at the first that fails — fd table full, EMFILE past RLIMIT_NOFILE; or a security module's
// security_file_receive refusing it — and sets MSG_CTRUNC for the rest, which it drops). The buffer holds at
// least max_fds, so fewer than max_fds taken with MSG_CTRUNC can only be an install that failed: the peer sent
// nothing wrong, this process could not take what it sent. (Exactly max_fds taken is read as "more than
// max_fds", which it is, whatever else happened to the rest.)
enum RecvCut : int32_t {
  kCutNone = 0,
  kCutTooMany = 1,     // more fds than max_fds: the rest were closed
  kCutBacklogged = 2,  // an untrusted peer's fds dropped unopened (the closer thread's queue, close.cc)
  kCutTableFull = 3,   // fds not installed: this process's fd table is full (EMFILE)
  kCutRefused = 4,     // fds not installed, the table not full: a security module refused them
};

// Why fds came cut short though there was room for them (see RecvCut). Probed with a dup of `fd` while those
// that were installed are still open, i.e. with the table as the kernel found it: EMFILE says full.
RecvCut InstallFailure(int fd) {
  int probe = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (probe < 0) return errno == EMFILE ? kCutTableFull : kCutRefused;
  close(probe);
  return kCutRefused;
}

// recvInto(fd, buf, offset, length, maxFds, untrusted = false, peerUid = -1): reads at most `length` bytes
// into buf[offset..] without an intermediate copy (the stream framer reads each vfio-user message straight into
// its own buffer). Returns the byte count (0 with no fds is hang-up), or -1 on EAGAIN; the fds are in recv_fds.
// From an untrusted peer (a client), no fd is taken while the closer thread's queue is full, or while the
// share of it of the peer's uid (SO_PEERCRED, read once by the caller; -1: not known, the global bound alone)
// is (close.cc): the kernel drops the message's fds unopened — a drop is no close(2), so no file system is
// asked to flush — and recv_fds[1] says 2. So the user who holds a close up is refused once its own share is
// queued, and other users' clients are not, until the global bound. The caller counts the fds it takes
// against peerUid when it closes them (src/sys/fd.ts, senderUid).
Napi::Value RecvInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  recv_fds[0] = recv_fds[1] = 0;  // every call rewrites them, a throw too: no stale fds for a caller to take twice
  int fd = FdArg(info, 0);
  Bytes buf = BytesArg(info, 1, "buf");
  auto offset = static_cast<size_t>(IntArg(info, 2, "offset", 0, INT32_MAX));
  auto length = static_cast<size_t>(IntArg(info, 3, "length", 1, INT32_MAX));
  int max_fds = static_cast<int>(IntArg(info, 4, "maxFds", 0, kMaxFds));
  if (offset > buf.length || length > buf.length - offset) ThrowInvalidArg(env, "offset + length exceed buf");
  const bool untrusted = info.Length() > 5 && info[5].ToBoolean().Value();
  int64_t peer = kNoSender;
  if (untrusted && info.Length() > 6 && !info[6].IsUndefined()) peer = IntArg(info, 6, "peerUid", -1, 0xfffffffe);
  const bool backlogged = untrusted && ClosesBacklogged(peer);
  if (backlogged) max_fds = 0;

  iovec iov{buf.data + offset, length};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = max_fds > 0 ? control : nullptr;
  msg.msg_controllen = max_fds > 0 ? CMSG_SPACE(sizeof(int) * max_fds) : 0;
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    ThrowErrno(env, "recvmsg", errno);
  }
  // The kernel's own cut, before TakeFds adds one for fds past max_fds (CMSG_SPACE's padding can hold one more).
  const bool kernel_cut = (msg.msg_flags & MSG_CTRUNC) != 0;
  int count = msg.msg_controllen > 0 ? TakeFds(msg, max_fds, recv_fds + 2, peer) : 0;
  RecvCut cut = kCutNone;
  if (backlogged && kernel_cut) {
    cut = kCutBacklogged;
  } else if (kernel_cut && count < max_fds) {
    // The message is whole (its bytes were read) but its fds are not: those that came are of no use without
    // the rest, and each holds a slot of the full table. Closed here, after the probe.
    cut = InstallFailure(fd);
    for (int i = 0; i < count; i++) CloseReceivedFd(recv_fds[2 + i], peer);
    count = 0;
  } else if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    cut = kCutTooMany;
  }
  recv_fds[0] = count;
  recv_fds[1] = cut;
  return Napi::Number::New(env, static_cast<double>(n));
}

// nofileLimit(): RLIMIT_NOFILE's soft limit (what a full fd table is full at), -1 if unlimited. For the
// message of a failed receive: read without opening anything, as the table it describes may be full.
Napi::Value NofileLimit(const Napi::CallbackInfo& info) {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) < 0) ThrowErrno(info.Env(), "getrlimit", errno);
  return Napi::Number::New(info.Env(), r.rlim_cur == RLIM_INFINITY ? -1 : static_cast<double>(r.rlim_cur));
}

// setSendBuffer(fd, bytes): raise SO_SNDBUF so that one message of `bytes` fits (on AF_UNIX SOCK_SEQPACKET a
// message longer than the send buffer fails with EMSGSIZE, however long one waits). SO_SNDBUFFORCE passes
// net.core.wmem_max when the process may (CAP_NET_ADMIN); otherwise SO_SNDBUF, which the kernel caps there.
// Returns the buffer the kernel set (it doubles the value asked, for its bookkeeping).
Napi::Value SetSendBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int bytes = static_cast<int>(IntArg(info, 1, "bytes", 1, 64 * 1024 * 1024));
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) < 0) {
    if (errno != EPERM) ThrowErrno(env, "setsockopt", errno);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes)) < 0) ThrowErrno(env, "setsockopt", errno);
  }
  int now = 0;
  socklen_t len = sizeof(now);
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &now, &len) < 0) ThrowErrno(env, "getsockopt", errno);
  return Napi::Number::New(env, now);
}

// sdNotify(address, message): one datagram to systemd's NOTIFY_SOCKET, as
// sd_notify(3) sends it: a path, or an abstract name written with a leading
// '@'. Sent here rather than by running systemd-notify: a child would inherit
// (and close, as it execs and exits) fds whose close may wait on a client's
// FUSE server, and the caller would wait for the child. A full receive
// queue is waited for up to a second (connected, POLLOUT says when it has
// room), then EAGAIN: never an unbounded wait.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string address = StringArg(info, 0, "address");
  Bytes message = BytesArg(info, 1, "message");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // A path needs its terminating NUL; an abstract name is exactly its bytes ('@' standing for the first, 0).
  size_t room = address[0] == '@' ? sizeof(addr.sun_path) : sizeof(addr.sun_path) - 1;
  if (address.empty() || address.size() > room) ThrowErrno(env, "sendto", ENAMETOOLONG);
  if (address[0] != '/' && address[0] != '@') ThrowErrno(env, "sendto", EAFNOSUPPORT);
  memcpy(addr.sun_path, address.data(), address.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
  if (address[0] == '@') addr.sun_path[0] = '\0';  // abstract: the name is exactly these bytes
  else len += 1;                                  // a path: with its terminating NUL
  FdGuard sock(NewSocket(env, SOCK_DGRAM | kSockFlags));
  if (connect(sock.get(), reinterpret_cast<const sockaddr*>(&addr), len) < 0) ThrowErrno(env, "connect", errno);
  ssize_t n;
  for (int tries = 0;; tries++) {
    n = send(sock.get(), message.data, message.length, MSG_NOSIGNAL);
    if (n >= 0 || errno == EINTR) {
      if (n >= 0) break;
      continue;
    }
    if (errno != EAGAIN || tries > 0) ThrowErrno(env, "sendto", errno);
    pollfd p{sock.get(), POLLOUT, 0};
    if (poll(&p, 1, 1000) <= 0) ThrowErrno(env, "sendto", EAGAIN);
  }
  return env.Undefined();
}

}  // namespace

void RegisterUnixSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, Listen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, Connect, "unixConnect"));
  exports.Set("unixAccept", Napi::Function::New(env, Accept, "unixAccept"));
  exports.Set("unixPair", Napi::Function::New(env, Pair, "unixPair"));
  exports.Set("recvInto", Napi::Function::New(env, RecvInto, "recvInto"));
  // Static memory of this thread, never freed while the environment lives: no finalizer.
  exports.Set("recvIntoFds", Napi::Int32Array::New(env, 2 + kMaxFds,
                                                   Napi::ArrayBuffer::New(env, recv_fds, sizeof(recv_fds)), 0));
  exports.Set("nofileLimit", Napi::Function::New(env, NofileLimit, "nofileLimit"));
  exports.Set("sendmsg", Napi::Function::New(env, Sendmsg, "sendmsg"));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify, "sdNotify"));
  exports.Set("recvmsg", Napi::Function::New(env, Recvmsg, "recvmsg"));
  exports.Set("setSendBuffer", Napi::Function::New(env, SetSendBuffer, "setSendBuffer"));
}

}  // namespace devlease
