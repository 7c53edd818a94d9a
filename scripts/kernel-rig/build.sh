#!/usr/bin/env bash
# Usage: build.sh CONFIG     (CONFIG: legacy | iommufd | vfio-user)
# Builds or finds in the cache everything needed to boot one guest
# configuration, then prints (and writes to <cache>/kernel-rig/CONFIG.env):
#   KERNEL=<path>  INITRD=<path>
# Host tools must be there already (scripts/kernel-rig/deps.sh installs them).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config="${1:-}"
case "$config" in
  # vfio-user (test/vm): the stock kernel too; vfio-user-pci is a plain PCI device to it.
  legacy | vfio-user) kernel_dir=$("$rig_dir/build-legacy.sh"); kernel="$kernel_dir/vmlinuz" ;;
  iommufd) kernel_dir=$("$rig_dir/build-iommufd.sh"); kernel="$kernel_dir/bzImage" ;;
  *) rig_fail "usage: build.sh legacy|iommufd|vfio-user" ;;
esac
[ -f "$kernel" ] || rig_fail "$config: no kernel at $kernel"
initrd=$("$rig_dir/build-initrd.sh" "$config" "$kernel_dir")

env_file="$rig_cache/$config.env"
printf 'KERNEL=%s\nINITRD=%s\n' "$kernel" "$initrd" >"$env_file.tmp"
mv "$env_file.tmp" "$env_file"
cat "$env_file"
