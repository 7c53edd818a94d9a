// Shared helpers of the devlease addon: how errors are thrown and how
// arguments are read. Every syscall failure becomes a JS Error with `code`
// ('EPIPE'), `errno` (32) and `syscall` ('sendmsg'); misuse is reported
// before any syscall with a code of the ERR_DEVLEASE_* family.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>
#include <unordered_set>

namespace devlease {

/** Maximum number of fds in one SCM_RIGHTS message (mirrors MAX_FDS in src/sys/native.ts). */
constexpr int kMaxFds = 253;  // SCM_MAX_FD: the kernel's limit per message

/**
 * What the addon keeps per environment (main thread, each worker): one instance-data slot, deleted at
 * environment teardown. `trackedFds` are a worker's descriptors to close then (env_fds.cc); the error
 * classes are src/errors.ts's SysError and MisuseError, given once by src/sys/native.ts (setErrorClasses).
 */
struct EnvState {
  std::unordered_set<int> trackedFds;
  Napi::FunctionReference sysError;
  Napi::FunctionReference misuseError;
  /** poll.cc's PollHandle class: its methods live on one prototype instead of four closures per handle. */
  Napi::FunctionReference pollHandleClass;
  /** poll_shared.cc's epoll set of this environment, made when the addon loads; this holds one reference on it. */
  void* pollSet = nullptr;
  ~EnvState();
};
/** This environment's state, created on first use. */
EnvState* StateOf(Napi::Env env);

/**
 * Throws `syscall: strerror(err)` with code/errno/syscall set: a SysError (src/errors.ts) once
 * setErrorClasses has run in this environment, a plain Error with the same fields before.
 */
[[noreturn]] void ThrowErrno(Napi::Env env, const char* syscall, int err);
/** Throws an Error with the given ERR_DEVLEASE_* code (argument misuse, closed handle, ...). */
[[noreturn]] void ThrowMisuse(Napi::Env env, const char* code, const std::string& message);
/** Shorthand for ThrowMisuse(env, "ERR_DEVLEASE_INVALID_ARG", message). */
[[noreturn]] void ThrowInvalidArg(Napi::Env env, const std::string& message);

/** info[i] as a non-negative int32 file descriptor. */
int FdArg(const Napi::CallbackInfo& info, size_t i, const char* name = "fd");
/** list[i] (an array of descriptors, e.g. fds to send or to wait on) as a non-negative int32 file descriptor. */
int FdElement(Napi::Env env, const Napi::Array& list, uint32_t i);
/**
 * info[i] as a timeout in ms for a blocking wait: negative or Infinity mean none (returned as -1); NaN and
 * non-numbers throw. `optional`: an absent or undefined argument means none too.
 */
double TimeoutMsArg(const Napi::CallbackInfo& info, size_t i, bool optional = false);
/** A relative timespec of `ms` (>= 0) milliseconds, sub-millisecond parts kept. */
timespec RelativeTimespec(double ms);
/** info[i] as an integer in [min, max] (numbers must be integral). */
int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max);
/** info[i] as a number or bigint in [0, 2^63). */
int64_t OffsetArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/** info[i] as a bool. */
bool BoolArg(const Napi::CallbackInfo& info, size_t i, const char* name);
/** info[i] as a string. */
std::string StringArg(const Napi::CallbackInfo& info, size_t i, const char* name);

/** A byte view (Uint8Array or any TypedArray/DataView/Buffer) of info[i]. */
struct Bytes {
  uint8_t* data;
  size_t length;
};
Bytes BytesArg(const Napi::CallbackInfo& info, size_t i, const char* name);

/** Closes fd on scope exit unless released: keeps error paths leak-free. */
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard();
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

// Each topic file registers its functions on the exports object.
void RegisterFdOps(Napi::Env env, Napi::Object exports);
void RegisterClose(Napi::Env env, Napi::Object exports);
/**
 * A received descriptor's sender uid when none is known: the fd counts against the closer thread's global bound
 * only (the broker's own, a trusted peer's, one an old broker handed over; close.cc).
 */
constexpr int64_t kNoSender = -1;
/**
 * Closes a descriptor another process sent, on the closer thread if its close may wait (close.cc), counted
 * against `sender` (a uid, or kNoSender) while it is queued there.
 */
void CloseReceivedFd(int fd, int64_t sender);
/**
 * The closer thread's queue is full, or the share of it of uid `sender` (kNoSender: the global bound alone) is
 * (close.cc): an untrusted peer's fds are not taken (unix_socket.cc).
 */
bool ClosesBacklogged(int64_t sender);
void RegisterPoll(Napi::Env env, Napi::Object exports);
void RegisterPollShared(Napi::Env env, Napi::Object exports);
/**
 * Calls a watch's JS callback with (status, events) in its async context (poll.cc, poll_shared.cc): microtasks and
 * nextTicks run after it, and a throw goes to 'uncaughtException'.
 */
void CallPollCallback(napi_env env, napi_async_context context, const Napi::FunctionReference& callback, int status,
                      int events);
/** Drops EnvState's reference on its poll set (poll_shared.cc). */
void ReleasePollSet(void* set);
void RegisterUnixSocket(Napi::Env env, Napi::Object exports);
void RegisterPeer(Napi::Env env, Napi::Object exports);
void RegisterPidfd(Napi::Env env, Napi::Object exports);
void RegisterMemfd(Napi::Env env, Napi::Object exports);
void RegisterMapping(Napi::Env env, Napi::Object exports);
void RegisterEventfd(Napi::Env env, Napi::Object exports);
void RegisterInotify(Napi::Env env, Napi::Object exports);
void RegisterFutex(Napi::Env env, Napi::Object exports);
void RegisterConstants(Napi::Env env, Napi::Object exports);
void RegisterEnvFds(Napi::Env env, Napi::Object exports);
void RegisterWaitSet(Napi::Env env, Napi::Object exports);
void RegisterErrors(Napi::Env env, Napi::Object exports);

}  // namespace devlease
