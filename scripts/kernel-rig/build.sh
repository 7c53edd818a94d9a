#!/usr/bin/env bash
# Usage: build.sh CONFIG     (CONFIG: legacy | iommufd)
# Builds or finds in the cache everything needed to boot one guest
# configuration, then prints (and writes to <cache>/kernel-rig/CONFIG.env):
#   KERNEL=<path>  INITRD=<path>
# Host tools must be there already (scripts/kernel-rig/deps.sh installs them).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config="${1:-}"
case "$config" in
  legacy) kernel_dir=$("$rig_dir/build-legacy.sh"); kernel="$kernel_dir/vmlinuz" ;;
  iommufd) kernel_dir=$("$rig_dir/build-iommufd.sh"); kernel="$kernel_dir/bzImage" ;;
  *) rig_fail "usage: build.sh legacy|iommufd" ;;
esac
[ -f "$kernel" ] || rig_fail "$config: no kernel at $kernel"
initrd=$("$rig_dir/build-initrd.sh" "$config" "$kernel_dir")

env_file="$rig_cache/$config.env"
printf 'KERNEL=%s\nINITRD=%s\n' "$kernel" "$initrd" >"$env_file.tmp"
mv "$env_file.tmp" "$env_file"
cat "$env_file"
