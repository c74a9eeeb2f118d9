//! Extension headers (GNU long names and link names, PAX records) are
//! bounded, and the framing that enforces the bound agrees with the tar
//! crate's on the layouts where sizes are not simply the header's.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use tar::{EntryType, Header};

use super::{Compression, Layer, unpack};
use crate::unpack::{Extension, MAX_EXTENSION, UnpackError, UnpackLimits, unpack_layer};

const MIB: u64 = 1 << 20;

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// A header block of `kind` for `name` declaring `size` data bytes.
fn block(kind: EntryType, name: &str, size: u64) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_path(name).expect("path");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// `data` padded to whole blocks.
fn padded(mut data: Vec<u8>) -> Vec<u8> {
    data.resize(data.len().next_multiple_of(512), 0);
    data
}

#[test]
fn unpack_refuses_oversized_extension_headers_without_reading_them() {
    let size = 64 * MIB;
    for (kind, extension) in [
        (EntryType::GNULongName, Extension::LongName),
        (EntryType::GNULongLink, Extension::LongLink),
        (EntryType::XHeader, Extension::Pax),
    ] {
        // The body is streamed, never built: a header, 64 MiB of 'a', then a file.
        let mut tail = padded(block(EntryType::Regular, "f", 1));
        tail.extend(padded(b"x".to_vec()));
        tail.extend([0u8; 1024]);
        let stream =
            io::Cursor::new(block(kind, "././@LongLink", size)).chain(io::repeat(b'a').take(size)).chain(&tail[..]);
        let count = Rc::new(Cell::new(0));
        let reader = Counting { inner: stream, count: Rc::clone(&count) };
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = unpack_layer(reader, Compression::None, tmp.path(), &UnpackLimits::default())
            .expect_err("oversized extension header");
        assert!(
            matches!(err, UnpackError::ExtensionTooLarge { kind: k, size: s, limit } if k == extension && s == size && limit == MAX_EXTENSION),
            "{extension}: {err:?}"
        );
        assert!(err.to_string().contains(&format!("{extension} header of {size} bytes")), "{err}");
        assert!(count.get() < MAX_EXTENSION, "{extension}: read {} bytes of the stream", count.get());
        assert_eq!(std::fs::read_dir(tmp.path()).expect("dest").count(), 0, "{extension}: nothing unpacked");
    }
}

/// A PAX header whose body is exactly `len` bytes: one `comment` record.
fn pax_of_len(layer: &mut Layer, len: usize) {
    // "LEN comment=VALUE\n", LEN counting its own digits.
    let value_len = len - format!("{len}").len() - " comment=\n".len();
    let value = vec![b'c'; value_len];
    layer.pax(&[("comment", &value)]);
}

#[test]
fn unpack_accepts_extension_headers_up_to_the_limit() {
    let limit = usize::try_from(MAX_EXTENSION).expect("usize");
    let mut layer = Layer::new();
    pax_of_len(&mut layer, limit);
    layer.file("kept", b"under the limit");
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(&layer.finish(), Compression::None, tmp.path()).expect("a PAX header at the limit");
    assert_eq!(std::fs::read(tmp.path().join("kept")).expect("file"), b"under the limit");

    let mut layer = Layer::new();
    pax_of_len(&mut layer, limit + 1);
    layer.file("refused", b"over the limit");
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack(&layer.finish(), Compression::None, tmp.path()).expect_err("one byte over");
    assert!(matches!(err, UnpackError::ExtensionTooLarge { kind: Extension::Pax, .. }), "{err:?}");
}

/// A block that looks like a GNU long-name header declaring 1 GiB.
fn fake_long_name_header() -> Vec<u8> {
    block(EntryType::GNULongName, "././@LongLink", 1 << 30)
}

#[test]
fn unpack_framing_treats_file_data_as_data() {
    // A layer that ships a tar file: its headers are file data.
    let mut inner = fake_long_name_header();
    inner.extend([0u8; 1024]);
    let mut layer = Layer::new();
    layer.file("inner.tar", &inner).file("after", b"after");
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(&layer.finish(), Compression::None, tmp.path()).expect("data is not a header");
    assert_eq!(std::fs::read(tmp.path().join("inner.tar")).expect("inner"), inner);
    assert_eq!(std::fs::read(tmp.path().join("after")).expect("after"), b"after");
}

#[test]
fn unpack_framing_follows_pax_size_records() {
    // The header says 0 bytes, a PAX record says 1024: the data holds a
    // block that would be refused if it were read as a header.
    let mut data = fake_long_name_header();
    data.extend([7u8; 512]);
    let mut layer = Layer::new();
    layer.pax(&[("size", b"1024")]);
    let mut tar = layer.finish();
    tar.truncate(tar.len() - 1024); // the end-of-archive blocks
    tar.extend(block(EntryType::Regular, "big", 0));
    tar.extend(&data);
    tar.extend(padded(block(EntryType::Regular, "after", 5)));
    tar.extend(padded(b"after".to_vec()));
    tar.extend([0u8; 1024]);
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(&tar, Compression::None, tmp.path()).expect("framing follows the PAX size");
    assert_eq!(std::fs::read(tmp.path().join("big")).expect("big"), data);
    assert_eq!(std::fs::read(tmp.path().join("after")).expect("after"), b"after");
}

#[test]
fn unpack_framing_follows_gnu_sparse_extension_blocks() {
    // Five 512-byte data regions with 512-byte holes between them: four in
    // the header, the fifth in an extension block.
    let regions: Vec<(u64, u8)> = (0..5).map(|i| (i * 1024, b'A' + u8::try_from(i).expect("small"))).collect();
    let real_size = 4 * 1024 + 512;
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::GNUSparse);
    header.set_path("sparse").expect("path");
    header.set_size(5 * 512);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let gnu = header.as_gnu_mut().expect("gnu header");
    gnu.set_real_size(real_size);
    gnu.set_is_extended(true);
    for (slot, (offset, _)) in gnu.sparse.iter_mut().zip(&regions) {
        slot.set_offset(*offset);
        slot.set_length(512);
    }
    header.set_cksum();
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.sparse_mut()[0].set_offset(regions[4].0);
    ext.sparse_mut()[0].set_length(512);
    let mut tar = header.as_bytes().to_vec();
    tar.extend(ext.as_bytes());
    // The first region looks like an oversized header if framing ignored the extension block.
    tar.extend(fake_long_name_header());
    for (_, fill) in &regions[1..] {
        tar.extend([*fill; 512]);
    }
    tar.extend(padded(block(EntryType::Regular, "after", 5)));
    tar.extend(padded(b"after".to_vec()));
    tar.extend([0u8; 1024]);
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(&tar, Compression::None, tmp.path()).expect("sparse file");
    let mut expected = vec![0u8; usize::try_from(real_size).expect("usize")];
    expected[..512].copy_from_slice(&fake_long_name_header());
    for (offset, fill) in &regions[1..] {
        let start = usize::try_from(*offset).expect("usize");
        expected[start..start + 512].fill(*fill);
    }
    assert_eq!(std::fs::read(tmp.path().join("sparse")).expect("sparse"), expected);
    assert_eq!(std::fs::read(tmp.path().join("after")).expect("after"), b"after");
}

#[test]
fn unpack_errors_cut_long_names() {
    // A long (but allowed) name that is refused: the error shows its start and length.
    let name = format!("../{}", "n".repeat(300_000));
    let mut layer = Layer::new();
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::GNULongName);
    header.set_path("././@LongLink").expect("path");
    header.set_size(name.len() as u64 + 1);
    header.set_cksum();
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    layer.builder.append(&header, body.as_slice()).expect("long name");
    layer.raw(b"short", EntryType::Regular, b"", b"x");
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack(&layer.finish(), Compression::None, tmp.path()).expect_err("traversal");
    let text = err.to_string();
    assert!(matches!(err, UnpackError::InvalidName { .. }), "{err:?}");
    assert!(text.len() < 1024, "error of {} bytes", text.len());
    assert!(text.contains("../nnn") && text.contains(&format!("({} bytes)", name.len())), "{text}");
}

#[test]
fn unpack_refuses_oversized_gnu_sparse_maps() {
    // A sparse header whose map goes on for 4096 extension blocks (2 MiB),
    // all of them empty: the crate would keep reading them.
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::GNUSparse);
    header.set_path("sparse").expect("path");
    header.set_size(0);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let gnu = header.as_gnu_mut().expect("gnu header");
    gnu.set_real_size(0);
    gnu.set_is_extended(true);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    let blocks = 4096;
    for i in 0..blocks {
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.set_is_extended(i + 1 < blocks);
        tar.extend(ext.as_bytes());
    }
    tar.extend([0u8; 1024]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack(&tar, Compression::None, tmp.path()).expect_err("oversized sparse map");
    assert!(
        matches!(err, UnpackError::ExtensionTooLarge { kind: Extension::SparseMap, size, .. } if size == MAX_EXTENSION + 512),
        "{err:?}"
    );
    assert!(err.to_string().contains("GNU sparse map header"), "{err}");
}
