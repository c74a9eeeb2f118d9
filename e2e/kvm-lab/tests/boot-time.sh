#!/bin/sh
# Boot-to-init of the same kernel and initramfs under crius's VMM and under
# QEMU (-M microvm), alternating, three runs each, in this one lab run. The
# guest powers off as soon as its init starts, so each VMM's wall time is
# start, boot, init, power-off; the guest's own uptime at init is shown too.
#
# The check: both get the same kernel command line. QEMU is also run with
# the flags that stop its guest probing the legacy keyboard controller and
# RTC microvm emulates (about 4 s otherwise), reported for comparison.
. /lab/tests/lib.sh
CMD="$LAB_CMDLINE lab=timing"
QEMU_FLAGS="i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd i8042.nokbd initcall_blacklist=cmos_init"
run_crius() {
    crius vm run --kernel /lab/vmlinuz --initrd /lab/guest.cpio --cmdline "$CMD" --mem 256 --timeout 120 >/tmp/out 2>&1
}
run_qemu() {
    qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 1 -bios /usr/share/seabios/bios-microvm.bin \
        -kernel /lab/vmlinuz -initrd /lab/guest.cpio -append "$CMD$1" \
        -nographic -nodefaults -no-user-config -serial stdio -no-reboot >/tmp/out 2>&1
}
run_qemu_tuned() { run_qemu " $QEMU_FLAGS"; }
for round in 1 2 3; do
    for vmm in crius qemu qemu_tuned; do
        t0=$(uptime_s)
        "run_$vmm"
        wall=$(elapsed "$t0")
        init=$(sed -n 's/.*LAB: init reached at \([0-9.]*\) s.*/\1/p' /tmp/out | tr -d '\r')
        echo "$vmm round $round: ${wall} s wall, guest init at ${init:-?} s"
        echo "$wall" >>/tmp/$vmm.walls
        [ -n "$init" ] || { echo "FAIL: $vmm did not reach init"; tail -5 /tmp/out; failures=$((failures + 1)); }
    done
done
median() { sort -n "$1" | sed -n 2p; }
c=$(median /tmp/crius.walls)
q=$(median /tmp/qemu.walls)
t=$(median /tmp/qemu_tuned.walls)
ratio=$(awk -v c="$c" -v q="$q" 'BEGIN {printf "%.2f", c / q}')
tuned=$(awk -v c="$c" -v q="$t" 'BEGIN {printf "%.2f", c / q}')
echo "median boot-to-init-and-off: crius $c s, qemu microvm $q s: ratio crius/qemu $ratio (goal <= 1.0)"
echo "qemu microvm with its legacy-probe flags: $t s: ratio crius/qemu $tuned"
check "crius boots no slower than QEMU microvm (same command line)" awk -v r="$ratio" 'BEGIN {exit !(r <= 1.0)}'
finish
