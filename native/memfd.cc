// memfd_create, ftruncate, hole punching and file seals.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "common.h"

namespace devlease {
namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = StringArg(info, 0, "name");
  auto flags = static_cast<unsigned>(IntArg(info, 1, "flags", 0, UINT32_MAX));
  int fd = memfd_create(name.c_str(), flags | MFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), "memfd_create", errno);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int64_t size = IntArg(info, 1, "size", 0, (int64_t{1} << 53) - 1);
  int rc;
  do {
    rc = ftruncate(fd, size);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(info.Env(), "ftruncate", errno);
  return info.Env().Undefined();
}

// punchHole(fd, offset, length): the range reads zero from now on and its pages are freed, in every mapping
// of the file, without touching them (the simulator's queue reset: zeroing 64 KiB by stores faulted in up to
// 16 never-used pages of shared memory per queue).
Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int64_t offset = IntArg(info, 1, "offset", 0, (int64_t{1} << 53) - 1);
  int64_t length = IntArg(info, 2, "length", 0, (int64_t{1} << 53) - 1);
  int rc;
  do {
    rc = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(info.Env(), "fallocate", errno);
  return info.Env().Undefined();
}

Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int seals = static_cast<int>(IntArg(info, 1, "seals", 0, INT32_MAX));
  if (fcntl(fd, F_ADD_SEALS, seals) < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return info.Env().Undefined();
}

Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) ThrowErrno(info.Env(), "fcntl", errno);
  return Napi::Number::New(info.Env(), seals);
}

}  // namespace

void RegisterMemfd(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole, "punchHole"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
}

}  // namespace devlease
