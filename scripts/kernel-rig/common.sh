#!/usr/bin/env bash
# Shared by the kernel-rig scripts (source it). Defines where things are
# cached, how cache keys are computed, and how Debian packages of newer
# suites are fetched without touching the machine's apt setup.
#
# Cache layout under ${DEVLEASE_CACHE:-$HOME/.cache/devlease}/kernel-rig/:
#   kernel-legacy-<key>/   Debian's stock kernel + the few modules the guest loads
#   kernel-iommufd-<key>/  the custom kernel built from linux-source
#   initrd-<config>-<key>.cpio.gz   busybox initramfs (init + modules, if any)
#   <config>.env           what the last successful build.sh produced (paths, keys)
# Each <key> is a hash of that layer's inputs, so a change to the config
# fragment rebuilds the kernel and a change to init.sh rebuilds only the initrd.

rig_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rig_cache="${DEVLEASE_CACHE:-$HOME/.cache/devlease}/kernel-rig"

# The stock kernel's ABI name; the iommufd kernel is built from the matching
# linux-source-<major.minor>. Both come from trixie-backports.
rig_abi="${DEVLEASE_KERNEL_RIG_ABI:-7.3.4+deb13}"
rig_suite="${DEVLEASE_KERNEL_RIG_SUITE:-trixie-backports}"

rig_log() { echo "kernel-rig: $*" >&2; }
rig_fail() { echo "kernel-rig: $*" >&2; exit 1; }

# rig_hash FILE-OR-STRING... : short sha256 over the contents of files and the
# text of the other arguments, in order.
rig_hash() {
  local a
  for a in "$@"; do
    if [ -f "$a" ]; then cat "$a"; else printf '%s' "$a"; fi
    printf '\0'
  done | sha256sum | cut -c1-16
}

# rig_pkg_version PKG : the candidate version of PKG in $rig_suite, through the
# private apt configuration (lists refreshed at most once a day). Prints
# nothing if the suite is unreachable or lacks PKG.
rig_pkg_version() {
  (
    # shellcheck source=../apt-private.sh
    . "$rig_dir/../apt-private.sh"
    apt_private "$rig_suite" >/dev/null 2>&1 || exit 0
    apt-cache madison "$1" 2>/dev/null | awk -F'|' 'NR==1 {gsub(/ /,"",$2); print $2}'
  )
}

# rig_download DEST PKG=VERSION... : .debs from $rig_suite into DEST.
rig_download() {
  local dest="$1"; shift
  (
    . "$rig_dir/../apt-private.sh"
    apt_private "$rig_suite" && apt_private_download "$dest" "$@"
  ) || rig_fail "apt-get download $* from $rig_suite failed"
}

# rig_newest_cached PREFIX : the most recently built complete cache entry
# whose name starts with PREFIX (used when the suite cannot be reached).
rig_newest_cached() {
  local d
  d=$(ls -1dt "$rig_cache/$1"* 2>/dev/null | while read -r x; do [ -f "$x/.complete" ] && { echo "$x"; break; }; done)
  [ -n "$d" ] && echo "$d"
}

# rig_tmpdir NAME : a scratch folder inside the cache (same filesystem, so the
# finished result can be renamed into place atomically).
rig_tmpdir() {
  mkdir -p "$rig_cache" && mktemp -d "$rig_cache/.tmp-$1.XXXXXX"
}

# rig_prune PREFIX KEEP : remove the other cache entries named PREFIX* (older
# builds of the same layer), keeping KEEP.
rig_prune() {
  local d
  for d in "$rig_cache/$1"*; do
    [ -e "$d" ] && [ "$d" != "$2" ] && rm -rf "$d"
  done
  return 0
}
