#!/usr/bin/env bash
# Boots the lab's L1 under QEMU's software CPU with AMD SVM (TCG: it never
# touches the host's /dev/kvm), runs one test inside it, and prints what the
# test reported: its output, then the logs it sent back.
#
#   e2e/kvm-lab/run.sh OUT_DIR TEST [TIMEOUT_SECONDS]
#
# TEST is a script in e2e/kvm-lab/tests (without .sh). L1 sends results on
# its second serial port (OUT_DIR/TEST.result); its console goes to
# OUT_DIR/TEST.console. Exit code 0 when the test printed "LAB RESULT: PASS".
set -euo pipefail
OUT=$1 TEST=$2 TIMEOUT=${3:-600}
RESULT=$OUT/$TEST.result CONSOLE=$OUT/$TEST.console
rm -f "$RESULT" "$CONSOLE"
start=$(date +%s.%N)
# q35 with one emulated EPYC (SVM, nested paging); nothing but two serial ports.
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu EPYC,+svm -smp 1 -m 2048 -machine q35 \
    -kernel "$OUT/vmlinuz" -initrd "$OUT/l1.cpio" \
    -append "console=ttyS0 quiet panic=-1 lab.test=$TEST${LAB_VERBOSE:+ lab.verbose=1}" \
    -nographic -no-reboot -nodefaults -no-user-config \
    -serial "file:$CONSOLE" -serial "file:$RESULT" </dev/null || true
end=$(date +%s.%N)
echo "== lab test $TEST: L1 ran $(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}') s"
if [[ -s $RESULT ]]; then
    tr -d '\r' <"$RESULT"
else
    echo "== no result from L1; its console:"
    tail -50 "$CONSOLE"
fi
grep -q "^LAB RESULT: PASS" "$RESULT" 2>/dev/null
