#!/usr/bin/env bash
# Prints the include directory of an extracted linux-libc-dev 7.x package: a
# directory INC holding INC/linux/vfio.h, INC/linux/iommufd.h and (the
# package's arch-specific half) INC/<multiarch>/asm/, e.g.
# INC/x86_64-linux-gnu/asm. The uapi layout test compiles against it:
#   cc -I INC -I INC/x86_64-linux-gnu ...
#
# The package comes from Debian (trixie-backports, then sid) through the
# private apt configuration of scripts/apt-private.sh: nothing is installed and
# the machine's apt sources are never touched. Extractions are cached under
# ${DEVLEASE_CACHE:-$HOME/.cache/devlease}/kernel-headers/<version>.
#
# Environment:
#   DEVLEASE_KERNEL_HEADERS_VERSION  exact Debian version to use (default: newest 7.x available)
#   DEVLEASE_KERNEL_HEADERS_SUITES   suites to search (default: "trixie-backports sid")
#
# On failure it exits non-zero and the last line on stderr says why.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${DEVLEASE_CACHE:-$HOME/.cache/devlease}/kernel-headers"
want="${DEVLEASE_KERNEL_HEADERS_VERSION:-}"
suites="${DEVLEASE_KERNEL_HEADERS_SUITES:-trixie-backports sid}"

fail() { echo "kernel-headers: $*" >&2; exit 1; }

multiarch="$(uname -m)-linux-gnu"
complete() {
  [ -f "$1/usr/include/linux/vfio.h" ] && [ -f "$1/usr/include/linux/iommufd.h" ] &&
    [ -d "$1/usr/include/$multiarch/asm" ]
}
found() { echo "$1/usr/include"; exit 0; }

# Exact version requested and already cached: no network needed.
if [ -n "$want" ] && complete "$cache/$want"; then found "$cache/$want"; fi

command -v apt-get >/dev/null || fail "apt-get not found (needs a Debian-family host to fetch linux-libc-dev)"
command -v dpkg-deb >/dev/null || fail "dpkg-deb not found (needed to extract linux-libc-dev)"

# shellcheck source=apt-private.sh
. "$here/apt-private.sh"

newest_cached() {
  # Newest complete 7.x extraction already in the cache, if any.
  local d best=""
  for d in "$cache"/7.*; do
    [ -d "$d" ] && complete "$d" || continue
    if [ -z "$best" ] || dpkg --compare-versions "$(basename "$d")" gt "$(basename "$best")"; then best="$d"; fi
  done
  [ -n "$best" ] && echo "$best"
}

suite="" version=""
for s in $suites; do
  if ! apt_private "$s" 2>/dev/null; then continue; fi
  # Versions of linux-libc-dev in this suite, newest first; keep 7.x only.
  v=$(apt-cache madison linux-libc-dev 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); print $2}' |
    { if [ -n "$want" ]; then grep -Fx -- "$want"; else grep '^7\.'; fi; } | sort -V -r | head -n1 || true)
  if [ -n "$v" ]; then suite="$s" version="$v"; break; fi
done

if [ -z "$version" ]; then
  # Offline or the suites moved on: fall back to what is cached.
  if [ -z "$want" ] && best=$(newest_cached); then
    echo "kernel-headers: no Debian suite reachable; using cached $(basename "$best")" >&2
    found "$best"
  fi
  fail "no linux-libc-dev ${want:-7.x} found in Debian suites: $suites (network down, or mirror lacks it?)"
fi

dest="$cache/$version"
if complete "$dest"; then found "$dest"; fi

# APT_CONFIG still names $suite: the loop above stopped on it.
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
apt_private_download "$tmp/deb" "linux-libc-dev=$version" ||
  fail "apt-get download linux-libc-dev=$version from $suite failed"
deb=$(ls "$tmp"/deb/linux-libc-dev_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || fail "apt-get download produced no linux-libc-dev .deb"
dpkg-deb -x "$deb" "$tmp/root" || fail "dpkg-deb -x $deb failed"
complete "$tmp/root" || fail "linux-libc-dev $version lacks linux/vfio.h, linux/iommufd.h or $multiarch/asm"
rm -rf "$dest"
mv "$tmp/root" "$dest"
found "$dest"
