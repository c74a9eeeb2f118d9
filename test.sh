#!/usr/bin/env bash
# The whole crius test suite: formatting, lints, unit tests and the e2e tests
# against the real binary. Run as root on Debian 12; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"

# shellcheck source=.ci/setup-host
source .ci/setup-host
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== build crius, its guest agent and crius-lab (the e2e tests run these binaries)"
cargo build --locked -p crius -p crius-guest -p crius-e2e --bin crius --bin crius-guest --bin crius-lab
echo "== build the guest agent as a static binary (what a VM runs)"
cargo build --locked -p crius-guest --target x86_64-unknown-linux-musl
log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
# A test that cannot run here (not root, a tool missing) appends "<test>: <why>"
# to this file (crius-testkit); with TEST_REQUIRE set, as CI sets it, it fails.
export CRIUS_TEST_SKIP_LOG=$skips
status=0
# The Helm chart through Helm's own engine: lint, render with the default
# values and with kvm on, validate against the Kubernetes schemas, and the
# plain manifests in deploy/manifests/ equal to what the chart renders.
echo "== helm chart (deploy/helm/chart.py check)"
chart_passed=0 chart_failed=0 chart_skipped=0
if "${CHART_PYTHON:-python3}" -c 'import helm_sdkpy, kubernetes_validate, yaml' >/dev/null 2>&1; then
    if "$CHART_PYTHON" deploy/helm/chart.py check; then chart_passed=1; else chart_failed=1 status=1; fi
else
    why="needs helm-sdkpy, kubernetes-validate and PyYAML in ${CHART_PYTHON:-python3} (.ci/setup-host installs them)"
    case ",${TEST_REQUIRE:-}," in
        *,all,* | *,tools,*) echo "chart check: $why, and TEST_REQUIRE=$TEST_REQUIRE says it must run" >&2; chart_failed=1 status=1 ;;
        *) echo "SKIP chart check: $why"; chart_skipped=1 ;;
    esac
fi
echo "== cargo test (unit + e2e)"
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary. The harness
# counts a test that skipped itself as passed: those move to skipped, with the
# #[ignore]d ones.
recorded=$(wc -l <"$skips")
awk -v recorded="$recorded" -v cp="$chart_passed" -v cf="$chart_failed" -v cs="$chart_skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p - recorded + cp, f + cf, s + recorded + cs }' "$log"
if ((chart_skipped)); then
    echo "skipped: the helm chart check (no helm-sdkpy; see above)"
fi
if ((recorded)); then
    echo "skipped, since this host lacks what they need (TEST_REQUIRE=all makes them fail):"
    sed 's/^/  /' "$skips"
fi
# The tests must leave nothing on the host: no process or mount of a test crius.
leaks=$( { pgrep -af 'crius-e2e-' || true; grep -o ' /tmp/crius-e2e-[^ ]*' /proc/self/mountinfo || true; } | head -20)
if [[ -n $leaks ]]; then
    echo "leak check: the tests left these behind:"
    echo "$leaks"
    status=1
else
    echo "leak check: nothing left by the tests"
fi
exit "$status"
