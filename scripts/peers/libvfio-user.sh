#!/usr/bin/env bash
# Builds libvfio-user's samples (a stock vfio-user peer for `npm run
# test:interop`) and prints the path of the built samples folder on stdout.
# Everything else goes to stderr.
#
# Source: the tarball named by DEVLEASE_LIBVFIO_USER_TARBALL (default
# ../shared/peers/libvfio-user-efd091b.tar.gz beside the project root, where
# CI has it; the machines cannot reach GitHub).
#
# Cache: ${DEVLEASE_CACHE:-$HOME/.cache/devlease}/peers/libvfio-user-<key>/,
# outside the clone. <key> hashes the tarball, the patch and this script, so a
# change to any of them builds afresh; a complete build is reused as is. A
# build happens in a scratch folder beside it and is renamed into place only
# once its samples have been seen to start, so an interrupted or failed build
# is never reused.
#
# The patch (libvfio-user-server-bar1.patch): samples/server.c at efd091b sets
# bar1_size to 0x3000, which the library itself refuses ("BAR region size
# 12288 must be a power of 2"), so the sample cannot start. The build copy
# gets 0x4000 instead. Nothing else of libvfio-user is changed.
#
# Build dependencies (Debian: meson ninja-build libjson-c-dev libcmocka-dev
# pkg-config gcc patch) are installed when missing, with --no-upgrade, after a
# simulation shows that nothing installed would be upgraded or removed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
patch_file="$here/libvfio-user-server-bar1.patch"
tarball="${DEVLEASE_LIBVFIO_USER_TARBALL:-$root/../shared/peers/libvfio-user-efd091b.tar.gz}"
cache="${DEVLEASE_CACHE:-$HOME/.cache/devlease}/peers"

log() { echo "libvfio-user: $*" >&2; }
fail() { echo "libvfio-user: $*" >&2; exit 1; }

[ -f "$tarball" ] || fail "no libvfio-user tarball at '$tarball' (set DEVLEASE_LIBVFIO_USER_TARBALL to the path of libvfio-user-efd091b.tar.gz)"

key=$(for f in "$tarball" "$patch_file" "${BASH_SOURCE[0]}"; do cat "$f"; printf '\0'; done | sha256sum | cut -c1-16)
dest="$cache/libvfio-user-$key"
if [ -f "$dest/.complete" ]; then
  echo "$dest/build/samples"
  exit 0
fi

# ---- build dependencies -------------------------------------------------
# "test that passes when present | Debian package"
checks=(
  "command -v meson|meson"
  "command -v ninja|ninja-build"
  "command -v pkg-config|pkg-config"
  "command -v gcc|gcc"
  "command -v patch|patch"
  "pkg-config --exists json-c|libjson-c-dev"
  "pkg-config --exists cmocka|libcmocka-dev"
)
missing=()
for c in "${checks[@]}"; do
  eval "${c%%|*}" >/dev/null 2>&1 || missing+=("${c##*|}")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing build dependencies (${missing[*]}); install them (apt-get install ${missing[*]}) or run this as root"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Simulate first: refuse anything that would upgrade ("Inst pkg [old-version] ...") or remove a package.
  sim=$(apt-get install -s --no-upgrade --no-install-recommends "${missing[@]}" 2>&1) \
    || { echo "$sim" >&2; fail "apt-get cannot install ${missing[*]}"; }
  bad=$(echo "$sim" | awk '/^Remv / {print $2} /^Inst [^ ]+ \[/ {print $2}')
  [ -z "$bad" ] || fail "installing ${missing[*]} would upgrade or remove host packages: $(echo $bad); refusing"
  log "installing ${missing[*]}"
  apt-get install -y -qq --no-upgrade --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- build ----------------------------------------------------------------
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.tmp-libvfio-user.XXXXXX")
samples_pids=()
cleanup() {
  for p in "${samples_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

log "building from $tarball into $dest"
tar -xzf "$tarball" -C "$tmp" --strip-components=1
[ -f "$tmp/samples/server.c" ] || fail "$tarball holds no samples/server.c: not a libvfio-user source archive"
log "patching samples/server.c: bar1_size 0x3000 -> 0x4000 (the unpatched sample refuses to start: 'BAR region size 12288 must be a power of 2'; see $(basename "$patch_file"))"
(cd "$tmp" && patch -p1 --quiet --no-backup-if-mismatch <"$patch_file") || fail "the server.c patch does not apply to $tarball"
(cd "$tmp" && meson setup build -Dbuildtype=release >"$tmp/build.log" 2>&1 && ninja -C build >>"$tmp/build.log" 2>&1) \
  || { tail -n 40 "$tmp/build.log" >&2; fail "build failed (log above)"; }

# ---- check: each sample starts and listens on an AF_UNIX stream socket -------
# /proc/net/unix: Flags 00010000 is a listening socket, Type 0001 SOCK_STREAM.
listening_stream() { awk -v p="$1" '$8 == p && $4 == "00010000" && $5 == "0001" {found=1} END {exit !found}' /proc/net/unix; }
for sample in gpio-pci-idio-16 server; do
  bin="$tmp/build/samples/$sample"
  [ -x "$bin" ] || fail "the build made no samples/$sample"
  sock="$tmp/check-$sample.sock"
  "$bin" "$sock" 2>"$tmp/check-$sample.log" &
  pid=$!
  samples_pids+=("$pid")
  for _ in $(seq 1 100); do
    listening_stream "$sock" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  listening_stream "$sock" || { cat "$tmp/check-$sample.log" >&2; fail "samples/$sample did not listen on a SOCK_STREAM socket at $sock within 5 s"; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$sock" "$tmp/check-$sample.log"
  log "samples/$sample starts and listens (SOCK_STREAM)"
done
samples_pids=()

touch "$tmp/.complete"
# Atomic: another run may have finished the same key meanwhile; then its build stands and ours goes.
if mv -T "$tmp" "$dest" 2>/dev/null; then
  trap - EXIT
else
  [ -f "$dest/.complete" ] || fail "cannot rename the build into $dest"
fi
echo "$dest/build/samples"
