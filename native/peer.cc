// Who is at the other end of a connected AF_UNIX socket (either type), as the
// kernel recorded it at connect() (socketpair(): the creator): SO_PEERCRED's
// pid/uid/gid, SO_PEERGROUPS's supplementary groups, SO_PEERPIDFD's pidfd.
// The credentials are one object the socket holds, not the process as it is
// now: a peer that has since exited, or changed its groups, is still told as
// it was when it connected.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "common.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace devlease {
namespace {

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) ThrowErrno(env, "getsockopt", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

// Room for most peers' groups in one getsockopt; a peer with more is asked again at the size the kernel names.
constexpr size_t kGroupsFirstTry = 64;

// peerGroups(fd): SO_PEERGROUPS (Linux >= 4.13), the peer's supplementary groups from the same credentials as
// SO_PEERCRED (mapped into this process's user namespace, as SO_PEERCRED's ids are). A buffer too small fails
// ERANGE with the length needed written to optlen; asked once more with that. The credentials never change, so
// a second ERANGE cannot happen; were it to, it is thrown rather than looped on.
Napi::Value PeerGroups(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  std::vector<gid_t> groups(kGroupsFirstTry);
  for (bool retried = false;; retried = true) {
    auto len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      break;
    }
    int err = errno;
    if (err != ERANGE || retried || len <= groups.size() * sizeof(gid_t)) ThrowErrno(env, "getsockopt", err);
    groups.resize(len / sizeof(gid_t));  // at most NGROUPS_MAX (65536) gids: 256 KiB
  }
  Napi::Array out = Napi::Array::New(env, groups.size());
  for (size_t i = 0; i < groups.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, groups[i]));
  return out;
}

Napi::Value PeerPidfd(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int pidfd = -1;
  socklen_t len = sizeof(pidfd);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) ThrowErrno(info.Env(), "getsockopt", errno);
  // The kernel installs it O_CLOEXEC; make sure regardless of version.
  if (fcntl(pidfd, F_SETFD, FD_CLOEXEC) < 0) {
    int err = errno;
    close(pidfd);
    ThrowErrno(info.Env(), "fcntl", err);
  }
  return Napi::Number::New(info.Env(), pidfd);
}

}  // namespace

void RegisterPeer(Napi::Env env, Napi::Object exports) {
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("peerGroups", Napi::Function::New(env, PeerGroups, "peerGroups"));
  exports.Set("peerPidfd", Napi::Function::New(env, PeerPidfd, "peerPidfd"));
}

}  // namespace devlease
