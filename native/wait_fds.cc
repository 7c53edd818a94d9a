// waitFds(fds, timeoutMs): block the calling thread (the SA-1 device worker)
// in ppoll(2) until one of `fds` is readable or the timeout passes, then
// drain every readable one with an 8-byte read (they are eventfds: doorbell
// kicks and the mailbox's wake-up). One syscall to sleep on all queues'
// ioeventfds at once, with sub-millisecond timeouts.
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <ctime>
#include <vector>

#include "common.h"

namespace devlease {
namespace {

constexpr uint32_t kMaxWaitFds = 4096;

Napi::Value WaitFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowInvalidArg(env, "fds must be an array of descriptors");
  Napi::Array list = info[0].As<Napi::Array>();
  uint32_t n = list.Length();
  if (n > kMaxWaitFds) ThrowInvalidArg(env, "at most " + std::to_string(kMaxWaitFds) + " fds");
  if (!info[1].IsNumber()) ThrowInvalidArg(env, "timeoutMs must be a number");
  double timeout_ms = info[1].As<Napi::Number>().DoubleValue();
  if (std::isnan(timeout_ms)) ThrowInvalidArg(env, "timeoutMs must not be NaN");
  // thread_local: the device worker calls this on every idle sleep; no allocation after the first.
  thread_local std::vector<pollfd> pfds;
  pfds.resize(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = list.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (d < 0 || d > INT32_MAX || static_cast<double>(static_cast<int>(d)) != d) {
      ThrowInvalidArg(env, "fds[" + std::to_string(i) + "] is not a file descriptor");
    }
    pfds[i] = pollfd{static_cast<int>(d), POLLIN, 0};
  }
  bool forever = timeout_ms < 0 || std::isinf(timeout_ms);
  timespec rel{};
  if (!forever) {
    rel.tv_sec = static_cast<time_t>(timeout_ms / 1e3);
    rel.tv_nsec = static_cast<long>(std::fmod(timeout_ms, 1e3) * 1e6);
  }
  int rc;
  // EINTR: report "nothing ready"; the caller re-checks its state and sleeps again.
  rc = ppoll(pfds.data(), n, forever ? nullptr : &rel, nullptr);
  if (rc < 0 && errno != EINTR) ThrowErrno(env, "ppoll", errno);
  int ready = 0;
  for (uint32_t i = 0; rc > 0 && i < n; i++) {
    if ((pfds[i].revents & POLLNVAL) != 0) ThrowErrno(env, "ppoll", EBADF);
    if ((pfds[i].revents & POLLIN) == 0) continue;
    ready++;
    uint64_t value;
    ssize_t got;
    do {
      got = read(pfds[i].fd, &value, sizeof(value));
    } while (got < 0 && errno == EINTR);
    // EAGAIN: another reader drained it first (a lease holder may read its own kick fd).
  }
  return Napi::Number::New(env, ready);
}

}  // namespace

void RegisterWaitFds(Napi::Env env, Napi::Object exports) {
  exports.Set("waitFds", Napi::Function::New(env, WaitFds, "waitFds"));
}

}  // namespace devlease
