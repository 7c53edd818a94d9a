// /proc reads the broker does per connection and per eventfd, in one call
// each. Through node:fs they cost an open + fstat + two reads + close (a
// /proc file has no size) and the fs layer's argument handling, per file:
// issue 16's sixth pass measured the caller context at ~125 µs of broker
// CPU per lease under load, half of it in JS. Same sources, same results.
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common.h"

namespace devlease {
namespace {

/** readlink(2) of `path` into `out`; false (errno set) if it cannot be read. */
bool ReadLink(const std::string& path, std::string& out) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink(path.c_str(), buf, sizeof(buf));
  if (n < 0) return false;
  out.assign(buf, static_cast<size_t>(n));
  return true;
}

/** The first line of `path` (without its newline); false (errno set) if it cannot be read. */
bool ReadFirstLine(const std::string& path, std::string& out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  FdGuard guard(fd);
  out.clear();
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    const char* nl = static_cast<const char*>(memchr(buf, '\n', static_cast<size_t>(n)));
    if (nl != nullptr) {
      out.append(buf, static_cast<size_t>(nl - buf));
      return true;
    }
    out.append(buf, static_cast<size_t>(n));
  }
}

// callerFacts(pid): [readlink /proc/<pid>/exe | null, first line of /proc/<pid>/cgroup | null]. Either is
// null when it cannot be read (the process is gone, or belongs to someone this process may not inspect).
Napi::Value CallerFacts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto pid = IntArg(info, 0, "pid", 1, INT32_MAX);
  const std::string dir = "/proc/" + std::to_string(pid);
  Napi::Array out = Napi::Array::New(env, 2);
  std::string s;
  out.Set(0u, ReadLink(dir + "/exe", s) ? Napi::Value(Napi::String::New(env, s)) : env.Null());
  out.Set(1u, ReadFirstLine(dir + "/cgroup", s) ? Napi::Value(Napi::String::New(env, s)) : env.Null());
  return out;
}

// fdTarget(fd): readlink of /proc/self/fd/<fd> ("anon_inode:[eventfd]", "pipe:[123]", a path...).
Napi::Value FdTarget(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  std::string s;
  if (!ReadLink("/proc/self/fd/" + std::to_string(fd), s)) ThrowErrno(info.Env(), "readlink", errno);
  return Napi::String::New(info.Env(), s);
}

}  // namespace

void RegisterProc(Napi::Env env, Napi::Object exports) {
  exports.Set("callerFacts", Napi::Function::New(env, CallerFacts, "callerFacts"));
  exports.Set("fdTarget", Napi::Function::New(env, FdTarget, "fdTarget"));
}

}  // namespace devlease
