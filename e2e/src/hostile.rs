//! Hostile image parts for the e2e tests and the RSS benchmark: tars with
//! oversized GNU long names or PAX headers, decompression bombs and image
//! configs of any size. They are described as [`Parts`], so that ones of
//! gigabytes are hashed, gzipped and served as streams, in a few megabytes.

use std::io::{self, Read, Write};

use crius_images::Digest;
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

/// A piece of a generated stream.
#[derive(Debug, Clone)]
pub enum Part {
    /// These bytes.
    Bytes(Vec<u8>),
    /// One byte, this many times.
    Repeat(u8, u64),
}

/// A stream made of parts, never held whole.
#[derive(Debug, Clone, Default)]
pub struct Parts(pub Vec<Part>);

impl Parts {
    /// Its length.
    pub fn len(&self) -> u64 {
        self.0.iter().map(part_len).sum()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, read as a stream.
    pub fn reader(&self) -> impl Read + Send + 'static {
        let mut reader: Box<dyn Read + Send> = Box::new(io::empty());
        for part in self.0.clone() {
            reader = match part {
                Part::Bytes(bytes) => Box::new(reader.chain(io::Cursor::new(bytes))),
                Part::Repeat(byte, n) => Box::new(reader.chain(io::repeat(byte).take(n))),
            };
        }
        reader
    }

    /// The whole stream in memory (for small ones).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.reader().read_to_end(&mut out).expect("read parts");
        out
    }

    /// Its sha256, hashed as a stream.
    pub fn sha256(&self) -> Digest {
        let mut hasher = Sha256::new();
        let mut reader = self.reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).expect("read parts");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}").parse().expect("digest")
    }

    /// gzip of the stream as concatenated gzip members (which every gzip
    /// reader, crius's included, reads as one stream): a repeated byte is
    /// compressed one MiB at a time, once, and that member repeated. A GiB
    /// of one byte costs about a MB.
    pub fn gzip(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in &self.0 {
            match part {
                Part::Bytes(bytes) => out.extend(gzip_member(bytes)),
                Part::Repeat(byte, n) => {
                    let member = gzip_member(&vec![*byte; MIB as usize]);
                    for _ in 0..n / MIB {
                        out.extend(&member);
                    }
                    let rest = usize::try_from(n % MIB).expect("small");
                    if rest > 0 {
                        out.extend(gzip_member(&vec![*byte; rest]));
                    }
                }
            }
        }
        out
    }
}

fn part_len(part: &Part) -> u64 {
    match part {
        Part::Repeat(_, n) => *n,
        Part::Bytes(b) => b.len() as u64,
    }
}

fn gzip_member(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A tar header block of `kind` for `name` with `size` data bytes.
pub fn header(kind: tar::EntryType, name: &str, size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_path(name).expect("header path");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// Zero padding after `size` data bytes, to the next 512-byte block.
fn padding(size: u64) -> Part {
    Part::Repeat(0, size.next_multiple_of(512) - size)
}

/// The end of a tar: one small file (so the layer is not empty) and the
/// two zero blocks.
fn tail() -> Vec<Part> {
    vec![
        Part::Bytes(header(tar::EntryType::Regular, "file", 2)),
        Part::Bytes(b"ok".to_vec()),
        padding(2),
        Part::Repeat(0, 1024),
    ]
}

/// A tar whose first entry has a GNU long name (`L`) or long link name
/// (`K`) of `size` bytes of `a`.
pub fn long_name_tar(kind: tar::EntryType, size: u64) -> Parts {
    let mut parts = vec![Part::Bytes(header(kind, "././@LongLink", size)), Part::Repeat(b'a', size), padding(size)];
    parts.extend(tail());
    Parts(parts)
}

/// A tar whose first entry has a PAX header of `size` bytes: one
/// `comment` record of `a`s.
pub fn pax_tar(size: u64) -> Parts {
    let digits = size.to_string().len() as u64;
    let key = b" comment=";
    let value = size - digits - key.len() as u64 - 1;
    let mut record = size.to_string().into_bytes();
    record.extend(key);
    let mut parts = vec![Part::Bytes(header(tar::EntryType::XHeader, "PaxHeaders/file", size)), Part::Bytes(record)];
    parts.extend([Part::Repeat(b'a', value), Part::Bytes(b"\n".to_vec()), padding(size)]);
    parts.extend(tail());
    Parts(parts)
}

/// A tar holding one file of `size` zero bytes: a decompression bomb once
/// gzipped (about 1 KB per MiB).
pub fn bomb_tar(size: u64) -> Parts {
    let mut parts =
        vec![Part::Bytes(header(tar::EntryType::Regular, "zeros", size)), Part::Repeat(0, size), padding(size)];
    parts.extend(tail());
    Parts(parts)
}

/// A valid image config of exactly `size` bytes (padded with a history
/// comment) listing `diff_ids`.
pub fn config_of_size(size: u64, arch: &str, diff_ids: &[Digest]) -> Parts {
    let ids: Vec<String> = diff_ids.iter().map(ToString::to_string).collect();
    let head = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": ids },
    })
    .to_string();
    // `{...,"history":[{"comment":"aaa"}]}`
    let head = format!("{},\"history\":[{{\"comment\":\"", head.strip_suffix('}').expect("a JSON object"));
    let end = "\"}]}";
    let fill = size.checked_sub((head.len() + end.len()) as u64).expect("config size too small");
    Parts(vec![Part::Bytes(head.into_bytes()), Part::Repeat(b'a', fill), Part::Bytes(end.as_bytes().to_vec())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_hash_and_gzip_as_their_bytes() {
        let parts = long_name_tar(tar::EntryType::GNULongName, 3 * MIB + 5);
        let bytes = parts.to_vec();
        assert_eq!(bytes.len() as u64, parts.len());
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(parts.sha256(), crate::images::sha256(&bytes));
        let mut unzipped = Vec::new();
        flate2::read::MultiGzDecoder::new(&parts.gzip()[..]).read_to_end(&mut unzipped).expect("gunzip");
        assert_eq!(unzipped, bytes);
        let config = config_of_size(4096, "amd64", &[parts.sha256()]).to_vec();
        assert_eq!(config.len(), 4096);
        crius_images::registry::manifest::parse_config(&config).expect("a valid image config");
        let pax = pax_tar(10_000).to_vec();
        assert!(pax[512..].starts_with(b"10000 comment=aaa") && pax[512 + 9_999] == b'\n');
    }
}
