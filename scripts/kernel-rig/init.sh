#!/bin/busybox sh
# /init of the guest initramfs (busybox). Brings up just enough of a system
# to run the host's node on the project inside the guest:
#   1. proc/sys/devtmpfs, the modules listed in /modules.order (if any);
#   2. QEMU's edu device (1234:11e8) bound to vfio-pci (not in the vfio-user
#      guest of test/vm, which stays up afterwards for the host's QMP);
#   3. the host's root over 9p (read-only) at /host, with proc/sys/dev bound
#      into it and a tmpfs on /tmp (tests make sockets and memfds there);
#   4. `chroot /host /bin/sh run.sh` from the run folder the host named with
#      devlease_run=<folder> on the kernel command line (files: project, run.sh).
# Output goes to the console between markers that test/kernel/run-guest.mjs
# looks for; then the kernel log, then power off. Kernel messages are kept
# off the console (printk level 1) so they cannot interleave with the
# guest's output: they come afterwards, in the dmesg section.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
echo 1 >/proc/sys/kernel/printk
mount -t sysfs sys /sys
# A hang must say where (test/kernel/run-guest.mjs asks by SysRq at its timeout): every SysRq function, and
# tasks stuck in D state reported after 60 s (on kernels with the detector).
[ -e /proc/sys/kernel/sysrq ] && echo 1 >/proc/sys/kernel/sysrq
[ -e /proc/sys/kernel/hung_task_timeout_secs ] && echo 60 >/proc/sys/kernel/hung_task_timeout_secs
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1

rig=$(cat /etc/devlease-rig)
say() { echo "devlease-init: $*"; }
# A failure of the rig itself (not of the guest's script): one marker line the
# host reports, the kernel log for context, then power off.
die() {
  echo "=== DEVLEASE-RIG-ERROR $* ==="
  dmesg | tail -n 40
  poweroff -f
}

# Progress lines go to the console: if the guest hangs, the host's boot log
# shows how far it got.
say "config $rig, kernel $(uname -r)"
if [ -f /modules.order ]; then
  while read -r m; do insmod "/modules/$m" || die "insmod $m failed"; done </modules.order
  say "modules loaded"
fi

# Binds the device vendor:device (if QEMU has one) to vfio-pci; sets $bound to its address (empty: none).
bind_if_present() {
  bound=""
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] || continue
    # A virtio device is virtio-pci's from boot: let it go first.
    [ -e "$d/driver" ] && echo "${d##*/}" >"$d/driver/unbind"
    echo vfio-pci >"$d/driver_override"
    echo "${d##*/}" >/sys/bus/pci/drivers_probe
    driver=$(readlink "$d/driver")
    [ "${driver##*/}" = vfio-pci ] || die "$3 ${d##*/} not bound to vfio-pci (driver: ${driver:-none})"
    say "$3 ${d##*/} bound to vfio-pci"
    bound="${d##*/}"
  done
}

bdf=""
# The vfio-user guest (test/vm) has no edu: its device is QEMU's vfio-user-pci.
[ "$rig" = vfio-user ] || for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then bdf="${d##*/}"; fi
done
if [ "$rig" != vfio-user ]; then
  [ -n "$bdf" ] || die "no edu device (1234:11e8) on the PCI bus: is QEMU started with -device edu?"
  echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
  echo "$bdf" >/sys/bus/pci/drivers_probe
  driver=$(readlink "/sys/bus/pci/devices/$bdf/driver")
  [ "${driver##*/}" = vfio-pci ] || die "edu $bdf not bound to vfio-pci (driver: ${driver:-none})"
  say "edu $bdf bound to vfio-pci"
  # Bound to vfio-pci too when QEMU has them: ivshmem-plain (1af4:1110; its BAR2 is 1 MiB of a host file), for
  # the audited-slice tests (test/kernel/guest/ivshmem.test.ts); a virtio-net (1af4:1041) with AER behind a PCIe
  # root port, for the error tests (test/kernel/guest/aer.test.ts). The 9p share is virtio too, but 1af4:1009.
  bind_if_present 0x1af4 0x1110 ivshmem; ivshmem_bdf=$bound
  bind_if_present 0x1af4 0x1041 virtio-net; aer_bdf=$bound
fi

run=""
for arg in $(cat /proc/cmdline); do
  case "$arg" in devlease_run=*) run="${arg#devlease_run=}" ;; esac
done
[ -n "$run" ] || die "no devlease_run=<folder> on the kernel command line"

mkdir -p /host /spec
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host ||
  die "mounting the host root over 9p failed"
say "host root mounted over 9p"
# The run folder lives in the host's /tmp, which the tmpfs below hides: copy it first.
cp "/host$run/project" "/host$run/run.sh" /spec/ || die "cannot read the run folder $run through 9p"
project=$(cat /spec/project)

# The host's /tmp stays reachable at /hosttmp so that a project living under
# /tmp (a CI clone, say) can be bound back in on top of the guest's tmpfs.
mkdir -p /hosttmp
mount -o bind /host/tmp /hosttmp
mount -t tmpfs -o mode=1777 tmp /host/tmp
case "$project" in
  /tmp/*) mkdir -p "/host$project" && mount -o bind "/hosttmp${project#/tmp}" "/host$project" ;;
esac
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t proc proc /host/proc
mount -o rbind /sys /host/sys
mount -o rbind /dev /host/dev
[ -d /host/run ] && mount -t tmpfs -o mode=755 run /host/run
cp /spec/run.sh /host/tmp/.devlease-run.sh
export DEVLEASE_KERNEL_GUEST="$rig" DEVLEASE_EDU_BDF="$bdf" DEVLEASE_IVSHMEM_BDF="${ivshmem_bdf:-}" \
  DEVLEASE_AER_BDF="${aer_bdf:-}"

say "running $run/run.sh in $project"
echo "=== DEVLEASE-GUEST-BEGIN ==="
chroot /host /bin/sh /tmp/.devlease-run.sh
status=$?
echo "=== DEVLEASE-GUEST-END status=$status ==="
echo "=== DEVLEASE-DMESG-BEGIN ==="
dmesg
echo "=== DEVLEASE-DMESG-END ==="
# The vfio-user guest stays up: the host drives the machine over QMP
# (system_reset, which boots this init again; quit).
if [ "$rig" = vfio-user ]; then
  say "waiting for the host"
  while :; do sleep 3600; done
fi
poweroff -f
