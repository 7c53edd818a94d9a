// Descriptors owned by JS objects of a worker thread must not outlive the
// worker: worker.terminate() runs no JS finalizers. Fd (src/sys/fd.ts)
// registers its descriptor here when running in a worker; whatever is still
// registered when the environment is torn down is closed then.
// `isMainThread` tells fd.ts which case it is in without importing
// node:worker_threads, which loads ~30 more builtin modules into every
// client process (issue 16).
#include <unistd.h>
#include <uv.h>

#include "common.h"

namespace devlease {

EnvState::~EnvState() {
  // As a received fd is closed (close.cc): a worker's descriptors may be a peer's (the simulator's device
  // worker holds its owner's DMA fds), whose close can wait on a file system the peer serves; the teardown
  // must not. Whose they are is not known here: counted by the closer's global bound only.
  for (int fd : trackedFds) CloseReceivedFd(fd, kNoSender);
  if (pollSet != nullptr) ReleasePollSet(pollSet);
}

namespace {

Napi::Value TrackFd(const Napi::CallbackInfo& info) {
  StateOf(info.Env())->trackedFds.insert(FdArg(info, 0));
  return info.Env().Undefined();
}

Napi::Value UntrackFd(const Napi::CallbackInfo& info) {
  StateOf(info.Env())->trackedFds.erase(FdArg(info, 0));
  return info.Env().Undefined();
}

}  // namespace

void RegisterEnvFds(Napi::Env env, Napi::Object exports) {
  exports.Set("trackFd", Napi::Function::New(env, TrackFd, "trackFd"));
  exports.Set("untrackFd", Napi::Function::New(env, UntrackFd, "untrackFd"));
  // Node runs its main thread on libuv's default loop and gives every worker a loop of its own.
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowMisuse(env, "ERR_DEVLEASE_NO_LOOP", "no event loop for this environment");
  }
  exports.Set("isMainThread", Napi::Boolean::New(env, loop == uv_default_loop()));
}

}  // namespace devlease
