// Readiness watching: one uv_poll_t on the calling environment's own loop
// (main thread or worker), calling back into JS with (status, events).
//
// Lifetime: a Watcher is shared by the JS handle (a PollHandle, which holds a
// reference, dropped by its finalizer) and by the uv handle while it is open
// (dropped by the uv_close callback). stop() closes the uv handle; the
// Watcher is freed when the last reference goes, so a stale PollHandle never
// touches freed memory. An async cleanup hook closes the handle if the
// environment (e.g. a worker) is torn down while still watching.
#include <uv.h>

#include "common.h"

namespace devlease {
namespace {

struct Watcher {
  uv_poll_t poll{};
  napi_env env;
  Napi::FunctionReference callback;
  Napi::AsyncContext async_context;
  napi_async_cleanup_hook_handle cleanup_hook = nullptr;
  bool open = false;  // uv handle initialised and not yet closing
  int refs = 0;

  Watcher(Napi::Env e, Napi::Function cb)
      : env(e), callback(Napi::Persistent(cb)), async_context(e, "devlease:poll") {}
};

void Release(Watcher* w) {
  if (--w->refs == 0) delete w;
}

void OnClosed(uv_handle_t* handle) {
  auto* w = static_cast<Watcher*>(handle->data);
  if (w->cleanup_hook != nullptr) {
    napi_remove_async_cleanup_hook(w->cleanup_hook);
    w->cleanup_hook = nullptr;
  }
  w->callback.Reset();
  Release(w);
}

void CloseWatcher(Watcher* w) {
  if (!w->open) return;
  w->open = false;
  // uv_close stops a poll handle at once (the fd leaves epoll and its pending events are dropped before this
  // returns), so no uv_poll_stop first: that was one more EPOLL_CTL_DEL per watch, failing with ENOENT.
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnClosed);
}

void OnEnvCleanup(napi_async_cleanup_hook_handle, void* data) {
  // If stop() already started the close, OnClosed removes the hook.
  CloseWatcher(static_cast<Watcher*>(data));
}

void OnPoll(uv_poll_t* handle, int status, int events) {
  auto* w = static_cast<Watcher*>(handle->data);
  if (!w->open) return;
  CallPollCallback(w->env, w->async_context, w->callback, status, events);
}

// The JS handle: one object of a class defined once per environment, its methods on the prototype (a
// handle made of four bound functions, each with a finalizer, cost the broker, the simulator and every
// client a measurable share of a lease's setup: every socket and eventfd gets a watcher). It holds one
// reference on the Watcher, dropped when the object is collected.
class PollHandle : public Napi::ObjectWrap<PollHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "PollHandle",
                       {InstanceMethod<&PollHandle::Stop>("stop"), InstanceMethod<&PollHandle::SetEvents>("setEvents"),
                        InstanceMethod<&PollHandle::Ref>("ref"), InstanceMethod<&PollHandle::Unref>("unref")});
  }

  explicit PollHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PollHandle>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      ThrowMisuse(info.Env(), "ERR_DEVLEASE_INVALID_ARG", "a PollHandle is made by poll()");
    }
    w_ = info[0].As<Napi::External<Watcher>>().Data();
    w_->refs++;
  }
  ~PollHandle() override { Release(w_); }

 private:
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    CloseWatcher(w_);
    return info.Env().Undefined();
  }

  Napi::Value SetEvents(const Napi::CallbackInfo& info) {
    int events = static_cast<int>(IntArg(info, 0, "events", 0, 15));
    if (!w_->open) ThrowMisuse(info.Env(), "ERR_DEVLEASE_CLOSED", "poll handle is stopped");
    int rc = uv_poll_start(&w_->poll, events, OnPoll);
    if (rc < 0) ThrowErrno(info.Env(), "epoll_ctl", -rc);
    return info.Env().Undefined();
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    if (w_->open) uv_ref(reinterpret_cast<uv_handle_t*>(&w_->poll));
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    if (w_->open) uv_unref(reinterpret_cast<uv_handle_t*>(&w_->poll));
    return info.Env().Undefined();
  }

  Watcher* w_;
};

// poll(fd, events, cb): events are UV bits (1 readable, 2 writable, 4 disconnect, 8 prioritized).
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int events = static_cast<int>(IntArg(info, 1, "events", 0, 15));
  if (!info[2].IsFunction()) ThrowInvalidArg(env, "cb must be a function");

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowMisuse(env, "ERR_DEVLEASE_NO_LOOP", "no event loop for this environment");
  }
  auto* w = new Watcher(env, info[2].As<Napi::Function>());
  w->poll.data = w;
  int rc = uv_poll_init(loop, &w->poll, fd);
  if (rc < 0) {
    delete w;
    ThrowErrno(env, "epoll_ctl", -rc);
  }
  w->open = true;
  w->refs = 1;  // the open uv handle
  rc = uv_poll_start(&w->poll, events, OnPoll);
  if (rc < 0) {
    CloseWatcher(w);
    ThrowErrno(env, "epoll_ctl", -rc);
  }
  napi_add_async_cleanup_hook(env, OnEnvCleanup, w, &w->cleanup_hook);

  return StateOf(env)->pollHandleClass.New({Napi::External<Watcher>::New(env, w)});
}

}  // namespace

void CallPollCallback(napi_env env, napi_async_context context, const Napi::FunctionReference& callback, int status,
                      int events) {
  Napi::HandleScope scope(env);
  napi_value argv[2];
  napi_value global;
  napi_value result;
  napi_create_int32(env, status, &argv[0]);
  napi_create_int32(env, events, &argv[1]);
  napi_get_global(env, &global);
  // napi_make_callback runs microtasks/nextTicks afterwards, like any libuv
  // callback in Node. Nobody can catch an exception thrown from here, so it
  // goes to process 'uncaughtException'.
  napi_status s = napi_make_callback(env, context, global, callback.Value(), 2, argv, &result);
  if (s == napi_pending_exception) {
    napi_value error;
    napi_get_and_clear_last_exception(env, &error);
    napi_fatal_exception(env, error);
  }
}

void RegisterPoll(Napi::Env env, Napi::Object exports) {
  StateOf(env)->pollHandleClass = Napi::Persistent(PollHandle::Define(env));
  exports.Set("poll", Napi::Function::New(env, Poll, "poll"));
}

}  // namespace devlease
