// futex(2) on a 32-bit word of a SharedArrayBuffer. Deliberately the shared
// (non-_PRIVATE) operations: the kernel then keys the wait queue by the
// backing page, so a waiter and a waker in different processes that map the
// same memfd meet. Atomics.wait/notify cannot do that.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>
#include <memory>

#include "common.h"
#include "v8_interop.h"

namespace devlease {
namespace {

struct Word {
  std::shared_ptr<v8::BackingStore> store;  // keeps the memory alive while we wait
  uint32_t* address;
};

Word WordArg(const Napi::CallbackInfo& info) {
  v8::Local<v8::Value> value = ToV8(info[0]);
  if (!value->IsSharedArrayBuffer()) ThrowInvalidArg(info.Env(), "buf must be a SharedArrayBuffer");
  std::shared_ptr<v8::BackingStore> store = value.As<v8::SharedArrayBuffer>()->GetBackingStore();
  int64_t words = static_cast<int64_t>(store->ByteLength() / 4);
  if (words == 0) ThrowInvalidArg(info.Env(), "buf is smaller than one 32-bit word");
  int64_t index = IntArg(info, 1, "index", 0, words - 1);
  auto* base = static_cast<uint32_t*>(store->Data());
  return Word{store, base + index};
}

timespec Now() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts;
}

double MsBetween(const timespec& from, const timespec& to) {
  return static_cast<double>(to.tv_sec - from.tv_sec) * 1e3 + static_cast<double>(to.tv_nsec - from.tv_nsec) / 1e6;
}

Napi::Value FutexWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Word word = WordArg(info);
  auto expected = static_cast<uint32_t>(IntArg(info, 2, "expected", INT32_MIN, UINT32_MAX));
  double timeout_ms = TimeoutMsArg(info, 3, true);
  bool forever = timeout_ms < 0;
  timespec start = Now();
  for (;;) {
    timespec rel{};
    if (!forever) {
      double left = timeout_ms - MsBetween(start, Now());
      if (left <= 0) return Napi::String::New(env, "timed-out");
      rel = RelativeTimespec(left);
    }
    long rc = syscall(SYS_futex, word.address, FUTEX_WAIT, expected, forever ? nullptr : &rel, nullptr, 0);
    if (rc == 0) return Napi::String::New(env, "ok");
    if (errno == EAGAIN) return Napi::String::New(env, "not-equal");
    if (errno == ETIMEDOUT) return Napi::String::New(env, "timed-out");
    // EINTR: wait again for the rest of the time; if the word changed
    // meanwhile, the next FUTEX_WAIT answers EAGAIN ('not-equal').
    if (errno != EINTR) ThrowErrno(env, "futex", errno);
  }
}

Napi::Value FutexWake(const Napi::CallbackInfo& info) {
  Word word = WordArg(info);
  int count = INT_MAX;
  if (info.Length() > 2 && !info[2].IsUndefined()) count = static_cast<int>(IntArg(info, 2, "count", 0, INT_MAX));
  long rc = syscall(SYS_futex, word.address, FUTEX_WAKE, count, nullptr, nullptr, 0);
  if (rc < 0) ThrowErrno(info.Env(), "futex", errno);
  return Napi::Number::New(info.Env(), static_cast<double>(rc));
}

}  // namespace

void RegisterFutex(Napi::Env env, Napi::Object exports) {
  exports.Set("futexWait", Napi::Function::New(env, FutexWait, "futexWait"));
  exports.Set("futexWake", Napi::Function::New(env, FutexWake, "futexWake"));
}

}  // namespace devlease
