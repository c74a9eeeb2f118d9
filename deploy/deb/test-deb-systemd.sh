#!/bin/sh
# The crius .deb on a Debian 12 that runs systemd: installing it starts
# crius.service, crius answers, purging it stops crius. As root, with
# debootstrap, systemd-nspawn (Debian package systemd-container) and a
# reachable Debian mirror:
#
#   deploy/deb/test-deb-systemd.sh target/deb/crius_0.1.0_amd64.deb
#
# A minbase root with systemd is made once (CRIUS_DEB_SYSTEMD_BASE, default
# /var/cache/crius-deb-test/bookworm-systemd) and copied for each run. The
# package's dependencies are downloaded in a chroot first; then the copy is
# booted with systemd-nspawn with a private network (crius's bridge and
# nftables table stay inside it) and the README's commands run in it.
set -eu

deb=$(realpath "${1:?usage: test-deb-systemd.sh CRIUS_DEB}")
base=${CRIUS_DEB_SYSTEMD_BASE:-/var/cache/crius-deb-test/bookworm-systemd}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
name=$(basename "$deb")

if [ ! -x "$base/lib/systemd/systemd" ]; then
    echo "== debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm $base"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps bookworm "$base" "$mirror" >/dev/null
fi
root=$(mktemp -d /tmp/crius-deb-systemd.XXXXXX)
log=$(mktemp)
nspawn=
cleanup() {
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        kill -TERM "$nspawn"
        while kill -0 "$nspawn" 2>/dev/null; do sleep 0.2; done
    fi
    rm -rf "$root" "$log"
}
trap cleanup EXIT
cp -a "$base/." "$root/"
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo crius-deb-test >"$root/etc/hostname"
# Not /tmp: systemd mounts a tmpfs there.
cp "$deb" "$root/root/"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
echo "== download the dependencies (chroot, with the network)"
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -c \
    "apt-get update -qq && cd /root && apt-get install -y -q --download-only ./$name" >/dev/null

echo "== boot the root with systemd-nspawn --private-network"
systemd-nspawn --register=no --keep-unit -q -b -D "$root" --private-network --console=passive >"$log" 2>&1 &
nspawn=$!
init=
for _ in $(seq 1 100); do
    init=$(pgrep -P "$nspawn" -x systemd || true)
    [ -n "$init" ] && break
    sleep 0.2
done
[ -n "$init" ] || fail "no systemd in the container: $(cat "$log")"
in_c() {
    nsenter -t "$init" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"
}
state=
for _ in $(seq 1 150); do
    state=$(in_c systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
echo "systemd: $state"

echo "== cd /root && apt-get install ./$name"
in_c sh -c "cd /root && apt-get install -y -q ./$name" >/dev/null 2>&1 || fail "apt-get install"
echo "== crius health --wait 30"
in_c crius health --wait 30 || fail "crius does not answer"
[ "$(in_c systemctl is-active crius.service)" = active ] || fail "crius.service is not active"
[ "$(in_c systemctl is-enabled crius.service)" = enabled ] || fail "crius.service is not enabled"
echo "ok: crius.service is enabled and active, crius answers"

echo "== apt-get purge crius"
in_c apt-get purge -y -q crius >/dev/null 2>&1 || fail "apt-get purge"
[ "$(in_c systemctl is-active crius.service || true)" != active ] || fail "crius.service still active"
in_c pgrep -x crius >/dev/null && fail "a crius process is left"
[ ! -e "$root/etc/crius" ] || fail "/etc/crius is left"
[ -e "$root/var/lib/crius/state.redb" ] || fail "purge removed the state without CRIUS_PURGE_STATE=yes"
echo "ok: purge stopped crius, removed /etc/crius and kept /var/lib/crius"
in_c systemctl poweroff || true
wait "$nspawn" || true
nspawn=
echo "test-deb-systemd.sh: all checks passed"
