// Descriptors owned by JS objects of a worker thread must not outlive the
// worker: worker.terminate() runs no JS finalizers. Fd (src/sys/fd.ts)
// registers its descriptor here when running in a worker; whatever is still
// registered when the environment is torn down is closed then.
#include <unistd.h>

#include <unordered_set>

#include "common.h"

namespace devlease {
namespace {

struct EnvFds {
  std::unordered_set<int> open;
  ~EnvFds() {
    for (int fd : open) close(fd);
  }
};

EnvFds* StateOf(Napi::Env env) {
  auto* state = env.GetInstanceData<EnvFds>();
  if (state == nullptr) {
    state = new EnvFds();
    env.SetInstanceData(state);  // deleted (closing what is left) at environment teardown
  }
  return state;
}

Napi::Value TrackFd(const Napi::CallbackInfo& info) {
  StateOf(info.Env())->open.insert(FdArg(info, 0));
  return info.Env().Undefined();
}

Napi::Value UntrackFd(const Napi::CallbackInfo& info) {
  StateOf(info.Env())->open.erase(FdArg(info, 0));
  return info.Env().Undefined();
}

}  // namespace

void RegisterEnvFds(Napi::Env env, Napi::Object exports) {
  exports.Set("trackFd", Napi::Function::New(env, TrackFd, "trackFd"));
  exports.Set("untrackFd", Napi::Function::New(env, UntrackFd, "untrackFd"));
}

}  // namespace devlease
