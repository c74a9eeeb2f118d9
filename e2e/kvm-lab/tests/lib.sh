# Helpers for the lab tests (sourced; busybox sh in L1).
LAB_CMDLINE="console=ttyS0 quiet panic=-1 reboot=t pci=off io_delay=none"
# lab.verbose=1 on L1's command line (LAB_VERBOSE=1 run.sh ...): the guest's whole boot log.
grep -q "lab.verbose=1" /proc/cmdline && LAB_CMDLINE=$(echo "$LAB_CMDLINE" | sed 's/ quiet//')
failures=0
uptime_s() { cut -d' ' -f1 /proc/uptime; }
elapsed() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN {printf "%.2f", b - a}'; }
# check NAME COMMAND...: runs COMMAND, reports ok/FAIL.
check() {
    name=$1
    shift
    if "$@"; then echo "ok: $name"; else echo "FAIL: $name"; failures=$((failures + 1)); fi
}
# wait_for FILE TEXT SECONDS
wait_for() {
    i=0
    while [ "$i" -lt "$(($3 * 10))" ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}
has() { grep -q "$2" "$1"; }
# give_up WHY FILES...: reports, shows the logs, ends the test.
give_up() {
    echo "FAIL: $1"
    shift
    for f in "$@"; do echo "---- $f"; cat "$f"; done
    failures=$((failures + 1))
    finish
    exit 1
}
finish() {
    if [ "$failures" = 0 ]; then echo "LAB RESULT: PASS"; else echo "LAB RESULT: FAIL ($failures failed)"; fi
}
