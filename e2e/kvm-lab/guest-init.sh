#!/bin/busybox sh
# The guest's /init (the lab's test initramfs, in place of crius's guest
# agent). lab=timing: report the time to init and power off at once.
# lab=full: load the modules, prove vsock both ways, read the shared file
# from the block device, ping the lab host through virtio-net, power off.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
# Report through the kernel log, which the console prints (at error level,
# so that `quiet` keeps it).
say() { echo "<3>$*" >/dev/kmsg; }
say "LAB: init reached at $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
/bin/busybox --install -s /bin
off() {
    poweroff -f
    sleep 2
    reboot -f
}
case $(cat /proc/cmdline) in *lab=timing*) off ;; esac
mount -t sysfs sysfs /sys
while read -r m; do insmod "$m" || say "LAB: insmod $m failed"; done </etc/crius-modules
say "LAB: interrupts: $(grep -E 'ttyS|virtio' /proc/interrupts | tr -s ' ' | tr '\n' ';')"
say "LAB: devices: $(ls /sys/bus/virtio/devices | tr '\n' ' ')"
crius-lab vsock-echo-server 1024 >/tmp/server.out 2>&1 &
server=$!
sleep 0.2
say "LAB: ready"
say "LAB: guest to host: $(crius-lab vsock-send 2 1025 hello-from-guest 2>&1)"
if mount -t erofs -o ro /dev/vda /mnt; then
    say "LAB: shared file: $(cat /mnt/shared.txt)"
else
    say "LAB: shared file: mount /dev/vda failed"
fi
say "LAB: rng: $(cat /sys/class/misc/hw_random/rng_current 2>&1), $(head -c 16 /dev/hwrng | wc -c) bytes"
ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0
if ping -c 3 -W 3 10.0.2.1 >/tmp/ping.out 2>&1; then
    say "LAB: ping: $(grep 'packets transmitted' /tmp/ping.out)"
else
    say "LAB: ping failed: $(tr '\n' ' ' </tmp/ping.out)"
fi
# The host connects to port 1024 once it has seen "ready".
for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
say "LAB: host to guest: $(cat /tmp/server.out | tail -1)"
say "LAB: done"
off
