#!/usr/bin/env bash
# Pod network soak: N RunPodSandbox / RemovePodSandbox cycles with a hostPort,
# SIGKILL of crius halfway (then a restart), and a check that no veth, IP
# allocation or NAT rule is left. Needs root, crictl and a built crius.
#
#   e2e/bench/network-soak.sh [CYCLES]        (default 200)
# Environment: CRIUS (binary, default target/release/crius), CRICTL (default
# crictl on PATH), WORK (scratch dir, default a new temp dir), BRIDGE
# (default crsoak0), SUBNET (default 10.199.0.0/16).
set -euo pipefail

CYCLES=${1:-200}
CRIUS=${CRIUS:-$(dirname "$0")/../../target/release/crius}
CRICTL=${CRICTL:-crictl}
WORK=${WORK:-$(mktemp -d /tmp/crius-soak.XXXXXX)}
BRIDGE=${BRIDGE:-crsoak0}
SUBNET=${SUBNET:-10.199.0.0/16}
SOCK=$WORK/crius.sock

cat >"$WORK/crius.toml" <<TOML
[network]
bridge = "$BRIDGE"
subnets = ["$SUBNET"]
TOML
cat >"$WORK/pod.json" <<JSON
{"metadata": {"name": "soak", "namespace": "soak", "uid": "soak-uid", "attempt": 0},
 "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 18999}]}
JSON

start_crius() {
    "$CRIUS" --config "$WORK/crius.toml" --socket "$SOCK" --root "$WORK/root" --run-root "$WORK/run" \
        >>"$WORK/crius.log" 2>&1 &
    CRIUS_PID=$!
    for _ in $(seq 100); do
        "$CRICTL" -r "unix://$SOCK" version >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "crius did not start; see $WORK/crius.log" >&2
    exit 1
}

cri() { "$CRICTL" -r "unix://$SOCK" "$@"; }

start_crius
half=$((CYCLES / 2))
start=$(date +%s.%N)
for i in $(seq "$CYCLES"); do
    sed -i "s/\"attempt\": [0-9]*/\"attempt\": $i/" "$WORK/pod.json"
    id=$(cri runp "$WORK/pod.json")
    if ((i == half)); then
        # Killed with the pod up: the next crius must keep it and clean it on removal.
        kill -9 "$CRIUS_PID"
        wait "$CRIUS_PID" 2>/dev/null || true
        start_crius
    fi
    cri rmp -f "$id" >/dev/null
done
end=$(date +%s.%N)
kill -TERM "$CRIUS_PID"
wait "$CRIUS_PID" 2>/dev/null || true

leaks=0
report() { echo "LEAK: $*"; leaks=$((leaks + 1)); }
while read -r link; do report "veth $link on $BRIDGE"; done < <(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1)
while read -r f; do report "ip allocation $f"; done < <(find "$WORK/root/network" -type f ! -name last_reserved)
nft list table inet "$BRIDGE" 2>/dev/null | grep -q "dnat ip to" && report "hostPort rule in table inet $BRIDGE"
ip route | grep -v "dev $BRIDGE" | grep -q "${SUBNET%.*}" && report "route to $SUBNET outside the bridge"
ls "$WORK/run/pods" 2>/dev/null | grep -q . && report "pod directories in $WORK/run/pods"

printf '%d cycles (SIGKILL of crius at cycle %d) in %.1f s, %d leaks\n' "$CYCLES" "$half" "$(awk "BEGIN{print $end - $start}")" "$leaks"
nft delete table inet "$BRIDGE" 2>/dev/null || true
ip link del "$BRIDGE" 2>/dev/null || true
exit $((leaks > 0))
