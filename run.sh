#!/usr/bin/env bash
# Builds crius (release) and starts it with its embedded defaults:
# socket /run/crius/crius.sock, state under /var/lib/crius, runtime state
# under /run/crius. Run as root on Debian 12; installs what it needs.
#
#   ./run.sh               build, install /usr/local/bin/crius, start in the background
#   ./run.sh --foreground  the same, but crius stays in the foreground
#   ./run.sh --stop        stop the crius this script started
#
# Extra arguments after the mode go to crius (for example --log-level debug).
set -euo pipefail
cd "$(dirname "$0")"

PIDFILE=/run/crius.pid
LOGFILE=/var/log/crius.log
SOCKET=/run/crius/crius.sock

stop_previous() {
    if [[ -f $PIDFILE ]] && pid=$(cat "$PIDFILE") && kill -0 "$pid" 2>/dev/null \
        && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */crius* ]]; then
        echo "stopping crius (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDFILE"
}

mode=background
case "${1:-}" in
    --foreground) mode=foreground; shift ;;
    --stop) stop_previous; exit 0 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
    echo "run.sh: crius runs pods and needs root" >&2
    exit 1
fi

# shellcheck source=.ci/setup-host
source .ci/setup-host
cargo build --locked --release -p crius
install -m 0755 target/release/crius /usr/local/bin/crius
stop_previous

if [[ $mode == foreground ]]; then
    exec /usr/local/bin/crius "$@"
fi

nohup /usr/local/bin/crius "$@" >>"$LOGFILE" 2>&1 </dev/null &
echo $! >"$PIDFILE"
for _ in $(seq 1 100); do
    [[ -S $SOCKET ]] && break
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo "crius failed to start:" >&2; tail -n 20 "$LOGFILE" >&2; exit 1; }
    sleep 0.1
done
echo "crius $(/usr/local/bin/crius --version | cut -d' ' -f2) is serving CRI on unix://$SOCKET (pid $(cat "$PIDFILE"), log $LOGFILE)"
echo "try: crictl --runtime-endpoint unix://$SOCKET version"
