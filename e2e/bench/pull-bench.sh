#!/usr/bin/env bash
# Image pull benchmark: crius and containerd side by side, in one run.
#
#   e2e/bench/pull-bench.sh CRIUS_ENDPOINT CONTAINERD_ENDPOINT [ROUNDS]
#
# Needs a local registry on 127.0.0.1:5000 serving the harness images and
# both runtimes mirroring gcr.io and registry.k8s.io to it (the harness in
# ../shared/harness sets that up: registry.sh, build-images.py,
# containerd-peer.sh). Pulls, alternating runtimes each round, after removing
# the image: a one-layer image (busybox, 3 MB) and a ~200 MB four-layer image
# built by make-bench-image.py. Prints per-runtime medians and the effective
# pull throughput. crictl: $CRICTL (default /tmp/bin/crictl).
set -euo pipefail
CRIUS=${1:?crius endpoint}
CONTAINERD=${2:?containerd endpoint}
ROUNDS=${3:-5}
CRICTL=${CRICTL:-/tmp/bin/crictl}
SMALL=registry.k8s.io/e2e-test-images/busybox:1.29-2
BIG=gcr.io/bench/big:1
BIG_MB=210

python3 "$(dirname "$0")/make-bench-image.py"

ms_now() { date +%s%N | cut -c1-13; }
pull_ms() { # endpoint image -> milliseconds of one cold pull
    local ep=$1 image=$2 start end
    $CRICTL --runtime-endpoint "$ep" --image-endpoint "$ep" rmi "$image" >/dev/null 2>&1 || true
    sync
    start=$(ms_now)
    $CRICTL --runtime-endpoint "$ep" --image-endpoint "$ep" pull "$image" >/dev/null
    end=$(ms_now)
    echo $((end - start))
}
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

declare -A samples
for image in "$SMALL" "$BIG"; do
    for _ in $(seq 1 "$ROUNDS"); do
        for name in crius containerd; do
            ep=$CRIUS; [[ $name == containerd ]] && ep=$CONTAINERD
            samples[$name,$image]+="$(pull_ms "$ep" "$image") "
        done
    done
done

printf '\n%-40s %-11s %10s %12s   %s\n' image runtime median_ms MB_per_s samples_ms
for image in "$SMALL" "$BIG"; do
    for name in crius containerd; do
        med=$(tr ' ' '\n' <<<"${samples[$name,$image]}" | grep . | median)
        rate=-
        [[ $image == "$BIG" ]] && rate=$(awk -v mb=$BIG_MB -v ms="$med" 'BEGIN { printf "%.0f", mb / (ms / 1000) }')
        printf '%-40s %-11s %10s %12s   %s\n' "$image" "$name" "$med" "$rate" "${samples[$name,$image]}"
    done
done
