#!/usr/bin/env bash
# Prepares (or finds cached) the "legacy" guest kernel: Debian's stock kernel
# from trixie-backports, which has VFIO, vfio-pci and the type1 container as
# modules but no IOMMUFD. Only the modules the guest needs are kept,
# decompressed (busybox insmod then needs no xz support), with their
# dependencies resolved from each module's own .modinfo.
#
# Prints the cache folder on stdout. It holds vmlinuz, modules/*.ko and
# modules.order (file names, in load order).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

flavour="${rig_abi}-amd64"
image_pkg="linux-binary-unsigned-$flavour"
modules_pkg="linux-modules-$flavour"
# What the guest needs: the 9p root share and vfio-pci with the type1 container.
wanted="9p 9pnet_virtio vfio_iommu_type1 vfio_pci"
recipe="modules:$wanted;depends-from-modinfo;v1"

image_ver=$(rig_pkg_version "$image_pkg")
modules_ver=$(rig_pkg_version "$modules_pkg")
if [ -z "$image_ver" ] || [ -z "$modules_ver" ]; then
  cached=$(rig_newest_cached kernel-legacy-) ||
    rig_fail "$image_pkg / $modules_pkg not found in $rig_suite (network down?) and no legacy kernel is cached"
  rig_log "$rig_suite unreachable; using cached $(basename "$cached")"
  echo "$cached"; exit 0
fi

key=$(rig_hash "$image_pkg=$image_ver" "$modules_pkg=$modules_ver" "$recipe")
out="$rig_cache/kernel-legacy-$key"
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi

tmp=$(rig_tmpdir legacy)
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
rig_log "legacy kernel: fetching $image_pkg $image_ver and $modules_pkg"
rig_download "$tmp/deb" "$image_pkg=$image_ver" "$modules_pkg=$modules_ver"
mkdir -p "$tmp/root"
for deb in "$tmp"/deb/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
moddir=$(ls -d "$tmp"/root/usr/lib/modules/*/ | head -n1)
[ -f "$moddir/vmlinuz.unsigned" ] || rig_fail "$image_pkg has no usr/lib/modules/<ver>/vmlinuz.unsigned"

# name (dashes as underscores) -> path of its .ko[.xz]
declare -A path_of
while IFS= read -r f; do
  n=$(basename "$f"); n="${n%%.ko*}"; path_of["${n//-/_}"]="$f"
done < <(find "$moddir/kernel" -name '*.ko*')

stage="$tmp/out"
mkdir -p "$stage/modules"
declare -A done_mod
order=()
# Depth-first: a module's dependencies are loaded before it.
add_module() {
  local name="${1//-/_}" src ko dep deps
  [ -n "${done_mod[$name]:-}" ] && return 0
  done_mod[$name]=1
  src="${path_of[$name]:-}"
  [ -n "$src" ] || rig_fail "module $name not found in $modules_pkg (built in? then drop it from 'wanted')"
  ko="$stage/modules/$(basename "${src%.xz}")"
  case "$src" in *.xz) xz -dc "$src" >"$ko" ;; *) cp "$src" "$ko" ;; esac
  # (grep -m1 may stop tr early: the pipeline's status is not an error here)
  deps=$(tr '\0' '\n' <"$ko" | grep -a -m1 '^depends=' | cut -d= -f2 | tr ',' ' ' || true)
  for dep in $deps; do add_module "$dep"; done
  order+=("$(basename "$ko")")
}
for m in $wanted; do add_module "$m"; done

cp "$moddir/vmlinuz.unsigned" "$stage/vmlinuz"
printf '%s\n' "${order[@]}" >"$stage/modules.order"
printf '%s\n' "image=$image_pkg=$image_ver" "modules=$modules_pkg=$modules_ver" "recipe=$recipe" >"$stage/inputs"
touch "$stage/.complete"
rm -rf "$out"
mv "$stage" "$out"
rig_prune kernel-legacy- "$out"
rig_log "legacy kernel: ready in $((SECONDS - start)) s (modules: ${order[*]}) -> $out"
echo "$out"
