//! Tests: layers are built in memory with `tar::Builder`; hostile entries
//! are crafted by writing raw header bytes.

mod happy;
mod headers;
mod hostile;
mod limits;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::{Compression, UnpackError, UnpackLimits, UnpackStats, unpack_layer};

/// A fixed, recognisable mtime.
const MTIME: u64 = 1_600_000_000;

/// Builds a layer tarball.
pub(super) struct Layer {
    builder: tar::Builder<Vec<u8>>,
    /// Logical entries appended (PAX and long-name headers not counted).
    pub(super) entries: u64,
}

impl Layer {
    pub(super) fn new() -> Self {
        Self { builder: tar::Builder::new(Vec::new()), entries: 0 }
    }

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header
    }

    /// Appends an entry through the tar crate's path handling (long names
    /// become GNU long-name headers).
    fn push(&mut self, mut header: Header, path: &str, data: &[u8]) -> &mut Self {
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data).expect("append entry");
        self.entries += 1;
        self
    }

    pub(super) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.push(Self::header(EntryType::Directory, mode, 0), path, b"")
    }

    pub(super) fn dir_with(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut header = Self::header(EntryType::Directory, mode, 0);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        self.push(header, path, b"")
    }

    pub(super) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.push(Self::header(EntryType::Regular, 0o644, 0), path, data)
    }

    pub(super) fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut header = Self::header(EntryType::Regular, mode, 0);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        self.push(header, path, data)
    }

    pub(super) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Symlink, target.as_bytes(), b"")
    }

    pub(super) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Link, target.as_bytes(), b"")
    }

    pub(super) fn device(&mut self, path: &str, kind: EntryType, mode: u32, major: u32, minor: u32) -> &mut Self {
        let mut header = Self::header(kind, mode, 0);
        header.set_device_major(major).expect("major");
        header.set_device_minor(minor).expect("minor");
        self.push(header, path, b"")
    }

    /// A PAX extended header describing the next entry.
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body_len = key.len() + value.len() + 3; // space, '=', newline
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut header = Self::header(EntryType::XHeader, 0o644, data.len() as u64);
        header.set_path("PaxHeaders/x").expect("pax path");
        header.set_cksum();
        self.builder.append(&header, data.as_slice()).expect("append pax");
        self
    }

    /// An entry whose name and link name are written as raw bytes,
    /// bypassing the tar crate's checks (`..`, absolute paths).
    pub(super) fn raw(&mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> &mut Self {
        let mut header = Self::header(kind, if kind == EntryType::Symlink { 0o777 } else { 0o644 }, 0);
        header.set_size(data.len() as u64);
        let old = header.as_old_mut();
        assert!(name.len() <= old.name.len() && link.len() <= old.linkname.len(), "raw names fit the header");
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        self.builder.append(&header, data).expect("append raw entry");
        self.entries += 1;
        self
    }

    /// The tar bytes, end-of-archive blocks included.
    pub(super) fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip finish")
}

pub(super) fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).expect("zstd")
}

pub(super) fn unpack(data: &[u8], compression: Compression, dest: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_layer(data, compression, dest, &UnpackLimits::default())
}

/// `tmp/outside/sentinel` and an empty `tmp/dest/`.
pub(super) struct Sandbox {
    pub(super) tmp: tempfile::TempDir,
    pub(super) dest: PathBuf,
    pub(super) outside: PathBuf,
}

impl Sandbox {
    pub(super) fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("sentinel"), b"original").expect("sentinel");
        std::fs::create_dir(&dest).expect("dest");
        Self { tmp, dest, outside }
    }

    /// Everything under `tmp` except `dest` and its subtree: type, mode, owner,
    /// link count, mtime and content or link target.
    pub(super) fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        walk(self.tmp.path(), &self.dest, &mut out);
        out
    }
}

fn walk(path: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    if path == skip {
        return;
    }
    let meta = std::fs::symlink_metadata(path).expect("lstat");
    let mut text = format!(
        "{:?} mode={:o} uid={} gid={} nlink={} size={} mtime={}.{}",
        meta.file_type(),
        meta.mode(),
        meta.uid(),
        meta.gid(),
        meta.nlink(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    if meta.file_type().is_symlink() {
        text += &format!(" -> {:?}", std::fs::read_link(path).expect("readlink"));
    } else if meta.is_file() {
        text += &format!(" content={:?}", std::fs::read(path).expect("read"));
    }
    out.insert(path.to_owned(), text);
    if meta.is_dir() {
        for child in std::fs::read_dir(path).expect("read_dir") {
            walk(&child.expect("dir entry").path(), skip, out);
        }
    }
}
