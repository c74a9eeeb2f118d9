#!/bin/sh
# The installer's systemd path on a booted Debian 12: what the DaemonSet's pod
# does on a node, without Kubernetes. As root, with debootstrap,
# systemd-nspawn (Debian package systemd-container) and an image layout that
# deploy/image/build.py wrote:
#
#   deploy/image/build.py && deploy/installer/test-systemd.sh [target/installer-image]
#
# A copy of a Debian 12 root with systemd (the one test-deb-systemd.sh makes)
# is booted with systemd-nspawn, private network. In its namespaces the
# image's file system runs as the DaemonSet runs it: its own mount namespace,
# the node's / at /host, the node's PID namespace (hostPID), the config of
# deploy/manifests/crius.yaml, start: auto. Checked: it picks systemd,
# installs and starts crius.service, crius answers; a second run restarts
# nothing; uninstall stops and disables the service and removes exactly what
# install wrote. Then start: direct (crius started in the node's namespaces
# without a service manager) and its uninstall.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
layout=$(realpath "${1:-$repo/target/installer-image}")
base=${CRIUS_DEB_SYSTEMD_BASE:-/var/cache/crius-deb-test/bookworm-systemd}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

[ -f "$layout/index.json" ] || { echo "test-systemd.sh: no image layout at $layout (deploy/image/build.py)" >&2; exit 1; }
if [ ! -x "$base/lib/systemd/systemd" ]; then
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,procps bookworm "$base" "$mirror" >/dev/null
fi
root=$(mktemp -d /tmp/crius-installer-systemd.XXXXXX)
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
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
cp -a "$base/." "$root/"
echo crius-node >"$root/etc/hostname"

# The image's file system, unpacked where the node can reach it (/opt is not
# /tmp, which systemd hides), and the chart's default config.
rfs=/opt/installer-rootfs
mkdir -p "$root$rfs"
python3 - "$layout" "$root$rfs" "$repo/deploy/manifests/crius.yaml" "$root/opt/crius-installer.toml" <<'EOF'
import json, sys, tarfile
layout, rootfs, manifests, config = sys.argv[1:]
blob = lambda digest: f"{layout}/blobs/sha256/{digest.split(':')[1]}"
manifest = json.load(open(blob(json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"])))
for layer in manifest["layers"]:
    with tarfile.open(blob(layer["digest"])) as tar:
        tar.extractall(rootfs)
# The ConfigMap's crius.toml: its literal block, unindented, one final newline.
lines = open(manifests).read().split("\n")
start = lines.index("  crius.toml: |") + 1
block = []
for line in lines[start:]:
    if line.startswith("    ") or not line.strip():
        block.append(line[4:])
    else:
        break
open(config, "w").write("\n".join(block).rstrip("\n") + "\n")
EOF
[ -x "$root$rfs/opt/crius/installer.sh" ] || fail "no installer in $layout"
[ -s "$root/opt/crius-installer.toml" ] || fail "no crius.toml in deploy/manifests/crius.yaml"

systemd-nspawn --register=no --keep-unit -q -b -D "$root" --private-network --console=passive >"$log" 2>&1 &
nspawn=$!
init=
for _ in $(seq 1 100); do
    init=$(pgrep -P "$nspawn" -x systemd || true)
    [ -n "$init" ] && break
    sleep 0.2
done
[ -n "$init" ] || fail "no systemd in the container: $(cat "$log")"
on_node() {
    nsenter -t "$init" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
for _ in $(seq 1 150); do
    case "$(on_node systemctl is-system-running 2>/dev/null || true)" in running | degraded) break ;; esac
    sleep 0.2
done

# One run of the installer "pod": $1 is the action, $2 the start mode (default auto).
installer() {
    on_node unshare --mount --propagation private sh -c "
        set -e
        mount --rbind / $rfs/host
        mount --rbind /dev $rfs/dev
        mount -t proc proc $rfs/proc
        mount --bind /opt/crius-installer.toml $rfs/etc/crius-installer/crius.toml
        exec chroot $rfs env -i PATH=/bin:/usr/bin:/opt/crius/bin CRIUS_START=${2:-auto} /opt/crius/installer.sh $1"
}
mkdir -p "$root$rfs/dev" "$root$rfs/proc"
: >"$root$rfs/etc/crius-installer/crius.toml"

echo "== installer install (start: auto)"
installer install
[ "$(on_node systemctl is-active crius.service)" = active ] || fail "crius.service is not active"
[ "$(on_node systemctl is-enabled crius.service)" = enabled ] || fail "crius.service is not enabled"
cmp "$root/etc/crius/crius.toml" "$root/opt/crius-installer.toml" || fail "/etc/crius/crius.toml is not the chart's"
cmp "$root/usr/local/bin/crius" "$root$rfs/opt/crius/bin/crius" || fail "/usr/local/bin/crius is not the image's"
grep -q '^s systemd$' "$root/var/lib/crius-installer/installed" || fail "the record does not say systemd"
pid=$(on_node systemctl show -p MainPID --value crius.service)
echo "ok: systemd start, crius.service enabled and active (pid $pid), the chart's config and the image's binary"

echo "== installer install, again"
installer install | tee "$log"
grep -q "nothing to do" "$log" || fail "the second run did something"
[ "$(on_node systemctl show -p MainPID --value crius.service)" = "$pid" ] || fail "the second run restarted crius"
echo "ok: nothing changed, crius not restarted"

echo "== installer uninstall"
installer uninstall
[ "$(on_node systemctl is-active crius.service || true)" != active ] || fail "crius.service still active"
for path in /usr/local/bin/crius /etc/crius /etc/systemd/system/crius.service /var/lib/crius-installer; do
    [ ! -e "$root$path" ] || fail "$path is left"
done
{ [ -d "$root/usr/local/bin" ] && [ -d "$root/etc/systemd/system" ]; } || fail "uninstall removed a directory the node had"
echo "ok: crius.service stopped and gone, the installed files and the record removed, the node's directories kept"

echo "== installer install (start: direct), then uninstall"
installer install direct
# /run is the node's tmpfs: read it there (and pids are the node's).
pid=$(on_node cat /run/crius-installer.pid)
[ "$(on_node readlink "/proc/$pid/exe")" = /usr/local/bin/crius ] || fail "pid $pid from /run/crius-installer.pid is not crius"
[ ! -e "$root/etc/systemd/system/crius.service" ] || fail "start: direct installed the unit"
on_node /usr/local/bin/crius health || fail "the directly started crius does not answer"
installer uninstall
on_node sh -c "! kill -0 $pid 2>/dev/null" || fail "crius (pid $pid) still runs after uninstall"
[ ! -e "$root/usr/local/bin/crius" ] || fail "direct uninstall left /usr/local/bin/crius"
on_node test ! -e /run/crius-installer.pid || fail "direct uninstall left /run/crius-installer.pid"
echo "ok: direct start in the node's namespaces, crius answers; uninstall stopped it and removed its files"
on_node systemctl poweroff || true
wait "$nspawn" || true
nspawn=
echo "test-systemd.sh: all checks passed"
