#!/bin/sh
# crius's VMM (`crius internal vmm`) boots the Debian cloud kernel with the
# lab's test initramfs: the guest reaches userspace, talks to the host over
# virtio-vsock both ways, reads a file the host shares (virtio-blk, erofs),
# pings the L1 side of a tap through virtio-net and powers off cleanly.
. /lab/tests/lib.sh
D=/tmp/vm
mkdir -p $D
cat >$D/config.json <<JSON
{"vm": {"kernel": "/lab/vmlinuz", "initrd": "/lab/guest.cpio", "cmdline": "$LAB_CMDLINE lab=full",
        "mem_mib": 256, "vcpus": 1,
        "devices": {"vsock": {"guest_cid": 3, "uds_path": "$D/vsock.sock"},
                    "disks": [{"path": "/lab/shared.img", "read_only": true}],
                    "net": {"tap": "tap0"}, "rng": true}}}
JSON
crius-lab uds-echo-server $D/vsock.sock_1025 >/tmp/host-server.out 2>&1 &
t0=$(uptime_s)
crius internal vmm $D >$D/vmm.out 2>&1 &
vmm=$!
i=0
while [ ! -S $D/control.sock ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -S $D/control.sock ] || give_up "the VMM did not come up" $D/vmm.out
ip addr add 10.0.2.1/24 dev tap0
ip link set tap0 up
wait_for $D/console.log "LAB: ready" 150 || give_up "the guest did not reach its test init" $D/console.log $D/vmm.out
echo "ok: the guest reached userspace and its test init"
echo "boot to guest init: $(elapsed "$t0") s in L1 (guest uptime at init: $(sed -n 's/.*LAB: init reached at \([0-9.]*\) s.*/\1/p' $D/console.log) s)"
status=$(crius-lab ctl $D status)
echo "vmm status: $status"
echo "vmm PSS by mapping (KiB; [anon] is heap, stacks and guest RAM):"
awk '/^[0-9a-f]+-[0-9a-f]+ / {m = ($6 == "" ? "[anon]" : $6)} /^Pss:/ {pss[m] += $2} END {for (m in pss) if (pss[m] >= 64) printf "  %8d %s\n", pss[m], m}' /proc/$vmm/smaps | sort -rn
reply=$(crius-lab uds-connect $D/vsock.sock 1024 hello-from-host 2>&1)
echo "host to guest over vsock: $reply"
check "vsock host to guest" test "$reply" = "guest got: hello-from-host"
check "the guest finished its checks" wait_for $D/console.log "LAB: done" 120
i=0
while kill -0 $vmm 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
check "the VMM exited after the guest powered off" test ! -d /proc/$vmm
echo "exit record: $(cat $D/exit.json 2>&1)"
check "clean shutdown (guest power-off through ACPI)" grep -q '"reason":"guest powered off","clean":true' $D/exit.json
check "vsock guest to host" has $D/console.log "LAB: guest to host: host got: hello-from-guest"
check "the host saw the guest's message" has /tmp/host-server.out "host got: hello-from-guest"
check "the guest read the shared file" has $D/console.log "LAB: shared file: shared by the lab host"
check "ping through virtio-net and the tap" has $D/console.log "LAB: ping: 3 packets transmitted, 3 packets received"
check "virtio-rng is the guest's hwrng" has $D/console.log "LAB: rng: virtio_rng.0, 16 bytes"
vmm_kib=$(echo "$status" | sed -n 's/.*"vmm_pss_kib":\([0-9]*\).*/\1/p')
echo "VMM memory: $vmm_kib KiB PSS of its own (guest RAM left out): $(echo "$status" | sed -n 's/.*"pss_kib":\([0-9]*\),"guest_pss_kib":\([0-9]*\).*/\1 KiB in all, \2 KiB guest RAM/p')"
echo "---- guest console"
cat $D/console.log
echo "---- vmm output"
cat $D/vmm.out
finish
