#!/usr/bin/env bash
# Builds (or finds cached) the "iommufd" guest kernel: Debian's linux-source
# (trixie-backports) configured as tinyconfig + kvm_guest.config +
# iommufd.config, built as a bzImage. Debian's own kernels leave IOMMUFD off,
# hence this build. About 8 minutes on 2 cores; cached afterwards.
#
# Prints the cache folder (holding bzImage, config, build.log) on stdout.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

fragment="$rig_dir/iommufd.config"
series="${rig_abi%.*}"            # 7.3.4+deb13 -> 7.3
series="${series%%+*}"
src_pkg="linux-source-$series"
# Bump when the steps below change in a way that changes the kernel.
recipe="tinyconfig+kvm_guest.config+fragment;olddefconfig;bzImage;v1"

version=$(rig_pkg_version "$src_pkg")
if [ -z "$version" ]; then
  cached=$(rig_newest_cached kernel-iommufd-) ||
    rig_fail "$src_pkg not found in $rig_suite (network down?) and no iommufd kernel is cached"
  rig_log "$rig_suite unreachable; using cached $(basename "$cached")"
  echo "$cached"; exit 0
fi

key=$(rig_hash "$fragment" "$src_pkg=$version" "$recipe")
out="$rig_cache/kernel-iommufd-$key"
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi

for t in gcc make bc flex bison xz; do command -v "$t" >/dev/null || rig_fail "$t missing: run scripts/kernel-rig/deps.sh"; done
[ -f /usr/include/libelf.h ] || rig_fail "libelf-dev missing: run scripts/kernel-rig/deps.sh"

tmp=$(rig_tmpdir iommufd)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
rig_log "iommufd kernel: fetching $src_pkg $version"
rig_download "$tmp/deb" "$src_pkg=$version"
# Stream the source tarball out of the .deb straight into tar: no 160 MB copy.
dpkg-deb --fsys-tarfile "$tmp"/deb/"$src_pkg"_*.deb | tar -xO "./usr/src/$src_pkg.tar.xz" | tar -xJ -C "$tmp"
src="$tmp/$src_pkg"
[ -f "$src/Makefile" ] || rig_fail "$src_pkg did not unpack to $src"
rm -rf "$tmp/deb"
rig_log "iommufd kernel: unpacked in $((SECONDS - start)) s; configuring"

log="$tmp/build.log"
{
  make -C "$src" tinyconfig
  "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" \
    "$src/kernel/configs/kvm_guest.config" "$fragment"
  make -C "$src" olddefconfig
} >"$log" 2>&1 || { tail -n 30 "$log" >&2; rig_fail "configuring the kernel failed (log above)"; }

# Every option the fragment asks for must have survived olddefconfig
# (an unmet dependency silently drops it).
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=' "$fragment" | while IFS= read -r line; do
  opt="${line%%=*}" val="${line#*=}"
  if [ "$val" = n ]; then
    grep -qx "$opt=[ym]" "$src/.config" && echo "$line"
  else
    grep -qx "$line" "$src/.config" || echo "$line"
  fi
done || true)
[ -z "$missing" ] || rig_fail "options of iommufd.config not in the final .config: $(echo $missing)"

jobs=$(nproc)
rig_log "iommufd kernel: make -j$jobs bzImage (about 8 minutes on 2 cores; log: $log)"
make -C "$src" -j"$jobs" bzImage >>"$log" 2>&1 || { tail -n 40 "$log" >&2; rig_fail "kernel build failed (log above)"; }

stage="$tmp/out"
mkdir -p "$stage"
cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
cp "$src/.config" "$stage/config"
cp "$log" "$stage/build.log"
printf '%s\n' "source=$src_pkg=$version" "recipe=$recipe" "seconds=$((SECONDS - start))" >"$stage/inputs"
touch "$stage/.complete"
rm -rf "$out"
mv "$stage" "$out"
rig_prune kernel-iommufd- "$out"
rig_log "iommufd kernel: built in $((SECONDS - start)) s -> $out"
echo "$out"
