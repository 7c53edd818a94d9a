// close(2), and a thread of its own for the closes of other processes' descriptors that may never return.
//
// A close runs the file's flush. For a file on FUSE that is a FLUSH request to whoever serves it — any local
// user can (fusermount3), and pass such an fd to the broker in any message — and once the server has read it
// the kernel waits for the answer uninterruptibly (a forced request; only the kernel's
// fs.fuse.max_request_timeout, off by default, ends it). Network file systems flush to their server the same
// way. Closed on the JavaScript thread, one such fd would stop the broker for good; so a descriptor received
// from a peer is closed here at once only if a look that reaches no file system server says its close cannot
// wait on one — memory (memfd, shmem, hugetlbfs: F_GET_SEALS answers), an anonymous inode (eventfd, pidfd,
// epoll), a pipe or an AF_UNIX socket — and on one closer thread otherwise. (A plain fstat, or fstatfs, may
// ask the server itself.) If a close there never returns, only the descriptors queued behind it wait, each
// still open — at most kMaxQueuedCloses of them: with the queue full, sockets of untrusted peers take no more
// fds (unix_socket.cc, recvInto), so a client that holds one FLUSH cannot fill the broker's fd table. And each
// queued fd is counted against the uid of the peer that sent it (SO_PEERCRED of the socket it came on): a
// peer whose uid has kMaxQueuedClosesPerUid queued takes no more fds either, so the user who holds the FLUSH
// fills its own share and is refused, while other users' clients still have their fds taken.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace devlease {
namespace {

// Whether closing `fd` can wait on another party, judged without asking the file's file system anything:
// statx with AT_STATX_DONT_SYNC answers from what the kernel has cached (FUSE and NFS send no request for it),
// F_GET_SEALS and SO_DOMAIN never reach a file system. (A readlink of /proc/self/fd/N would do too, at ~5 µs
// a close against ~0.5: a lease's eventfds are closed this way.)
bool CloseMayWait(int fd) {
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE, &stx) < 0) return errno != EBADF;
  switch (stx.stx_mode & S_IFMT) {
    case 0:  // an anonymous inode: eventfd, pidfd, epoll, timerfd
    case S_IFIFO:  // a pipe, or a FIFO: its close is the pipe's, whatever file system holds its name
      return false;
    case S_IFSOCK: {
      // AF_UNIX closes at once; another family's close may linger (SO_LINGER) as its peer allows.
      int domain = 0;
      socklen_t len = sizeof domain;
      return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX;
    }
    case S_IFREG:
      return fcntl(fd, F_GET_SEALS) < 0;  // memfd, shmem, hugetlbfs: memory, no flush; any other file may wait
    default:
      return true;  // a device node (a tty drains on close), a directory: on the closer thread
  }
}

// Descriptors that may wait behind a close that does not return: past this many, the broker's sockets of
// clients take no fds (a few per lease are ever closed here, and only those a close may hold up).
constexpr size_t kMaxQueuedCloses = 1024;
// Of those, what one uid's peers may have queued before their sockets take no fds. A quarter: the global bound
// above, the backstop, is then reached only by four users filling their shares together (one held close stalls
// the queue for all; any user can mount FUSE, but a uid is not free to make), and while one user's share is
// full 768 places are left to everyone else. The uid,
// not the connection, is the unit: a client reconnects at will, and another process of the same user can be
// made to do anything the culprit can (ptrace). An honest client queues next to nothing: a lease's eventfds and
// DMA memfds close at once; only fds a close may wait on (a regular file, a device node) come here at all.
constexpr size_t kMaxQueuedClosesPerUid = kMaxQueuedCloses / 4;
static_assert(kMaxQueuedClosesPerUid > 0 && kMaxQueuedClosesPerUid <= kMaxQueuedCloses);

// One thread, started at the first such close, never joined (process exit ends it). A queue, not a thread per
// close: a server that never answers costs one blocked thread, whatever it is sent.
struct Closer {
  struct Queued {
    int fd;
    int64_t sender;  // the uid it is counted against in perUid, or kNoSender
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Queued> queue;
  // queue.size(), mirrored for Backlogged(): read on every receive from a client socket, so without the mutex.
  std::atomic<size_t> queued{0};
  // Queued fds per sender uid; an entry only while it has some, so never more entries than queued fds.
  std::unordered_map<uint32_t, size_t> perUid;
  size_t pending = 0;  // queued + the one being closed
  bool started = false;
  bool held = false;  // Hold() .. Resume(): nothing is taken off the queue

  void Push(int fd, int64_t sender) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!started) {
        try {
          std::thread([this] { Run(); }).detach();
          started = true;
        } catch (const std::system_error&) {
          // No thread to be had (EAGAIN): this close is done here, as before there was one.
        }
      }
      if (started && Enqueue(fd, sender)) return;
    }
    close(fd);  // outside the mutex: this close may wait, and Backlogged() takes the mutex on the JS thread
  }

  // Under mu. False if there is no memory for the queue (the caller closes fd, as a last resort).
  bool Enqueue(int fd, int64_t sender) {
    try {
      queue.push_back({fd, kNoSender});
    } catch (const std::bad_alloc&) {
      return false;
    }
    queued.store(queue.size(), std::memory_order_relaxed);
    pending++;
    cv.notify_one();
    if (sender == kNoSender) return true;
    try {
      perUid[static_cast<uint32_t>(sender)]++;
      queue.back().sender = sender;
    } catch (const std::bad_alloc&) {
      // no memory for its uid's entry: counted by the global bound only
    }
    return true;
  }

  void Run() {
    for (;;) {
      int fd;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [this] { return !queue.empty() && !held; });
        fd = queue.front().fd;
        Uncount(queue.front().sender);
        queue.pop_front();
        queued.store(queue.size(), std::memory_order_relaxed);
      }
      close(fd);  // whatever it says, the number is released (close(2))
      std::lock_guard<std::mutex> lock(mu);
      pending--;
    }
  }

  // Under mu.
  void Uncount(int64_t sender) {
    if (sender == kNoSender) return;
    auto it = perUid.find(static_cast<uint32_t>(sender));
    if (it != perUid.end() && --it->second == 0) perUid.erase(it);
  }

  size_t Pending() {
    std::lock_guard<std::mutex> lock(mu);
    return pending;
  }

  size_t QueuedFrom(uint32_t uid) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = perUid.find(uid);
    return it == perUid.end() ? 0 : it->second;
  }

  // Whether a peer of uid `sender` (kNoSender: not known) may have no more fds taken: the queue is full, or that
  // uid's share of it is. A check, not a reservation (as it was under the mutex): the fds of a message received
  // after a "no" are queued all the same, so either bound is passed by at most what the messages being read
  // carry. With fewer queued than one uid's share, no uid can have its share: one atomic load, no mutex, on
  // every read of a client socket while the closer keeps up.
  bool Backlogged(int64_t sender) {
    size_t n = queued.load(std::memory_order_relaxed);
    if (n < kMaxQueuedClosesPerUid) return false;
    if (n >= kMaxQueuedCloses) return true;
    if (sender == kNoSender) return false;
    return QueuedFrom(static_cast<uint32_t>(sender)) >= kMaxQueuedClosesPerUid;
  }

  // For a child this process is about to exec (an upgrade's new broker): exec closes every O_CLOEXEC fd it
  // inherited, and for a queued fd that close is the FLUSH this queue waits behind, so the exec (and the spawn
  // reading its status pipe, on the JavaScript thread) would wait for it too. The queued fds are left open
  // across the exec instead — the child is told their numbers and closes them on its own closer thread — and
  // nothing leaves the queue until Resume(), so the numbers stay what the child is told.
  std::vector<int> Hold() {
    std::lock_guard<std::mutex> lock(mu);
    held = true;
    std::vector<int> out;
    for (const Queued& q : queue) {
      if (q.fd > 3 && fcntl(q.fd, F_SETFD, 0) == 0) out.push_back(q.fd);  // 0-3: the child's stdio and handover fd
    }
    return out;
  }

  void Resume() {
    std::lock_guard<std::mutex> lock(mu);
    for (const Queued& q : queue) fcntl(q.fd, F_SETFD, FD_CLOEXEC);
    held = false;
    cv.notify_one();
  }
};

// Leaked on purpose: the detached thread may still use it while the process exits.
Closer& TheCloser() {
  static Closer* closer = new Closer();
  return *closer;
}

// On Linux the fd is released whatever close() reports (close(2), "Dealing with error returns from close()");
// retrying could close a descriptor another thread just received. Only EBADF is ours to hear: the number was
// not open, a bookkeeping bug. EINTR, and the EIO/ENOSPC/EDQUOT a flush may return, concern data written
// through a file this library only passes on or maps; a client's FUSE server answers every FLUSH with EIO if
// it likes, and throwing that from a cleanup path (a socket's hang-up, a reclaim) let a client kill the broker.
void CloseNow(Napi::Env env, int fd) {
  if (close(fd) < 0 && errno == EBADF) ThrowErrno(env, "close", errno);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  CloseNow(info.Env(), FdArg(info, 0));
  return info.Env().Undefined();
}

// info[i] as a sender uid: absent, undefined or -1 for none known; else a uid (0 .. 2^32 - 2: -1 is no uid).
int64_t SenderArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return kNoSender;
  return IntArg(info, i, "senderUid", -1, 0xfffffffe);
}

/**
 * closeReceived(fd, senderUid?): a descriptor another process sent, closed now, or on the closer thread if its
 * close may wait (above), counted against senderUid while it waits there.
 */
Napi::Value CloseReceived(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int64_t sender = SenderArg(info, 1);
  if (CloseMayWait(fd))
    TheCloser().Push(fd, sender);
  else
    CloseNow(info.Env(), fd);
  return info.Env().Undefined();
}

/** closesHold(): the queued fds' numbers, left open across an exec until closesResume() (Closer::Hold). */
Napi::Value ClosesHold(const Napi::CallbackInfo& info) {
  std::vector<int> fds = TheCloser().Hold();
  Napi::Array out = Napi::Array::New(info.Env(), fds.size());
  for (size_t i = 0; i < fds.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), fds[i]));
  return out;
}

Napi::Value ClosesResume(const Napi::CallbackInfo& info) {
  TheCloser().Resume();
  return info.Env().Undefined();
}

/** Descriptors handed to the closer thread and not closed yet (tests, diagnostics). */
Napi::Value ClosesPending(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(TheCloser().Pending()));
}

/** closesQueuedFrom(uid): descriptors queued to the closer thread, counted against `uid` (tests, diagnostics). */
Napi::Value ClosesQueuedFrom(const Napi::CallbackInfo& info) {
  auto uid = static_cast<uint32_t>(IntArg(info, 0, "uid", 0, 0xfffffffe));
  return Napi::Number::New(info.Env(), static_cast<double>(TheCloser().QueuedFrom(uid)));
}

}  // namespace

bool ClosesBacklogged(int64_t sender) { return TheCloser().Backlogged(sender); }

void CloseReceivedFd(int fd, int64_t sender) {
  if (CloseMayWait(fd))
    TheCloser().Push(fd, sender);
  else
    close(fd);  // nobody to tell of an error here (TakeFds' surplus)
}

void RegisterClose(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("closeReceived", Napi::Function::New(env, CloseReceived, "closeReceived"));
  exports.Set("closesPending", Napi::Function::New(env, ClosesPending, "closesPending"));
  exports.Set("closesHold", Napi::Function::New(env, ClosesHold, "closesHold"));
  exports.Set("closesResume", Napi::Function::New(env, ClosesResume, "closesResume"));
  exports.Set("closesQueuedFrom", Napi::Function::New(env, ClosesQueuedFrom, "closesQueuedFrom"));
  exports.Set("closesQueueLimit", Napi::Number::New(env, static_cast<double>(kMaxQueuedCloses)));
  exports.Set("closesQueueLimitPerUid", Napi::Number::New(env, static_cast<double>(kMaxQueuedClosesPerUid)));
}

}  // namespace devlease
