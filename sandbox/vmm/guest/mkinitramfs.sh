#!/usr/bin/env bash
# Builds a guest initramfs for crius's VMM from the installed Debian cloud
# kernel's modules, busybox-static and the programs given:
#
#   sandbox/vmm/guest/mkinitramfs.sh OUT.cpio INIT [PROGRAM[=/PATH/IN/GUEST]]...
#
# INIT becomes /init (a busybox sh script, or the guest agent). Each PROGRAM
# is copied with the shared libraries ldd lists (no musl toolchain here, so
# glibc programs bring theirs), at /bin/<name> unless a path is given.
# The modules the guest needs (virtio-mmio, vsock, blk, net, rng, erofs,
# overlay: all =m in Debian's cloud kernel) and their dependencies are
# copied, and their paths listed in load order in /etc/crius-modules for
# the init to insmod. MODULES="..." replaces the module list; KVER picks the
# kernel (default: the newest installed *-cloud-amd64).
#
# Needs busybox-static, kmod (modprobe --show-depends), linux-image-cloud-amd64.
set -euo pipefail
OUT=$1 INIT=$2
shift 2
KVER=${KVER:-$(basename "$(ls -d /lib/modules/*-cloud-amd64 | sort -V | tail -1)")}
MODULES=${MODULES:-virtio_mmio vmw_vsock_virtio_transport virtio_blk virtio_net virtio_rng erofs overlay}
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT

mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,mnt,etc,run}
cp /bin/busybox "$ROOT/bin/busybox"
install -m 755 "$INIT" "$ROOT/init"

for spec in "$@"; do
    src=${spec%%=*}
    dst=/bin/$(basename "$src")
    [[ $spec == *=* ]] && dst=${spec#*=}
    mkdir -p "$ROOT$(dirname "$dst")"
    cp -L "$src" "$ROOT$dst"
    for lib in $(ldd "$src" 2>/dev/null | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
        mkdir -p "$ROOT$(dirname "$lib")"
        cp -Ln "$lib" "$ROOT$lib"
    done
done

: >"$ROOT/etc/crius-modules"
for m in $MODULES; do
    modprobe --show-depends -S "$KVER" "$m" | awk '$1 == "insmod" {print $2}' | while read -r path; do
        grep -qxF "$path" "$ROOT/etc/crius-modules" && continue
        mkdir -p "$ROOT$(dirname "$path")"
        cp "$path" "$ROOT$path"
        echo "$path" >>"$ROOT/etc/crius-modules"
    done
done

(cd "$ROOT" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) >"$OUT"
