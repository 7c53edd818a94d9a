// Entry point of the devlease native addon. NODE_API_MODULE makes it
// context-aware: Init runs once per environment (main thread and each
// worker), and no JS state is kept in statics.
#include "common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  devlease::RegisterFdOps(env, exports);
  devlease::RegisterClose(env, exports);
  devlease::RegisterPoll(env, exports);
  devlease::RegisterPollShared(env, exports);
  devlease::RegisterUnixSocket(env, exports);
  devlease::RegisterPeer(env, exports);
  devlease::RegisterPidfd(env, exports);
  devlease::RegisterMemfd(env, exports);
  devlease::RegisterMapping(env, exports);
  devlease::RegisterEventfd(env, exports);
  devlease::RegisterInotify(env, exports);
  devlease::RegisterFutex(env, exports);
  devlease::RegisterConstants(env, exports);
  devlease::RegisterEnvFds(env, exports);
  devlease::RegisterWaitSet(env, exports);
  devlease::RegisterErrors(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(devlease, Init)
