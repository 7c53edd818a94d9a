#!/usr/bin/env bash
# Usage: build-initrd.sh CONFIG KERNEL_DIR
# Builds (or finds cached) the guest initramfs for one configuration: static
# busybox, init.sh as /init, and the kernel's modules (KERNEL_DIR/modules/*,
# in KERNEL_DIR/modules.order) when it has any. Prints the .cpio.gz path.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

config="${1:?usage: build-initrd.sh CONFIG KERNEL_DIR}"
kernel_dir="${2:?usage: build-initrd.sh CONFIG KERNEL_DIR}"
# A static busybox: the host's, or the one deps.sh extracted into the cache
# when the host has Debian's dynamic busybox.
busybox=""
for b in /bin/busybox "$rig_cache"/busybox-static/{bin,usr/bin}/busybox; do
  if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then busybox="$b"; break; fi
done
[ -n "$busybox" ] || rig_fail "no static busybox: run scripts/kernel-rig/deps.sh (busybox-static)"
command -v cpio >/dev/null || rig_fail "cpio missing: run scripts/kernel-rig/deps.sh"

busybox_sum=$(sha256sum "$busybox" | cut -c1-16)
# The kernel folder's name already carries its own key (and so its modules').
key=$(rig_hash "$rig_dir/init.sh" "busybox=$busybox_sum" "$config" "$(basename "$kernel_dir")" "newc+gzip;v1")
out="$rig_cache/initrd-$config-$key.cpio.gz"
if [ -f "$out" ]; then echo "$out"; exit 0; fi

tmp=$(rig_tmpdir "initrd-$config")
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
mkdir -p "$root"/{bin,dev,proc,sys,etc,host,tmp}
cp "$busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 755 "$rig_dir/init.sh" "$root/init"
echo "$config" >"$root/etc/devlease-rig"
if [ -f "$kernel_dir/modules.order" ]; then
  mkdir -p "$root/modules"
  cp "$kernel_dir"/modules/*.ko "$root/modules/"
  cp "$kernel_dir/modules.order" "$root/modules.order"
fi
# Owner root, sorted names: the archive depends only on its inputs.
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -6 >"$tmp/initrd.cpio.gz"
mv "$tmp/initrd.cpio.gz" "$out"
# Older initrds of this configuration are dead weight now.
rig_prune "initrd-$config-" "$out"
rig_log "initrd ($config): $(du -h "$out" | cut -f1) -> $out"
echo "$out"
