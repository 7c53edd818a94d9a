// A wait set for the SA-1 device worker: the doorbell kicks (one ioeventfd per
// queue page, up to 253, shared beyond) and the mailbox's wake-up eventfd, slept on at once.
//
//   waitSetCreate(fds) -> an epoll fd (O_CLOEXEC) watching each of `fds` for input; the caller owns it.
//   waitSet(epfd, timeoutMs) -> blocks until one is readable or the timeout passes (negative or Infinity: no
//     timeout), drains every readable one with an 8-byte read (they are eventfds), returns how many were.
//
// An epoll set is built once for the worker's lifetime: ppoll(2) on every fd cost each sleep and wake-up one
// poll registration and removal per fd, some 150 µs of a 254-fd worker's every armed wake-up (issue 16,
// twenty-sixth pass). The sleep itself is ppoll on the one epoll fd, which is readable while any of its fds
// is, because ppoll takes a timespec and the idle poll interval is 50 µs (epoll_wait counts whole ms).
#include <poll.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <vector>

#include "common.h"

namespace devlease {
namespace {

constexpr uint32_t kMaxWaitFds = 4096;
/** Ready fds taken per wake-up; any more stay readable and end the next sleep at once. */
constexpr int kMaxEvents = 64;

// Read an eventfd's counter without ever blocking. O_NONBLOCK belongs to the open file, which the holders of a
// queue's kick fd share with the device (up to five queues' holders, docs/SA-1.md), and any of them may clear
// it; another reader may also drain the counter between the wake-up and this read. RWF_NOWAIT asks for EAGAIN
// whatever the file's flags (eventfds honour it since Linux 5.12); an older kernel refuses the flag
// (EOPNOTSUPP), and then the file's own flag decides, as a plain read.
void Drain(int fd) {
  uint64_t value;
  iovec iov{&value, sizeof(value)};
  ssize_t got;
  do {
    got = preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
  } while (got < 0 && errno == EINTR);
  if (got < 0 && errno == EOPNOTSUPP) {
    do {
      got = read(fd, &value, sizeof(value));
    } while (got < 0 && errno == EINTR);
  }
  // EAGAIN: another reader drained it first (a lease holder may read its own kick fd).
}

Napi::Value WaitSetCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowInvalidArg(env, "fds must be an array of descriptors");
  Napi::Array list = info[0].As<Napi::Array>();
  uint32_t n = list.Length();
  if (n > kMaxWaitFds) ThrowInvalidArg(env, "at most " + std::to_string(kMaxWaitFds) + " fds");
  std::vector<int> fds(n);
  for (uint32_t i = 0; i < n; i++) fds[i] = FdElement(env, list, i);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) ThrowErrno(env, "epoll_create1", errno);
  for (int fd : fds) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) {
      int err = errno;
      close(ep);
      ThrowErrno(env, "epoll_ctl", err);
    }
  }
  return Napi::Number::New(env, ep);
}

Napi::Value WaitSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int ep = FdArg(info, 0);
  double timeout_ms = TimeoutMsArg(info, 1);
  bool forever = timeout_ms < 0;
  timespec rel = forever ? timespec{} : RelativeTimespec(timeout_ms);
  pollfd p{ep, POLLIN, 0};
  // EINTR: report "nothing ready"; the caller re-checks its state and sleeps again.
  int rc = ppoll(&p, 1, forever ? nullptr : &rel, nullptr);
  if (rc < 0 && errno != EINTR) ThrowErrno(env, "ppoll", errno);
  if (rc > 0 && (p.revents & POLLNVAL) != 0) ThrowErrno(env, "ppoll", EBADF);
  if (rc <= 0) return Napi::Number::New(env, 0);
  epoll_event events[kMaxEvents];
  int n;
  do {
    n = epoll_wait(ep, events, kMaxEvents, 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "epoll_wait", errno);
  for (int i = 0; i < n; i++) Drain(events[i].data.fd);
  // At least 1: the set was readable when ppoll returned, even if a holder drained its kick fd since.
  return Napi::Number::New(env, n > 0 ? n : 1);
}

}  // namespace

void RegisterWaitSet(Napi::Env env, Napi::Object exports) {
  exports.Set("waitSetCreate", Napi::Function::New(env, WaitSetCreate, "waitSetCreate"));
  exports.Set("waitSet", Napi::Function::New(env, WaitSet, "waitSet"));
}

}  // namespace devlease
