#!/bin/busybox sh
# L1's /init: a minimal Linux host with a real /dev/kvm (kvm_amd, nested
# paging) that runs one lab test and sends its output back on ttyS1.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /run && mount -t tmpfs tmpfs /run
while read -r m; do
    case $m in */kvm-amd.ko) insmod "$m" npt=1 ;; *) insmod "$m" ;; esac
done </lab-modules
ip link set lo up
test=$(sed -n 's/.*lab\.test=\([a-z0-9-]*\).*/\1/p' /proc/cmdline)
exec 3>/dev/ttyS1
{
    echo "== L1 $(uname -r), /dev/kvm: $(ls /dev/kvm 2>&1), kvm_amd npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
    if [ -f "/lab/tests/$test.sh" ]; then
        sh "/lab/tests/$test.sh" 2>&1
    else
        echo "LAB RESULT: FAIL (no test named '$test')"
    fi
} >&3
sync
poweroff -f
