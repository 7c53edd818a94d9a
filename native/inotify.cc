// inotify instances: non-blocking, close-on-exec; inotifyRead drains all
// queued events.
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "common.h"

namespace devlease {
namespace {

Napi::Value InotifyInit(const Napi::CallbackInfo& info) {
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), "inotify_init1", errno);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value InotifyAddWatch(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  std::string path = StringArg(info, 1, "path");
  auto mask = static_cast<uint32_t>(IntArg(info, 2, "mask", 0, UINT32_MAX));
  int wd = inotify_add_watch(fd, path.c_str(), mask);
  if (wd < 0) ThrowErrno(info.Env(), "inotify_add_watch", errno);
  return Napi::Number::New(info.Env(), wd);
}

Napi::Value InotifyRmWatch(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int wd = static_cast<int>(IntArg(info, 1, "wd", 0, INT32_MAX));
  if (inotify_rm_watch(fd, wd) < 0) ThrowErrno(info.Env(), "inotify_rm_watch", errno);
  return info.Env().Undefined();
}

Napi::Value InotifyRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Napi::Array events = Napi::Array::New(env);
  uint32_t count = 0;
  alignas(inotify_event) char buf[16 * (sizeof(inotify_event) + NAME_MAX + 1)];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      ThrowErrno(env, "read", errno);
    }
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      inotify_event ev;
      memcpy(&ev, buf + off, sizeof(ev));
      const char* name = buf + off + sizeof(inotify_event);
      Napi::Object out = Napi::Object::New(env);
      out.Set("wd", Napi::Number::New(env, ev.wd));
      out.Set("mask", Napi::Number::New(env, ev.mask));
      out.Set("name", Napi::String::New(env, ev.len > 0 ? std::string(name, strnlen(name, ev.len)) : std::string()));
      events.Set(count++, out);
      off += static_cast<ssize_t>(sizeof(inotify_event) + ev.len);
    }
  }
  return events;
}

}  // namespace

void RegisterInotify(Napi::Env env, Napi::Object exports) {
  exports.Set("inotifyInit", Napi::Function::New(env, InotifyInit, "inotifyInit"));
  exports.Set("inotifyAddWatch", Napi::Function::New(env, InotifyAddWatch, "inotifyAddWatch"));
  exports.Set("inotifyRmWatch", Napi::Function::New(env, InotifyRmWatch, "inotifyRmWatch"));
  exports.Set("inotifyRead", Napi::Function::New(env, InotifyRead, "inotifyRead"));
}

}  // namespace devlease
