#!/bin/sh
# Builds target/deb/crius_<version>_amd64.deb from a release build of crius:
#
#   cargo build --locked --release -p crius && deploy/deb/build-deb.sh [CRIUS_BINARY]
#
# The package holds /usr/bin/crius (without debug info), the systemd unit
# (/lib/systemd/system/crius.service, deploy/systemd/crius.service with the
# binary at /usr/bin), and /etc/crius/crius.toml (a conffile: crius's default
# configuration as `crius config` prints it). Depends: the shared libraries
# dpkg-shlibdeps finds, nftables and iproute2; Recommends the Debian cloud
# kernel (linux-image-cloud-amd64), the guest kernel of KVM pods; Suggests
# containernetworking-plugins (network.mode = "cni"). The maintainer scripts
# (postinst, prerm, postrm beside this file) enable and start crius.service
# where systemd runs; a purge removes the config, and the state only when
# CRIUS_PURGE_STATE=yes (see postrm).
#
# Needs dpkg-dev (dpkg-shlibdeps) and binutils (strip); no debhelper.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
binary=${1:-$repo/target/release/crius}
out=${CRIUS_DEB_OUT:-$repo/target/deb}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml")
arch=$(dpkg --print-architecture)

[ -x "$binary" ] || { echo "build-deb.sh: no crius binary at $binary (cargo build --locked --release -p crius)" >&2; exit 1; }
[ -n "$version" ] || { echo "build-deb.sh: no version in $repo/Cargo.toml" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/crius" "$root/usr/share/doc/crius"

strip --strip-debug -o "$root/usr/bin/crius" "$binary"
chmod 0755 "$root/usr/bin/crius"
sed 's|^ExecStart=/usr/local/bin/crius|ExecStart=/usr/bin/crius|; s|^# Install: .*|# Installed by the crius Debian package.|' \
    "$repo/deploy/systemd/crius.service" >"$root/lib/systemd/system/crius.service"
grep -q '^ExecStart=/usr/bin/crius$' "$root/lib/systemd/system/crius.service" ||
    { echo "build-deb.sh: deploy/systemd/crius.service has no ExecStart=/usr/local/bin/crius to rewrite" >&2; exit 1; }
{
    echo "# crius configuration: every key with its default (the README's configuration"
    echo "# reference explains them). Change what you need and restart crius.service."
    "$root/usr/bin/crius" --config /dev/null config
} >"$root/etc/crius/crius.toml"
chmod 0644 "$root/etc/crius/crius.toml" "$root/lib/systemd/system/crius.service"
printf '%s\n' "Files: *" "Copyright: the crius authors" "License: Apache-2.0" \
    " On Debian systems the license is in /usr/share/common-licenses/Apache-2.0." >"$root/usr/share/doc/crius/copyright"
chmod 0644 "$root/usr/share/doc/crius/copyright"

for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$root/DEBIAN/$script"
done
echo /etc/crius/crius.toml >"$root/DEBIAN/conffiles"

# dpkg-shlibdeps wants a source package around it: a minimal one in $work.
mkdir -p "$work/debian"
printf 'Source: crius\n\nPackage: crius\nArchitecture: any\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O -e"$root/usr/bin/crius" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb.sh: dpkg-shlibdeps found no libraries" >&2; exit 1; }

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: crius
Version: $version
Architecture: $arch
Maintainer: crius developers <crius@users.noreply.github.com>
Installed-Size: $installed_size
Depends: $shlibs, init-system-helpers (>= 1.54~), nftables, iproute2
Recommends: linux-image-cloud-amd64
Suggests: containernetworking-plugins
Section: admin
Priority: optional
Homepage: https://github.com/crius-runtime/crius
Description: Kubernetes CRI runtime for namespace pods and KVM pods
 crius serves the Container Runtime Interface to kubelet on
 unix:///run/crius/crius.sock and runs pods as Linux namespaces with its
 own runtime (no runc or containerd), or inside light KVM virtual machines.
 It pulls images from OCI registries and networks pods through its own
 bridge or CNI plugins.
EOF

mkdir -p "$out"
deb=$out/crius_${version}_${arch}.deb
# Reproducible: every file's mtime is SOURCE_DATE_EPOCH (default 0), owned by root.
find "$root" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0} dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "build-deb.sh: wrote $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Recommends\):/  \1:/p'
