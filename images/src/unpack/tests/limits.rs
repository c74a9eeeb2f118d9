//! Limits, decompression bombs, broken streams and media types.

use std::io::{Seek, Write};

use tar::{EntryType, Header};

use super::{Compression, Layer, unpack};
use crate::space::{SpaceError, SpaceReserve};
use crate::unpack::{UnpackError, UnpackLimits, unpack_layer};

const MIB: u64 = 1 << 20;
const BOMB_SIZE: u64 = 1 << 30;

/// A tar holding one file of [`BOMB_SIZE`] zeros, written as concatenated
/// compressed members/frames (header, the same 1 MiB of zeros over and over,
/// end blocks) so it is generated streaming, in about a megabyte.
fn write_bomb(compress: fn(&[u8]) -> Vec<u8>) -> std::fs::File {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_path("zeros").expect("path");
    header.set_size(BOMB_SIZE);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut out = tempfile::tempfile().expect("tempfile");
    out.write_all(&compress(header.as_bytes())).expect("write header");
    let chunk = compress(&vec![0u8; MIB as usize]);
    for _ in 0..BOMB_SIZE / MIB {
        out.write_all(&chunk).expect("write chunk");
    }
    out.write_all(&compress(&[0u8; 1024])).expect("write end");
    out.rewind().expect("rewind");
    out
}

#[test]
fn unpack_stops_decompression_bombs() {
    for (compression, compress) in
        [(Compression::Gzip, super::gzip as fn(&[u8]) -> Vec<u8>), (Compression::Zstd, super::zstd)]
    {
        let bomb = write_bomb(compress);
        assert!(bomb.metadata().expect("size").len() < 16 * MIB, "the bomb itself is small");
        let tmp = tempfile::tempdir().expect("tempdir");
        let limits = UnpackLimits { max_bytes: 64 * MIB, ..UnpackLimits::default() };
        let err = unpack_layer(std::io::BufReader::new(bomb), compression, tmp.path(), &limits)
            .expect_err("bomb must be refused");
        assert!(matches!(err, UnpackError::TooManyBytes { limit } if limit == 64 * MIB), "{compression:?}: {err:?}");
        assert!(err.to_string().contains(&(64 * MIB).to_string()), "{err}");
        let written = std::fs::metadata(tmp.path().join("zeros")).expect("partial file").len();
        assert!(written <= 64 * MIB, "{compression:?}: stopped early, wrote {written}");
    }
}

#[test]
fn unpack_stops_at_the_free_space_reserve() {
    let mut layer = Layer::new();
    layer.file("a", b"data");
    let tar = layer.finish();
    let reserve = |percent| UnpackLimits { reserve: SpaceReserve { percent }, ..UnpackLimits::default() };
    // No filesystem has 100% free: refused before the first entry.
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack_layer(tar.as_slice(), Compression::None, tmp.path(), &reserve(100)).expect_err("no room");
    assert!(matches!(err, UnpackError::LowSpace(SpaceError::Bytes { percent: 100, .. })), "{err:?}");
    assert!(err.to_string().contains("free-space reserve"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).expect("dest").count(), 0, "nothing written");
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack_layer(tar.as_slice(), Compression::None, tmp.path(), &reserve(0)).expect("no reserve");
}

#[test]
fn unpack_byte_limit_counts_the_whole_stream() {
    let mut layer = Layer::new();
    layer.file("a", &[7u8; 3000]).file("b", b"bee");
    let tar = layer.finish();
    let limit = |max_bytes| UnpackLimits { max_bytes, ..UnpackLimits::default() };
    let tmp = tempfile::tempdir().expect("tempdir");
    let stats = unpack_layer(tar.as_slice(), Compression::None, tmp.path(), &limit(tar.len() as u64)).expect("fits");
    assert_eq!(stats.bytes, tar.len() as u64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack_layer(tar.as_slice(), Compression::None, tmp.path(), &limit(tar.len() as u64 - 1))
        .expect_err("one byte too many");
    assert!(matches!(err, UnpackError::TooManyBytes { .. }), "{err:?}");
}

#[test]
fn unpack_entry_limit() {
    let mut layer = Layer::new();
    for i in 0..5 {
        layer.file(&format!("f{i}"), b"x");
    }
    let tar = layer.finish();
    let tmp = tempfile::tempdir().expect("tempdir");
    let limits = UnpackLimits { max_entries: 3, ..UnpackLimits::default() };
    let err = unpack_layer(tar.as_slice(), Compression::None, tmp.path(), &limits).expect_err("too many entries");
    assert_eq!(err.to_string(), "layer exceeds the unpack limit of 3 entries");
    let limits = UnpackLimits { max_entries: 5, ..UnpackLimits::default() };
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(unpack_layer(tar.as_slice(), Compression::None, tmp.path(), &limits).expect("fits").entries, 5);
}

#[test]
fn unpack_refuses_broken_streams() {
    let mut layer = Layer::new();
    layer.file("a", &[1u8; 5000]);
    let tar = layer.finish();
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack(&tar[..2048], Compression::None, tmp.path()).expect_err("truncated tar");
    assert!(matches!(err, UnpackError::EntryData { ref entry, .. } if entry == "a"), "{err:?}");
    let gz = super::gzip(&tar);
    let err = unpack(&gz[..gz.len() / 2], Compression::Gzip, tmp.path()).expect_err("truncated gzip");
    assert!(matches!(err, UnpackError::Stream(_) | UnpackError::EntryData { .. }), "{err:?}");
    let err = unpack(&tar, Compression::Zstd, tmp.path()).expect_err("not zstd");
    assert!(matches!(err, UnpackError::Stream(_)), "{err:?}");
    let mut corrupt = tar.clone();
    corrupt[0] ^= 1; // header checksum mismatch
    let err = unpack(&corrupt, Compression::None, tempfile::tempdir().expect("tmp").path()).expect_err("bad header");
    assert!(matches!(err, UnpackError::Stream(_)), "{err:?}");
}

#[test]
fn unpack_media_types() {
    let table = [
        ("application/vnd.oci.image.layer.v1.tar", Some(Compression::None)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Compression::Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Compression::Zstd)),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar", Some(Compression::None)),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Some(Compression::Gzip)),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Some(Compression::Zstd)),
        ("application/vnd.docker.image.rootfs.diff.tar", Some(Compression::None)),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Some(Compression::Gzip)),
        ("application/vnd.docker.image.rootfs.diff.tar.zstd", Some(Compression::Zstd)),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar", Some(Compression::None)),
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Some(Compression::Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
        ("application/vnd.oci.image.config.v1+json", None),
        ("application/vnd.docker.distribution.manifest.v2+json", None),
        ("", None),
    ];
    for (media_type, expected) in table {
        match (Compression::from_media_type(media_type), expected) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{media_type}"),
            (Err(UnpackError::UnsupportedMediaType { media_type: refused }), None) => {
                assert_eq!(refused, media_type)
            }
            (got, want) => panic!("{media_type}: got {got:?}, want {want:?}"),
        }
    }
}
