#!/usr/bin/env bash
# Installs the host tools the kernel rig needs, only those missing: QEMU, a
# static busybox for the initramfs, cpio, and what building a kernel takes.
#
# QEMU must be >= 8.2.1: older edu devices abort QEMU ("DMA range ... out of
# bounds") on a DMA of the whole 4 KiB buffer (QEMU's "edu: fix DMA range
# upper bound check"). Bookworm has 7.2, so QEMU comes from
# <codename>-backports (10.0 on bookworm) when the machine's own suite is too
# old; everything else comes from the machine's own suites.
#
# Rules: the machine's apt sources and lists are never changed (backports are
# seen through a private APT_CONFIG whose lists live in the cache), nothing
# installed outside the QEMU family is upgraded or removed (checked on a
# simulation first). Kernels come from trixie-backports through
# scripts/apt-private.sh (build-*.sh), never here.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

qemu_min=8.2.1
export DEBIAN_FRONTEND=noninteractive

qemu_version() { qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p'; }
qemu_ok() { local v; v=$(qemu_version); [ -n "$v" ] && dpkg --compare-versions "$v" ge "$qemu_min" && [ -f /usr/share/qemu/qboot.rom ]; }
busybox_static() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }
busybox_cached() { [ -x "$rig_cache/busybox-static/bin/busybox" ] || [ -x "$rig_cache/busybox-static/usr/bin/busybox" ]; }

# "test to run | package that satisfies it"
checks=(
  "command -v cpio|cpio"
  "command -v xz|xz-utils"
  "command -v gcc|gcc"
  "command -v make|make"
  "command -v bc|bc"
  "command -v flex|flex"
  "command -v bison|bison"
  "test -f /usr/include/libelf.h|libelf-dev"
  "test -f /usr/include/openssl/ssl.h|libssl-dev"
)
missing=()
for c in "${checks[@]}"; do
  eval "${c%%|*}" >/dev/null 2>&1 || missing+=("${c##*|}")
done
# busybox-static conflicts with Debian's dynamic busybox: never swap one for
# the other on the host; with the dynamic one installed, a static busybox is
# extracted into the cache instead (below).
if ! busybox_static && ! dpkg-query -W -f '${Status}' busybox 2>/dev/null | grep -q 'ok installed'; then
  missing+=(busybox-static)
fi

if [ ${#missing[@]} -eq 0 ] && qemu_ok && { busybox_static || busybox_cached; }; then exit 0; fi
[ "$(id -u)" = 0 ] || rig_fail "missing tools (${missing[*]} qemu>=$qemu_min?); installing them needs root"

# apt_install_checked ARGS... : apt-get install, after a simulation shows that
# it upgrades nothing but QEMU's own packages and removes nothing.
apt_install_checked() {
  local sim bad
  sim=$(apt-get install -s --no-install-recommends "$@" 2>&1) || { echo "$sim" >&2; rig_fail "apt-get cannot install $*"; }
  bad=$(echo "$sim" | awk '/^Remv / {print $2} /^Inst [^ ]+ \[/ && $2 !~ /^(qemu-|seabios$|ipxe-qemu)/ {print $2}')
  [ -z "$bad" ] || rig_fail "installing $* would upgrade or remove host packages: $(echo $bad); refusing"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  rig_log "installing ${missing[*]}"
  apt_install_checked "${missing[@]}"
fi

if ! qemu_ok; then
  candidate=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: *\([0-9]*:\)\{0,1\}\([0-9.]*\).*/\2/p')
  if [ -n "$candidate" ] && dpkg --compare-versions "$candidate" ge "$qemu_min"; then
    rig_log "installing qemu-system-x86 $candidate"
    apt_install_checked qemu-system-x86 qemu-system-data
  else
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    backports="$codename-backports"
    uri=$(sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
    [ -n "$uri" ] || uri=$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    [ -n "$uri" ] || rig_fail "no Debian mirror in the machine's apt sources"
    # Private view: the machine's own sources plus backports, lists in the cache.
    root="${DEVLEASE_CACHE:-$HOME/.cache/devlease}/apt-host+$backports"
    mkdir -p "$root/lists/partial"
    { cat /etc/apt/sources.list 2>/dev/null || true
      echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $backports main"; } >"$root/sources.list"
    printf '%s\n' "Dir::Etc::SourceList \"$root/sources.list\";" "Dir::State::Lists \"$root/lists\";" \
      'APT::Sandbox::User "root";' >"$root/apt.conf"
    export APT_CONFIG="$root/apt.conf"
    apt-get update -qq
    rig_log "installing qemu-system-x86 from $backports (the machine's own is older than $qemu_min)"
    # -t: resolve the whole set with backports as the target release, so the
    # QEMU family's own dependencies (qemu-system-common, seabios) come from
    # there too. Naming only pkg/suite takes those two from backports and
    # resolves their dependencies against the default release, which fails.
    apt_install_checked -t "$backports" qemu-system-x86 qemu-system-data
    unset APT_CONFIG
  fi
  qemu_ok || rig_fail "QEMU $(qemu_version) installed, but the rig needs >= $qemu_min with /usr/share/qemu/qboot.rom"
fi

if ! busybox_static && ! busybox_cached; then
  dest="$rig_cache/busybox-static"
  rig_log "dynamic busybox on the host: extracting busybox-static into $dest"
  tmp=$(rig_tmpdir busybox)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq busybox-static) || rig_fail "apt-get download busybox-static failed"
  dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/root"
  rm -rf "$dest" && mv "$tmp/root" "$dest"
fi
