#!/bin/sh
# crius-installer: the entrypoint of the crius installer image. It installs
# crius on the node whose root file system is mounted at $CRIUS_HOST_ROOT,
# starts it and labels the node, or undoes exactly that.
#
#   installer.sh install            (the default) binary, config, unit; start; wait; label
#   installer.sh uninstall          stop crius and remove what install wrote, nothing else
#   installer.sh request-uninstall  (Helm pre-delete hook) switch the DaemonSet to
#                                   uninstall and wait until every node has done it
#
# POSIX sh as busybox runs it; it uses only what the image carries: busybox,
# the payload under /opt/crius, and kubectl for node labels. Settings come
# from the environment (the chart sets them from its values):
#
#   CRIUS_HOST_ROOT   the host's / (default /host)
#   CRIUS_CONFIG      the crius.toml to install (default /etc/crius-installer/crius.toml)
#   CRIUS_START       auto | systemd | direct | none (default auto): how crius is started.
#                     auto is systemd where the host runs systemd, else direct. direct
#                     starts crius in the host's namespaces without a service manager.
#                     none installs everything (the unit too) and starts nothing: for
#                     nodes whose images start crius themselves, and for tests on a
#                     scratch host root
#   CRIUS_WAIT_SECS   how long a started crius may take to answer (default 60)
#   CRIUS_LABEL_NODE  true | false (default true): label $NODE_NAME when in a cluster
#   CRIUS_STAY        true | false (default false): after the action, stay running until
#                     SIGTERM (a DaemonSet's pod), then exit 0 without uninstalling
#   NODE_NAME, POD_NAMESPACE, CRIUS_DAEMONSET   set by the chart (downward API, its name)
#
# What install wrote is recorded in <host>/var/lib/crius-installer/installed, one
# line each: "f <sha256> <path>" (a file), "d <path>" (a directory it created),
# "s <mode>" (how it started crius). uninstall removes exactly those, and a
# file only while it still has the content install wrote.
set -eu

HOST_ROOT=${CRIUS_HOST_ROOT:-/host}
CONFIG_SRC=${CRIUS_CONFIG:-/etc/crius-installer/crius.toml}
START=${CRIUS_START:-auto}
WAIT_SECS=${CRIUS_WAIT_SECS:-60}
LABEL_NODE=${CRIUS_LABEL_NODE:-true}
STAY=${CRIUS_STAY:-false}
ACTION=${1:-${CRIUS_ACTION:-install}}

PAYLOAD=/opt/crius
BIN=/usr/local/bin/crius
CONF=/etc/crius/crius.toml
UNIT=/etc/systemd/system/crius.service
RECORD_DIR=/var/lib/crius-installer
RECORD=$RECORD_DIR/installed
PIDFILE=/run/crius-installer.pid
LOGFILE=/var/log/crius.log
LABEL_RUNTIME=crius.io/runtime
LABEL_KVM=crius.io/kvm
READY_FILE=/tmp/crius-installer.ready
# kubectl keeps a cache under $HOME; the uninstall hook runs as nobody.
[ -w "${HOME:-/}" ] || export HOME=/tmp

log() { echo "crius-installer: $*"; }
die() {
    echo "crius-installer: error: $*" >&2
    exit 1
}

# The image's crius, with the glibc it was built against (the image has no
# libc of its own): only to check the config before anything is installed.
image_crius() {
    "$PAYLOAD/lib/ld-linux-x86-64.so.2" --library-path "$PAYLOAD/lib" "$PAYLOAD/bin/crius" "$@"
}

sha() {
    if [ -f "$1" ]; then sha256sum "$1" | cut -d' ' -f1; fi
}

# Whether this container shares the host's PID namespace (hostPID): then PID
# 1 is the host's init, in another mount namespace than ours.
host_pid_ns() {
    [ "$(readlink /proc/1/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ]
}

# Runs a command on the host: in its mount namespace when we share its PID
# namespace, else chrooted into the host root.
host_run() {
    if host_pid_ns; then
        nsenter -t 1 -m -- "$@"
    else
        chroot "$HOST_ROOT" "$@"
    fi
}

host_has_systemd() {
    host_pid_ns && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d "$HOST_ROOT/run/systemd/system" ]
}

# The start mode for "auto", checked against what the host offers.
resolve_start() {
    case "$START" in
        auto)
            if host_has_systemd; then
                echo systemd
            elif host_pid_ns; then
                echo direct
            else
                die "no systemd on the host and not in its PID namespace (hostPID): cannot start crius; set start to none"
            fi
            ;;
        systemd)
            host_has_systemd || die "start is systemd, but systemd is not PID 1 of the host (or hostPID is off)"
            echo systemd
            ;;
        direct)
            host_pid_ns || die "start is direct, which needs the host's PID namespace (hostPID)"
            echo direct
            ;;
        none) echo none ;;
        *) die "CRIUS_START must be auto, systemd, direct or none, not '$START'" ;;
    esac
}

# --- the record -----------------------------------------------------------

# The recorded sha256 of a path, empty when install did not write it.
recorded_sha() {
    [ -f "$HOST_ROOT$RECORD" ] || return 0
    awk -v p="$1" '$1 == "f" && $3 == p { print $2 }' "$HOST_ROOT$RECORD"
}

recorded_dir() {
    [ -f "$HOST_ROOT$RECORD" ] && awk -v p="$1" '$1 == "d" && $2 == p { found = 1 } END { exit !found }' "$HOST_ROOT$RECORD"
}

recorded_start() {
    [ -f "$HOST_ROOT$RECORD" ] || return 0
    awk '$1 == "s" { print $2 }' "$HOST_ROOT$RECORD"
}

NEW_RECORD=$(mktemp)
trap 'rm -f "$NEW_RECORD"' EXIT

# Creates the directories of a host path that do not exist, parents first,
# and records them (and those an earlier install created) for uninstall.
make_dirs() {
    m_dir=
    for m_part in $(echo "$1" | tr '/' ' '); do
        m_dir=$m_dir/$m_part
        if grep -qx "d $m_dir" "$NEW_RECORD"; then
            continue
        elif [ ! -d "$HOST_ROOT$m_dir" ]; then
            mkdir "$HOST_ROOT$m_dir"
            echo "d $m_dir" >>"$NEW_RECORD"
        elif recorded_dir "$m_dir"; then
            echo "d $m_dir" >>"$NEW_RECORD"
        fi
    done
}

CHANGED=
# Installs file $1 as host path $2 with mode $3, unless it is already there.
place() {
    p_src=$1 p_dest=$2 p_perm=$3
    make_dirs "$(dirname "$p_dest")"
    want=$(sha "$p_src")
    have=$(sha "$HOST_ROOT$p_dest")
    ours=$(recorded_sha "$p_dest")
    if [ "$have" = "$want" ]; then
        log "unchanged $p_dest"
        # An identical file that install did not write stays someone else's.
        if [ -n "$ours" ]; then echo "f $want $p_dest" >>"$NEW_RECORD"; fi
        return 0
    fi
    if [ -e "$HOST_ROOT$p_dest" ] && [ -z "$ours" ]; then
        die "$p_dest exists and crius-installer did not install it; remove it or install crius one way only"
    fi
    cp "$p_src" "$HOST_ROOT$p_dest.crius-installer.new"
    chmod "$p_perm" "$HOST_ROOT$p_dest.crius-installer.new"
    mv -f "$HOST_ROOT$p_dest.crius-installer.new" "$HOST_ROOT$p_dest"
    echo "f $want $p_dest" >>"$NEW_RECORD"
    CHANGED="$CHANGED $p_dest"
    log "installed $p_dest"
}

save_record() {
    make_dirs "$RECORD_DIR"
    if [ -f "$HOST_ROOT$RECORD" ] && cmp -s "$NEW_RECORD" "$HOST_ROOT$RECORD"; then
        return 0
    fi
    cp "$NEW_RECORD" "$HOST_ROOT$RECORD.new"
    chmod 0644 "$HOST_ROOT$RECORD.new"
    mv -f "$HOST_ROOT$RECORD.new" "$HOST_ROOT$RECORD"
}

# --- labels ---------------------------------------------------------------

in_cluster() {
    [ "$LABEL_NODE" = true ] && [ -n "${NODE_NAME:-}" ] && [ -n "${KUBERNETES_SERVICE_HOST:-}" ]
}

label() {
    kubectl label node "$NODE_NAME" --overwrite "$@" >/dev/null || die "label node $NODE_NAME: $*"
    log "node $NODE_NAME: $*"
}

label_node() {
    if ! in_cluster; then
        log "not labelling a node (no NODE_NAME or not in a cluster)"
        return 0
    fi
    if [ "$1" = none ]; then
        log "start is none: $LABEL_RUNTIME is left unset until crius runs"
    else
        label "$LABEL_RUNTIME=ready"
    fi
    # A privileged container has the host's devices.
    if "$PAYLOAD/bin/kvm-probe" /dev/kvm; then
        label "$LABEL_KVM=true"
    else
        label "$LABEL_KVM-"
    fi
}

# --- starting and stopping ------------------------------------------------

direct_pid() {
    [ -f "$HOST_ROOT$PIDFILE" ] || return 0
    pid=$(cat "$HOST_ROOT$PIDFILE")
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
        "$BIN" | "$BIN (deleted)") echo "$pid" ;;
    esac
}

stop_direct() {
    pid=$(direct_pid)
    [ -n "$pid" ] || return 0
    log "stopping crius (pid $pid)"
    kill -TERM "$pid"
    waited=0
    while kill -0 "$pid" 2>/dev/null; do
        [ "$waited" -lt 600 ] || die "crius (pid $pid) did not stop within 60 s"
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$HOST_ROOT$PIDFILE"
}

start_direct() {
    if [ -n "$(direct_pid)" ]; then
        [ -n "$CHANGED" ] || return 0
        stop_direct
    fi
    # In the host's namespaces, detached from this shell. On cgroup v2 hosts
    # it moves to the host's root cgroup, so that it outlives this pod.
    setsid nsenter -t 1 -m -u -i -n -- "$BIN" </dev/null >>"$HOST_ROOT$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$HOST_ROOT$PIDFILE"
    if nsenter -t 1 -m -- test -f /sys/fs/cgroup/cgroup.controllers; then
        nsenter -t 1 -m -C -- sh -c "echo $pid >/sys/fs/cgroup/cgroup.procs" ||
            log "could not move crius (pid $pid) out of this pod's cgroup: it stops with this pod"
    else
        log "cgroup v1 host: crius (pid $pid) stays in this pod's cgroups and stops with this pod"
    fi
    log "started crius (pid $pid), log $LOGFILE"
}

start_systemd() {
    case " $CHANGED " in *" $UNIT "*) host_run systemctl daemon-reload ;; esac
    if [ -n "$CHANGED" ] && host_run systemctl is-active --quiet crius.service; then
        log "restarting crius.service (containers keep running: KillMode=process)"
        host_run systemctl restart crius.service
    fi
    host_run systemctl enable --now --quiet crius.service
    log "crius.service enabled and active"
}

# --- the actions ----------------------------------------------------------

install() {
    [ -d "$HOST_ROOT" ] || die "host root $HOST_ROOT is not a directory"
    [ -f "$CONFIG_SRC" ] || die "no config at $CONFIG_SRC"
    mode=$(resolve_start)
    # A config this crius refuses stops here, before anything is written.
    # crius checks runtime.cgroup_driver = "systemd" against the host it
    # runs on (/run/systemd/system): let it see the host's answer.
    if [ -d "$HOST_ROOT/run/systemd/system" ]; then mkdir -p /run/systemd/system; fi
    image_crius --config "$CONFIG_SRC" config >/dev/null || die "crius refuses the config $CONFIG_SRC (above)"
    previous=$(recorded_start)
    if [ -n "$previous" ] && [ "$previous" != "$mode" ]; then
        die "crius was installed with start $previous, now $mode: uninstall first"
    fi
    echo "s $mode" >>"$NEW_RECORD"
    place "$PAYLOAD/bin/crius" "$BIN" 0755
    place "$CONFIG_SRC" "$CONF" 0644
    if [ "$mode" != direct ]; then
        place "$PAYLOAD/lib/systemd/crius.service" "$UNIT" 0644
    fi
    save_record
    if [ "$mode" != none ]; then
        host_run "$BIN" --version >/dev/null ||
            die "the installed $BIN does not run on this host (it needs glibc 2.34 or later)"
    fi
    case "$mode" in
        systemd) start_systemd ;;
        direct) start_direct ;;
        none) log "start is none: crius is installed and not started" ;;
    esac
    if [ "$mode" != none ]; then
        host_run "$BIN" health --wait "$WAIT_SECS" || die "crius did not answer within $WAIT_SECS s"
    fi
    label_node "$mode"
    if [ -z "$CHANGED" ]; then
        log "nothing to do: crius was already installed as configured"
    fi
}

# Whether this script runs in a container that crius itself runs (a crius
# monitor is among our ancestors): stopping crius would cut kubelet off.
run_by_crius() {
    pid=$$
    while [ "$pid" -gt 1 ] 2>/dev/null; do
        case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
            "$BIN" | "$BIN (deleted)") return 0 ;;
        esac
        pid=$(awk '{ print $4 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    done
    return 1
}

uninstall() {
    if host_pid_ns && run_by_crius; then
        die "kubelet runs this pod through crius: point kubelet at another runtime before uninstalling crius"
    fi
    if in_cluster; then
        label "$LABEL_RUNTIME-" "$LABEL_KVM-"
    fi
    if [ ! -f "$HOST_ROOT$RECORD" ]; then
        log "nothing to do: crius-installer installed nothing on this host"
        return 0
    fi
    mode=$(recorded_start)
    case "$mode" in
        systemd)
            if host_has_systemd; then
                host_run systemctl disable --now --quiet crius.service || die "stop crius.service"
            fi
            ;;
        direct) stop_direct ;;
    esac
    awk '$1 == "f" { print $2, $3 }' "$HOST_ROOT$RECORD" | while read -r want path; do
        if [ "$(sha "$HOST_ROOT$path")" = "$want" ]; then
            rm -f "$HOST_ROOT$path"
            log "removed $path"
        elif [ -e "$HOST_ROOT$path" ]; then
            log "left $path: it changed after crius-installer wrote it"
        fi
    done
    if [ "$mode" = systemd ] && host_has_systemd; then
        host_run systemctl daemon-reload
    fi
    # Directories last, deepest first, and only when empty.
    dirs=$(awk '$1 == "d" { print $2 }' "$HOST_ROOT$RECORD" | sort -r)
    rm -f "$HOST_ROOT$RECORD"
    for dir in $dirs; do
        if rmdir "$HOST_ROOT$dir" 2>/dev/null; then log "removed $dir/"; fi
    done
}

# The Helm pre-delete hook: turn every node's installer pod into an
# uninstaller and wait until all of them are done (ready).
request_uninstall() {
    ns=${POD_NAMESPACE:?POD_NAMESPACE not set} ds=${CRIUS_DAEMONSET:?CRIUS_DAEMONSET not set}
    log "switching daemonset $ns/$ds to uninstall"
    kubectl -n "$ns" set env "daemonset/$ds" CRIUS_ACTION=uninstall
    kubectl -n "$ns" rollout status "daemonset/$ds" --timeout="${WAIT_SECS}s"
}

stay() {
    [ "$STAY" = true ] || return 0
    touch "$READY_FILE"
    # SIGTERM (pod deleted, DaemonSet updated) ends the pod and leaves crius
    # installed; uninstalling is an explicit action.
    trap 'log "stopping; crius stays as it is"; exit 0' TERM INT
    while :; do
        sleep 3600 &
        wait $! || true
    done
}

case "$ACTION" in
    install) install ;;
    uninstall) uninstall ;;
    request-uninstall) request_uninstall ;;
    *) die "unknown action '$ACTION' (install, uninstall, request-uninstall)" ;;
esac
stay
