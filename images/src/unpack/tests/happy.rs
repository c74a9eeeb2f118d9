//! Well-formed layers: every entry type, metadata, whiteouts, compressions.

use std::path::Path;

use rustix::fs::{FileType, major, minor};
use tar::{EntryType, Header};

use super::super::{UnpackLimits, unpack_layer};
use super::{Compression, Layer, MTIME, unpack};
use crate::digest::Digest;

const LONG_DIR: &str =
    "opt/a-directory-name-long-enough-to-need-a-gnu-long-name-header-because-it-is-way-past-100-bytes";

fn happy_layer() -> (Vec<u8>, u64) {
    let mut layer = Layer::new();
    layer
        .dir("./", 0o755)
        .dir_with("etc/", 0o755, 0, 0, 1000)
        .file_with("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0, 1_234_567)
        .file_with("etc/shadow", b"secret", 0o600, 0, 42, MTIME)
        .file_with("usr/bin/su", b"su-binary", 0o4755, 0, 0, MTIME)
        .file_with("usr/bin/wall", b"wall", 0o2755, 1000, 5, MTIME)
        .dir_with("tmp/", 0o1777, 0, 0, MTIME)
        .dir_with("home/user/", 0o700, 1000, 1000, 2000)
        .symlink("usr/bin/sh", "/bin/busybox")
        .hardlink("usr/bin/su2", "./usr/bin/su")
        .device("dev/null", EntryType::Char, 0o666, 1, 3)
        .device("dev/loop0", EntryType::Block, 0o660, 7, 0)
        .device("run/fifo", EntryType::Fifo, 0o600, 0, 0)
        .pax(&[
            ("SCHILY.xattr.user.test", b"hello"),
            ("SCHILY.xattr.trusted.test", b"t"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("mtime", b"1500000000.25"),
        ])
        .file_with("usr/bin/ping", b"ping", 0o755, 0, 0, MTIME)
        .dir("var/lib/", 0o755)
        .file("var/lib/kept", b"kept")
        .file("var/lib/.wh..wh..opq", b"")
        .file("etc/.wh.shadow", b"")
        .file(".wh..wh.plnk/123.456", b"aufs")
        .file(&format!("{LONG_DIR}/file"), b"long");
    let entries = layer.entries;
    let mut tar = layer.finish();
    // Real layers often pad to a 10 KiB record: it belongs to the diff id.
    tar.resize(tar.len().next_multiple_of(10240) + 10240, 0);
    (tar, entries)
}

fn lstat(path: &Path) -> rustix::fs::Stat {
    rustix::fs::lstat(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

fn perms(path: &Path) -> u32 {
    lstat(path).st_mode & 0o7777
}

fn file_type(path: &Path) -> FileType {
    FileType::from_raw_mode(lstat(path).st_mode)
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {name} on {}: {e}", path.display()),
    }
}

fn check_happy(dest: &Path) {
    assert_eq!(perms(dest), 0o755);

    let etc = dest.join("etc");
    assert_eq!(file_type(&etc), FileType::Directory);
    assert_eq!(lstat(&etc).st_mtime, 1000, "directory mtimes are set after their children");

    let passwd = etc.join("passwd");
    assert_eq!(std::fs::read(&passwd).expect("passwd"), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(perms(&passwd), 0o644);
    assert_eq!(lstat(&passwd).st_mtime, 1_234_567);

    let su = dest.join("usr/bin/su");
    assert_eq!(std::fs::read(&su).expect("su"), b"su-binary");
    assert_eq!(perms(&su), 0o4755);
    let wall = lstat(&dest.join("usr/bin/wall"));
    assert_eq!((wall.st_uid, wall.st_gid, wall.st_mode & 0o7777), (1000, 5, 0o2755), "setgid survives chown");
    assert_eq!(file_type(&dest.join("usr")), FileType::Directory);

    assert_eq!(perms(&dest.join("tmp")), 0o1777);
    let home = lstat(&dest.join("home/user"));
    assert_eq!((home.st_uid, home.st_gid, home.st_mode & 0o7777, home.st_mtime), (1000, 1000, 0o700, 2000));

    let sh = dest.join("usr/bin/sh");
    assert_eq!(std::fs::read_link(&sh).expect("readlink"), Path::new("/bin/busybox"));
    assert_eq!(lstat(&sh).st_mtime, MTIME as i64);

    let su2 = lstat(&dest.join("usr/bin/su2"));
    assert_eq!(su2.st_ino, lstat(&su).st_ino, "hardlink shares the inode");
    assert_eq!(su2.st_nlink, 2);

    let null = lstat(&dest.join("dev/null"));
    assert_eq!(FileType::from_raw_mode(null.st_mode), FileType::CharacterDevice);
    assert_eq!((major(null.st_rdev), minor(null.st_rdev), null.st_mode & 0o7777), (1, 3, 0o666));
    let loop0 = lstat(&dest.join("dev/loop0"));
    assert_eq!(FileType::from_raw_mode(loop0.st_mode), FileType::BlockDevice);
    assert_eq!((major(loop0.st_rdev), minor(loop0.st_rdev)), (7, 0));
    assert_eq!(file_type(&dest.join("run/fifo")), FileType::Fifo);
    assert_eq!(perms(&dest.join("run/fifo")), 0o600);

    let ping = dest.join("usr/bin/ping");
    assert_eq!(xattr(&ping, "user.test").as_deref(), Some(&b"hello"[..]));
    assert_eq!(xattr(&ping, "trusted.test").as_deref(), Some(&b"t"[..]));
    assert_eq!(xattr(&ping, "trusted.overlay.redirect"), None, "layers may not set overlay xattrs");
    let ping = lstat(&ping);
    assert_eq!((ping.st_mtime, ping.st_mtime_nsec), (1_500_000_000, 250_000_000), "pax mtime");

    let lib = dest.join("var/lib");
    assert_eq!(xattr(&lib, "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert!(lib.join("kept").exists());
    assert!(!lib.join(".wh..wh..opq").exists());

    let shadow = lstat(&etc.join("shadow"));
    assert_eq!(FileType::from_raw_mode(shadow.st_mode), FileType::CharacterDevice, "whiteout");
    assert_eq!((major(shadow.st_rdev), minor(shadow.st_rdev)), (0, 0));
    assert!(!etc.join(".wh.shadow").exists());
    assert!(!dest.join(".wh..wh.plnk").exists(), "aufs metadata is skipped");

    assert_eq!(std::fs::read(dest.join(LONG_DIR).join("file")).expect("long name"), b"long");
}

#[test]
fn unpack_happy_path_all_compressions() {
    if !testkit::require_root("unpack_happy_path_all_compressions") {
        return;
    }
    let (tar, entries) = happy_layer();
    for (compression, blob) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, super::gzip(&tar)),
        (Compression::Zstd, super::zstd(&tar)),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stats = unpack(&blob, compression, tmp.path()).unwrap_or_else(|e| panic!("{compression:?}: {e:?}"));
        assert_eq!(stats.diff_id, Digest::of(&tar), "{compression:?}");
        assert_eq!(stats.bytes, tar.len() as u64, "{compression:?}");
        assert_eq!(stats.entries, entries, "{compression:?}");
        check_happy(tmp.path());
    }
}

#[test]
fn unpack_later_entries_replace_earlier_ones() {
    let mut layer = Layer::new();
    layer
        .file("a", b"first")
        .file("a", b"second")
        .dir("d/", 0o755)
        .file("d/sub/f", b"x")
        .symlink("d/s", "../../outside")
        .file("d", b"file over dir")
        .symlink("e", "target")
        .dir("e/", 0o750)
        .file("e/inside", b"in")
        .dir("k/", 0o700)
        .dir("k/", 0o711)
        .file("k/child", b"c");
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(&layer.finish(), Compression::None, tmp.path()).expect("unpack");
    let dest = tmp.path();
    assert_eq!(std::fs::read(dest.join("a")).expect("a"), b"second");
    assert_eq!(std::fs::read(dest.join("d")).expect("d"), b"file over dir");
    assert_eq!(file_type(&dest.join("e")), FileType::Directory);
    assert_eq!(perms(&dest.join("e")), 0o750);
    assert_eq!(std::fs::read(dest.join("e/inside")).expect("e/inside"), b"in");
    assert_eq!(perms(&dest.join("k")), 0o711, "dir over dir updates its metadata");
    assert!(dest.join("k/child").exists());
}

#[test]
fn unpack_whiteout_replaces_symlink_not_its_target() {
    if !testkit::require_root("unpack_whiteout_replaces_symlink_not_its_target") {
        return;
    }
    let sandbox = super::Sandbox::new();
    let before = sandbox.snapshot();
    let mut layer = Layer::new();
    layer.symlink("evil", "../outside").file(".wh.evil", b"");
    unpack(&layer.finish(), Compression::None, &sandbox.dest).expect("unpack");
    assert_eq!(file_type(&sandbox.dest.join("evil")), FileType::CharacterDevice);
    assert_eq!(sandbox.snapshot(), before);
}

#[test]
fn unpack_reads_empty_numeric_fields_as_zero() {
    // Go's archive/tar (docker, containerd) reads empty uid/gid/mtime fields as 0.
    let mut header = Header::new_old();
    header.set_path("empty-ids").expect("path");
    header.set_size(2);
    header.set_mode(0o644);
    header.set_entry_type(EntryType::Regular);
    let raw = header.as_old_mut();
    raw.uid = [0; 8];
    raw.gid = [b' '; 8];
    raw.mtime = [0; 12];
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(b"ok");
    tar.resize(tar.len() + 510, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).expect("dest");
    unpack_layer(tar.as_slice(), Compression::None, &dest, &UnpackLimits::default()).expect("empty fields are zero");
    assert_eq!(std::fs::read(dest.join("empty-ids")).expect("file"), b"ok");
}
