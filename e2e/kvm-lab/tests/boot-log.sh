#!/bin/sh
# Diagnostics: the same guest's whole boot log under crius and under QEMU
# -M microvm (the kernel's timestamps side by side show where time goes).
. /lab/tests/lib.sh
CMD="$(echo "$LAB_CMDLINE" | sed 's/ quiet//') lab=timing"
echo "---- crius"
crius vm run --kernel /lab/vmlinuz --initrd /lab/guest.cpio --cmdline "$CMD" --mem 256 --timeout 120 2>&1
echo "---- qemu"
qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -smp 1 -bios /usr/share/seabios/bios-microvm.bin \
    -kernel /lab/vmlinuz -initrd /lab/guest.cpio \
    -append "$CMD i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd i8042.nokbd initcall_blacklist=cmos_init" \
    -nographic -nodefaults -no-user-config -serial stdio -no-reboot 2>&1
echo "LAB RESULT: PASS"
