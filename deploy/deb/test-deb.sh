#!/bin/sh
# Installs, inspects and purges the crius .deb in a fresh Debian 12 root, as
# root on a Debian machine with debootstrap and a reachable Debian mirror:
#
#   deploy/deb/test-deb.sh target/deb/crius_0.1.0_amd64.deb
#
# A minbase root is made once with debootstrap (CRIUS_DEB_BASE, default
# /var/cache/crius-deb-test/bookworm; mirror DEBIAN_MIRROR) and copied for
# each run. Every command runs chrooted there, in new mount and PID
# namespaces (so that the root sees only its own processes and mounts).
# There is no systemd in the root: the check is that the maintainer scripts
# succeed without it, enable the unit for the next boot and start nothing.
# Then: apt-get installs the dependencies (nftables, iproute2); dpkg -L lists
# the files; crius --version and crius config run from the installed package;
# purge removes the config, the unit and its enablement and keeps
# /var/lib/crius; a purge with CRIUS_PURGE_STATE=yes removes that too.
set -eu

deb=$(realpath "${1:?usage: test-deb.sh CRIUS_DEB}")
base=${CRIUS_DEB_BASE:-/var/cache/crius-deb-test/bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$base/usr/bin/apt-get" ]; then
    echo "== debootstrap --variant=minbase bookworm $base"
    debootstrap --variant=minbase bookworm "$base" "$mirror" >/dev/null
fi
root=$(mktemp -d /tmp/crius-deb-test.XXXXXX)
trap 'rm -rf "$root"' EXIT
cp -a "$base/." "$root/"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/tmp/"
pkg=/tmp/$(basename "$deb")

in_root() {
    unshare --mount --pid --fork --mount-proc="$root/proc" chroot "$root" \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
check() {
    what=$1
    shift
    if "$@"; then echo "ok: $what"; else fail "$what"; fi
}
# shellcheck disable=SC2016 # ${Status} is dpkg-query's, not the shell's
installed() { in_root dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

echo "== apt-get install $pkg"
in_root apt-get update -qq
in_root apt-get install -y -q "$pkg"
check "crius is installed" installed crius
check "nftables came as a dependency" installed nftables
check "iproute2 came as a dependency" installed iproute2
echo "== dpkg -L crius"
in_root dpkg -L crius
echo "== crius --version; crius config"
in_root crius --version
in_root crius config | head -4
check "crius.service is enabled for the next boot" test -L "$root/etc/systemd/system/multi-user.target.wants/crius.service"
check "no systemd, so nothing was started" test ! -e "$root/run/crius/crius.sock"

mkdir -p "$root/var/lib/crius/images"
echo kept >"$root/var/lib/crius/images/marker"
echo "== apt-get purge crius"
in_root apt-get purge -y -q crius
not_installed() { ! installed "$1"; }
check "crius is not installed" not_installed crius
check "the package's files are gone" test ! -e "$root/usr/bin/crius" -a ! -e "$root/lib/systemd/system/crius.service"
check "purge removed /etc/crius" test ! -e "$root/etc/crius"
check "purge removed the unit's enablement" test ! -e "$root/etc/systemd/system/multi-user.target.wants/crius.service"
check "purge kept the state in /var/lib/crius" test -f "$root/var/lib/crius/images/marker"
check "dpkg forgot crius" sh -c "! grep -q '^Package: crius$' '$root/var/lib/dpkg/status'"

echo "== apt-get install again, then CRIUS_PURGE_STATE=yes apt-get purge crius"
in_root apt-get install -y -q "$pkg" >/dev/null
in_root env CRIUS_PURGE_STATE=yes apt-get purge -y -q crius
check "the state is gone too" test ! -e "$root/var/lib/crius"
check "dpkg forgot crius" sh -c "! grep -q '^Package: crius$' '$root/var/lib/dpkg/status'"
echo "test-deb.sh: all checks passed"
