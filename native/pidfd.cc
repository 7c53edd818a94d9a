// pidfd_open / pidfd_send_signal, and kcmp(KCMP_FILES), through syscall(2) (no glibc wrappers needed).
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

#include "common.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
constexpr int kKcmpFiles = 2;  // KCMP_FILES of <linux/kcmp.h>: whether two tasks share one file table

namespace devlease {
namespace {

Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  auto pid = static_cast<pid_t>(IntArg(info, 0, "pid", 1, INT32_MAX));
  // pidfds are always close-on-exec.
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) ThrowErrno(info.Env(), "pidfd_open", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

Napi::Value PidfdSendSignal(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0, "pidfd");
  int sig = static_cast<int>(IntArg(info, 1, "signal", 0, 64));
  if (syscall(SYS_pidfd_send_signal, fd, sig, nullptr, 0) < 0) ThrowErrno(info.Env(), "pidfd_send_signal", errno);
  return info.Env().Undefined();
}

// Whether tasks (pids or thread ids) `a` and `b` share one file table. A thread that called unshare(CLONE_FILES)
// has its own, which /proc/<pid>/fd does not show (src/broker/audit-scan/file-tables.ts); /proc names no table,
// kcmp is the one way to tell. Needs ptrace read access to both (CAP_SYS_PTRACE, or the same uid); errors
// (ESRCH: a task gone, EPERM, ENOSYS: a kernel without CONFIG_KCMP) are thrown.
Napi::Value KcmpFiles(const Napi::CallbackInfo& info) {
  auto a = static_cast<pid_t>(IntArg(info, 0, "a", 1, INT32_MAX));
  auto b = static_cast<pid_t>(IntArg(info, 1, "b", 1, INT32_MAX));
  long r = syscall(SYS_kcmp, a, b, kKcmpFiles, 0UL, 0UL);
  if (r < 0) ThrowErrno(info.Env(), "kcmp", errno);
  return Napi::Boolean::New(info.Env(), r == 0);
}

// fork() a child that keeps this process's mappings (and nothing else: every fd past stderr is closed) and
// pauses until a signal ends it. For tests of the audited-slice release: a forked child that inherited a
// slice mapping must hold the slice. The child runs only async-signal-safe calls (close_range, pause).
Napi::Value ForkPause(const Napi::CallbackInfo& info) {
  pid_t pid = fork();
  if (pid < 0) ThrowErrno(info.Env(), "fork", errno);
  if (pid == 0) {
    syscall(SYS_close_range, 3U, ~0U, 0U);
    for (;;) pause();
  }
  return Napi::Number::New(info.Env(), static_cast<double>(pid));
}

}  // namespace

void RegisterPidfd(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("pidfdSendSignal", Napi::Function::New(env, PidfdSendSignal, "pidfdSendSignal"));
  exports.Set("kcmpFiles", Napi::Function::New(env, KcmpFiles, "kcmpFiles"));
  exports.Set("forkPause", Napi::Function::New(env, ForkPause, "forkPause"));
}

}  // namespace devlease
