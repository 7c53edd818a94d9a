// Readiness watching through one epoll set per environment (main thread or worker): every watched fd is one
// epoll_ctl(ADD) at the start and one epoll_ctl(DEL) at the stop, and the set's own fd is the one uv_poll
// handle on the loop. Same callback contract as poll.cc's uv_poll watchers: (status, events) with UV bits,
// level-triggered, an EPOLLERR reported as status UV_EBADF with the watch made inactive, as libuv does.
//
// Why: libuv's uv_poll_init probes every new fd (epoll_ctl ADD then DEL), sets O_NONBLOCK again (ioctl), and
// uv_poll_start removes it once more (a DEL failing ENOENT) before the loop adds it at its next turn: six
// system calls per watch over its life where this takes two. A lease's client watches four eventfds, its broker
// a pidfd per lease (issue 16, forty-second pass). The price is one epoll_wait more per wake-up, which is why
// the busy fds (sockets: a wake-up per message; interrupt eventfds: one per completion) keep their own uv_poll and
// only the fds watched per lease that rarely fire (a lease's notice eventfds, pidfds) come here. Also the price:
// an EPOLL_CTL_ADD into an epoll set that is itself watched takes the kernel's global epnested_mutex for its loop
// check (a few µs here, measured; a many-core host adding watches in many processes at once would contend).
//
// A watcher is a number to JS (no wrapped object, no finalizer): a JS handle with a finalizer per watch was a
// good part of what a watch cost after its system calls. Each keeps an async context of its own, made when the
// watch starts, so its callbacks run in the context (AsyncLocalStorage included) of whoever started it, as a
// uv_poll watcher's do. The set's table owns each watcher until it is stopped (a callback running holds one more
// reference, so a stop from inside it frees nothing in use); the environment owns the set until its cleanup
// hook closes it.
#include <sys/epoll.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <unordered_map>

#include "common.h"

namespace devlease {
namespace {

/** Ready fds taken per wake-up of the set; any more keep the set's fd readable, served at the loop's next turn. */
constexpr int kMaxEvents = 64;

struct SharedWatcher;

struct PollSet {
  int epfd = -1;
  uv_poll_t poll{};
  napi_env env = nullptr;
  napi_async_cleanup_hook_handle cleanup_hook = nullptr;
  bool open = false;
  int refs = 0;
  uint64_t next_id = 1;
  /** Watchers by id (the epoll data): a stale event of a watcher stopped in the same batch finds nothing. */
  std::unordered_map<uint64_t, SharedWatcher*> live;
  /** Watchers registered and ref'ed: the set's handle keeps the loop alive while there is one. */
  int active_refd = 0;
  /** Interest changes so far (Activate, Deactivate): a batch skips a watcher changed since its epoll_wait. */
  uint64_t changes = 0;
};

struct SharedWatcher {
  PollSet* set;
  uint64_t id;
  int fd;
  int events = 0;        // UV bits
  bool active = false;   // registered in the set's epoll (libuv: an active handle)
  bool refd = true;      // counts for the loop (uv_ref / uv_unref)
  int refs = 0;
  /** PollSet::changes at this watcher's last interest change. */
  uint64_t changed_at = 0;
  Napi::FunctionReference callback;
  Napi::AsyncContext async_context;

  SharedWatcher(Napi::Env e, PollSet* s, uint64_t i, int f, Napi::Function cb)
      : set(s), id(i), fd(f), callback(Napi::Persistent(cb)), async_context(e, "devlease:poll") {}
};

void ReleaseSet(PollSet* s) {
  if (--s->refs == 0) delete s;
}

void ReleaseWatcher(SharedWatcher* w) {
  if (--w->refs == 0) delete w;
}

void UpdateLoopRef(PollSet* s, int delta) {
  int before = s->active_refd;
  s->active_refd += delta;
  if (!s->open) return;
  auto* h = reinterpret_cast<uv_handle_t*>(&s->poll);
  if (before == 0 && s->active_refd > 0) uv_ref(h);
  if (before > 0 && s->active_refd == 0) uv_unref(h);
}

uint32_t EpollBits(int uv_events) {
  uint32_t e = 0;
  if (uv_events & UV_READABLE) e |= EPOLLIN;
  if (uv_events & UV_WRITABLE) e |= EPOLLOUT;
  if (uv_events & UV_DISCONNECT) e |= EPOLLRDHUP;
  if (uv_events & UV_PRIORITIZED) e |= EPOLLPRI;
  return e;
}

void Deactivate(SharedWatcher* w) {
  if (!w->active) return;
  w->active = false;
  w->changed_at = ++w->set->changes;
  // Fails only when the owner closed the fd before stopping (EBADF; the kernel dropped it from the set then).
  if (w->set->open) epoll_ctl(w->set->epfd, EPOLL_CTL_DEL, w->fd, nullptr);
  if (w->refd) UpdateLoopRef(w->set, -1);
}

/** epoll_ctl ADD or MOD for the watcher's events; 0 or -errno. */
int Activate(SharedWatcher* w) {
  epoll_event ev{};
  ev.events = EpollBits(w->events);
  ev.data.u64 = w->id;
  if (epoll_ctl(w->set->epfd, w->active ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev) < 0) return -errno;
  w->changed_at = ++w->set->changes;
  if (!w->active) {
    w->active = true;
    if (w->refd) UpdateLoopRef(w->set, +1);
  }
  return 0;
}

/** Stops a watcher in the table (the only way to find one: the table entry is what "not stopped" means). */
void StopWatcher(SharedWatcher* w) {
  Deactivate(w);
  w->set->live.erase(w->id);
  w->callback.Reset();
  ReleaseWatcher(w);  // the table's reference
}

void Call(SharedWatcher* w, int status, int events) {
  CallPollCallback(w->set->env, w->async_context, w->callback, status, events);
}

// What libuv's epoll loop and uv__poll_io make of one event, applied the same way: the events masked by the
// interest set, a lone EPOLLERR or EPOLLHUP widened to the interest set, then EPOLLERR a UV_EBADF (not with
// EPOLLPRI: sysfs and kernfs files report a change as both).
void Dispatch(SharedWatcher* w, uint32_t got) {
  uint32_t interest = EpollBits(w->events);
  got &= interest | EPOLLERR | EPOLLHUP;
  if (got == EPOLLERR || got == EPOLLHUP) got |= interest;
  if ((got & EPOLLERR) && !(got & EPOLLPRI)) {
    Deactivate(w);
    Call(w, UV_EBADF, 0);
    return;
  }
  int uv = 0;
  if (got & EPOLLIN) uv |= UV_READABLE;
  if (got & EPOLLPRI) uv |= UV_PRIORITIZED;
  if (got & EPOLLOUT) uv |= UV_WRITABLE;
  if (got & EPOLLRDHUP) uv |= UV_DISCONNECT;
  if (uv != 0) Call(w, 0, uv);
}

void OnSetReady(uv_poll_t* handle, int status, int events) {
  auto* s = static_cast<PollSet*>(handle->data);
  if (!s->open) return;
  epoll_event ready[kMaxEvents];
  int n;
  do n = epoll_wait(s->epfd, ready, kMaxEvents, 0);
  while (n < 0 && errno == EINTR);
  s->refs++;  // kept for the batch, whatever a callback starts (a worker's exit)
  // As libuv drops a handle's pending events when it is stopped or started again: an event of this batch is
  // stale for a watcher an earlier callback stopped, or whose interest it changed (setEvents).
  const uint64_t batch = s->changes;
  for (int i = 0; i < n && s->open; i++) {
    auto it = s->live.find(ready[i].data.u64);
    if (it == s->live.end()) continue;  // stopped by an earlier callback of this batch
    SharedWatcher* w = it->second;
    if (!w->active || w->changed_at > batch) continue;
    w->refs++;  // the callback may stop it
    Dispatch(w, ready[i].events);
    ReleaseWatcher(w);
  }
  ReleaseSet(s);
}

void OnSetClosed(uv_handle_t* handle) {
  auto* s = static_cast<PollSet*>(handle->data);
  close(s->epfd);
  s->epfd = -1;
  if (s->cleanup_hook != nullptr) {
    napi_remove_async_cleanup_hook(s->cleanup_hook);
    s->cleanup_hook = nullptr;
  }
  ReleaseSet(s);  // the open handle's reference
}

void OnEnvCleanup(napi_async_cleanup_hook_handle, void* data) {
  auto* s = static_cast<PollSet*>(data);
  // Watchers still open are freed: no JS runs after this, and an id finds nothing once the table is empty.
  for (auto& [id, w] : s->live) {
    w->active = false;
    w->callback.Reset();
    ReleaseWatcher(w);
  }
  s->live.clear();
  s->open = false;
  uv_close(reinterpret_cast<uv_handle_t*>(&s->poll), OnSetClosed);
}

/** This environment's set (made when the addon loads; again here if that failed). */
PollSet* SetOf(Napi::Env env) {
  EnvState* state = StateOf(env);
  auto* s = static_cast<PollSet*>(state->pollSet);
  if (s != nullptr) {
    if (!s->open) ThrowMisuse(env, "ERR_DEVLEASE_NO_LOOP", "this environment is shutting down");
    return s;
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    ThrowMisuse(env, "ERR_DEVLEASE_NO_LOOP", "no event loop for this environment");
  }
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) ThrowErrno(env, "epoll_create1", errno);
  s = new PollSet();
  s->epfd = epfd;
  s->env = env;
  s->poll.data = s;
  int rc = uv_poll_init(loop, &s->poll, epfd);
  if (rc == 0) rc = uv_poll_start(&s->poll, UV_READABLE, OnSetReady);
  if (rc < 0) {
    // uv_poll_init fails before the handle is on the loop, uv_poll_start never on an epoll fd it accepted.
    close(epfd);
    delete s;
    ThrowErrno(env, "epoll_ctl", -rc);
  }
  uv_unref(reinterpret_cast<uv_handle_t*>(&s->poll));  // until a watcher counts for the loop
  s->open = true;
  s->refs = 2;  // the environment's (EnvState's, ReleasePollSet) and the open handle's (OnSetClosed)
  if (napi_add_async_cleanup_hook(env, OnEnvCleanup, s, &s->cleanup_hook) != napi_ok) {
    // Without the hook a worker's teardown would leave the epoll fd open: no set for this environment.
    s->open = false;
    s->refs = 1;  // the handle's, released when it has closed
    uv_close(reinterpret_cast<uv_handle_t*>(&s->poll), OnSetClosed);
    ThrowMisuse(env, "ERR_DEVLEASE_NO_LOOP", "cannot watch this environment's teardown");
  }
  state->pollSet = s;
  return s;
}

/** The open watcher `info[0]` names, or null: stopped (or never made here). */
SharedWatcher* WatcherArg(const Napi::CallbackInfo& info) {
  int64_t id = IntArg(info, 0, "id", 1, int64_t{1} << 53);
  auto* s = static_cast<PollSet*>(StateOf(info.Env())->pollSet);
  if (s == nullptr) return nullptr;
  auto it = s->live.find(static_cast<uint64_t>(id));
  return it == s->live.end() ? nullptr : it->second;
}

// pollShared(fd, events, cb) -> id: as poll(), through this environment's epoll set.
Napi::Value PollShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int events = static_cast<int>(IntArg(info, 1, "events", 0, 15));
  if (!info[2].IsFunction()) ThrowInvalidArg(env, "cb must be a function");
  PollSet* s = SetOf(env);
  auto* w = new SharedWatcher(env, s, s->next_id++, fd, info[2].As<Napi::Function>());
  w->refs = 1;  // the table's
  w->events = events;
  if (events != 0) {
    int rc = Activate(w);
    if (rc < 0) {
      delete w;
      ThrowErrno(env, "epoll_ctl", -rc);
    }
  }
  s->live.emplace(w->id, w);
  return Napi::Number::New(env, static_cast<double>(w->id));
}

// pollSharedStop(id): idempotent.
Napi::Value PollSharedStop(const Napi::CallbackInfo& info) {
  if (SharedWatcher* w = WatcherArg(info)) StopWatcher(w);
  return info.Env().Undefined();
}

// pollSharedEvents(id, events): changes the interest set; 0 stops callbacks, errors included, until events are
// asked again (as uv_poll_start(0)). Throws ERR_DEVLEASE_CLOSED once stopped.
Napi::Value PollSharedEvents(const Napi::CallbackInfo& info) {
  SharedWatcher* w = WatcherArg(info);
  int events = static_cast<int>(IntArg(info, 1, "events", 0, 15));
  if (w == nullptr) ThrowMisuse(info.Env(), "ERR_DEVLEASE_CLOSED", "poll handle is stopped");
  w->events = events;
  if (events == 0) {
    Deactivate(w);
  } else {
    int rc = Activate(w);
    if (rc < 0) ThrowErrno(info.Env(), "epoll_ctl", -rc);
  }
  return info.Env().Undefined();
}

// pollSharedRef(id, ref): whether the watcher keeps the loop alive (uv_ref / uv_unref); nothing once stopped.
Napi::Value PollSharedRef(const Napi::CallbackInfo& info) {
  SharedWatcher* w = WatcherArg(info);
  bool ref = BoolArg(info, 1, "ref");
  if (w != nullptr && w->refd != ref) {
    w->refd = ref;
    if (w->active) UpdateLoopRef(w->set, ref ? +1 : -1);
  }
  return info.Env().Undefined();
}

}  // namespace

void ReleasePollSet(void* set) {
  ReleaseSet(static_cast<PollSet*>(set));
}

void RegisterPollShared(Napi::Env env, Napi::Object exports) {
  // Made with the addon, not at the first watch: an fd that appeared later would read as one leaked by whatever
  // watched first (the tests count every fd). Its handle is unref'ed, so an unused set keeps no loop alive; if it
  // cannot be made now (EMFILE), the first watch tries again and throws then.
  try {
    SetOf(env);
  } catch (const Napi::Error&) {
  }
  exports.Set("pollShared", Napi::Function::New(env, PollShared, "pollShared"));
  exports.Set("pollSharedStop", Napi::Function::New(env, PollSharedStop, "pollSharedStop"));
  exports.Set("pollSharedEvents", Napi::Function::New(env, PollSharedEvents, "pollSharedEvents"));
  exports.Set("pollSharedRef", Napi::Function::New(env, PollSharedRef, "pollSharedRef"));
}

}  // namespace devlease
