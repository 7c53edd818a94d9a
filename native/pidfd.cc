// pidfd_open / pidfd_send_signal, and kcmp(KCMP_FILES), through syscall(2) (no glibc wrappers needed).
#include <dirent.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

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

// The thread ids of process `pid` from position `from` of its /proc/<pid>/task listing on, at most `max`; an
// empty array past the last thread. For the audit's walk of threads' own file tables, which looks at a window
// of a process's threads per scan and moves it on at the next (src/broker/audit-scan/file-tables.ts): a
// listing read from its start (all Node offers) costs the threads before the window, each scan, without
// bound. procfs takes a task/ directory's position as a thread index (proc_task_readdir: position 2 + n is
// the n-th thread; 0 and 1 are . and ..), so one lseek starts the listing there: the kernel walks n links of
// the thread list, no entry is made for them.
Napi::Value TaskIdsFrom(const Napi::CallbackInfo& info) {
  auto pid = static_cast<pid_t>(IntArg(info, 0, "pid", 1, INT32_MAX));
  auto from = IntArg(info, 1, "from", 0, INT32_MAX - 2);
  auto max = static_cast<size_t>(IntArg(info, 2, "max", 1, 1 << 20));
  char path[48];
  std::snprintf(path, sizeof path, "/proc/%d/task", static_cast<int>(pid));
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), "open", errno);
  FdGuard guard(fd);
  if (lseek(fd, static_cast<off_t>(from + 2), SEEK_SET) < 0) ThrowErrno(info.Env(), "lseek", errno);
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t n = 0;
  alignas(8) char buf[8192];  // ~300 entries a call: a window of 1026 in 4 calls
  while (n < max) {
    long got = syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (got < 0) ThrowErrno(info.Env(), "getdents64", errno);
    if (got == 0) break;
    for (long off = 0; off < got && n < max;) {
      auto* d = reinterpret_cast<struct dirent64*>(buf + off);
      off += d->d_reclen;
      if (d->d_name[0] < '0' || d->d_name[0] > '9') continue;  // . and .., were the position 0
      out.Set(n++, Napi::Number::New(info.Env(), std::atoi(d->d_name)));
    }
  }
  return out;
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
  exports.Set("taskIdsFrom", Napi::Function::New(env, TaskIdsFrom, "taskIdsFrom"));
  exports.Set("forkPause", Napi::Function::New(env, ForkPause, "forkPause"));
}

}  // namespace devlease
