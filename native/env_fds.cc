// Descriptors owned by JS objects of a worker thread must not outlive the
// worker: worker.terminate() runs no JS finalizers. Fd (src/sys/fd.ts)
// registers its descriptor here when running in a worker; whatever is still
// registered when the environment is torn down is closed then.
#include <unistd.h>

#include "common.h"

namespace devlease {

EnvState::~EnvState() {
  for (int fd : trackedFds) close(fd);
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
}

}  // namespace devlease
