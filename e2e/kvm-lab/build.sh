#!/usr/bin/env bash
# Builds the KVM lab's images from Debian packages and two crius binaries:
#
#   e2e/kvm-lab/build.sh OUT_DIR CRIUS_BIN CRIUS_LAB_BIN
#
# OUT_DIR/vmlinuz      the Debian cloud kernel (L1 and the guest both run it)
# OUT_DIR/guest.cpio   the guest's initramfs (sandbox/vmm/guest/mkinitramfs.sh):
#                      busybox, the modules for virtio-mmio, vsock, blk, net, rng,
#                      erofs, overlay, its /init (guest-init.sh) and crius-lab (the
#                      guest side of the tests)
# OUT_DIR/shared.img   an erofs image with shared.txt: the file the host shares
# OUT_DIR/l1.cpio      L1's initramfs: busybox, kvm + kvm-amd + tun modules, crius,
#                      crius-lab, QEMU (the comparison), the guest's files, /lab/tests
#
# Needs (see .ci/setup-host): linux-image-cloud-amd64, busybox-static, kmod,
# erofs-utils, qemu-system-x86 (bookworm-backports), cpio from busybox.
set -euo pipefail
OUT=$1 CRIUS_BIN=$2 LAB_BIN=$3
HERE=$(cd "$(dirname "$0")" && pwd)
KVER=$(basename "$(ls -d /lib/modules/*-cloud-amd64 | sort -V | tail -1)")
KERNEL=/boot/vmlinuz-$KVER
BUSYBOX=/bin/busybox
[[ -f $KERNEL ]] || { echo "build.sh: $KERNEL missing (linux-image-cloud-amd64)" >&2; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT"
cp "$KERNEL" "$OUT/vmlinuz"

# copy_bin ROOT FILE: FILE and the shared libraries ldd lists, under ROOT.
copy_bin() {
    local root=$1 file=$2 lib
    mkdir -p "$root$(dirname "$file")"
    cp -L "$file" "$root$file"
    for lib in $(ldd "$file" 2>/dev/null | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -Ln "$lib" "$root$lib"
    done
}

# copy_modules ROOT LIST MODULE...: the modules with their dependencies, in
# load order, and their paths appended to ROOT/LIST.
copy_modules() {
    local root=$1 list=$2 m path
    shift 2
    for m in "$@"; do
        modprobe --show-depends -S "$KVER" "$m" | awk '$1 == "insmod" {print $2}' | while read -r path; do
            grep -qxF "$path" "$root/$list" 2>/dev/null && continue
            mkdir -p "$root$(dirname "$path")"
            cp "$path" "$root$path"
            echo "$path" >>"$root/$list"
        done
    done
}

make_cpio() { (cd "$1" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$2"; }

base_root() {
    mkdir -p "$1"/{bin,dev,proc,sys,tmp,mnt,etc}
    cp "$BUSYBOX" "$1/bin/busybox"
}

# The guest: crius's guest initramfs builder, with the lab's init and crius-lab.
"$HERE/../../sandbox/vmm/guest/mkinitramfs.sh" "$OUT/guest.cpio" "$HERE/guest-init.sh" "$LAB_BIN=/bin/crius-lab"

# The shared file, as a read-only erofs image (the rootfs transport: block
# devices built from image content).
mkdir -p "$OUT/shared"
echo "shared by the lab host $(date -u +%FT%TZ)" >"$OUT/shared/shared.txt"
mkfs.erofs "$OUT/shared.img" "$OUT/shared" >/dev/null

# L1.
L=$OUT/l1-root
base_root "$L"
install -m 755 "$HERE/l1-init.sh" "$L/init"
copy_bin "$L" "$CRIUS_BIN"
mv "$L$CRIUS_BIN" "$L/bin/crius"
copy_bin "$L" "$LAB_BIN"
mv "$L$LAB_BIN" "$L/bin/crius-lab"
copy_modules "$L" lab-modules irqbypass kvm kvm-amd tun
copy_bin "$L" /usr/bin/qemu-system-x86_64
mkdir -p "$L/usr/share/qemu" "$L/usr/share/seabios"
cp -L /usr/share/seabios/bios-microvm.bin "$L/usr/share/seabios/"
cp -L /usr/share/qemu/{linuxboot_dma.bin,pvh.bin,qboot.rom} "$L/usr/share/qemu/"
mkdir -p "$L/lab/tests"
cp "$OUT/vmlinuz" "$OUT/guest.cpio" "$OUT/shared.img" "$L/lab/"
cp "$HERE"/tests/*.sh "$L/lab/tests/"
make_cpio "$L" "$OUT/l1.cpio"
rm -rf "$L" "$OUT/shared"
ls -la "$OUT"
