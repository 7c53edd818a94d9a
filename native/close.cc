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
// fds (unix_socket.cc, recvInto), so a client that holds one FLUSH cannot fill the broker's fd table.
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

// One thread, started at the first such close, never joined (process exit ends it). A queue, not a thread per
// close: a server that never answers costs one blocked thread, whatever it is sent.
struct Closer {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int> queue;
  // queue.size(), mirrored for Full(): read on every receive from a client socket, so without the mutex.
  std::atomic<size_t> queued{0};
  size_t pending = 0;  // queued + the one being closed
  bool started = false;
  bool held = false;  // Hold() .. Resume(): nothing is taken off the queue

  void Push(int fd) {
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
      if (started) {
        try {
          queue.push_back(fd);
          queued.store(queue.size(), std::memory_order_relaxed);
          pending++;
          cv.notify_one();
          return;
        } catch (const std::bad_alloc&) {
          // no memory for the queue: closed here, as a last resort
        }
      }
    }
    close(fd);
  }

  void Run() {
    for (;;) {
      int fd;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [this] { return !queue.empty() && !held; });
        fd = queue.front();
        queue.pop_front();
        queued.store(queue.size(), std::memory_order_relaxed);
      }
      close(fd);  // whatever it says, the number is released (close(2))
      std::lock_guard<std::mutex> lock(mu);
      pending--;
    }
  }

  size_t Pending() {
    std::lock_guard<std::mutex> lock(mu);
    return pending;
  }

  // A check, not a reservation (as it was under the mutex): the fds of a message received after a "not full"
  // are queued all the same, so the queue passes the bound by at most what the messages being read carry.
  bool Full() { return queued.load(std::memory_order_relaxed) >= kMaxQueuedCloses; }

  // For a child this process is about to exec (an upgrade's new broker): exec closes every O_CLOEXEC fd it
  // inherited, and for a queued fd that close is the FLUSH this queue waits behind, so the exec (and the spawn
  // reading its status pipe, on the JavaScript thread) would wait for it too. The queued fds are left open
  // across the exec instead — the child is told their numbers and closes them on its own closer thread — and
  // nothing leaves the queue until Resume(), so the numbers stay what the child is told.
  std::vector<int> Hold() {
    std::lock_guard<std::mutex> lock(mu);
    held = true;
    std::vector<int> out;
    for (int fd : queue) {
      if (fd > 3 && fcntl(fd, F_SETFD, 0) == 0) out.push_back(fd);  // 0-3: the child's stdio and handover fd
    }
    return out;
  }

  void Resume() {
    std::lock_guard<std::mutex> lock(mu);
    for (int fd : queue) fcntl(fd, F_SETFD, FD_CLOEXEC);
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

/** A descriptor another process sent: closed now, or on the closer thread if its close may wait (above). */
Napi::Value CloseReceived(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (CloseMayWait(fd))
    TheCloser().Push(fd);
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

}  // namespace

bool ClosesBacklogged() { return TheCloser().Full(); }

void CloseReceivedFd(int fd) {
  if (CloseMayWait(fd))
    TheCloser().Push(fd);
  else
    close(fd);  // nobody to tell of an error here (TakeFds' surplus)
}

void RegisterClose(Napi::Env env, Napi::Object exports) {
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("closeReceived", Napi::Function::New(env, CloseReceived, "closeReceived"));
  exports.Set("closesPending", Napi::Function::New(env, ClosesPending, "closesPending"));
  exports.Set("closesHold", Napi::Function::New(env, ClosesHold, "closesHold"));
  exports.Set("closesResume", Napi::Function::New(env, ClosesResume, "closesResume"));
  exports.Set("closesQueueLimit", Napi::Number::New(env, static_cast<double>(kMaxQueuedCloses)));
}

}  // namespace devlease
