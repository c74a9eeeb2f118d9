//! A bound on tar extension headers: GNU long names (`L`), GNU long link
//! names (`K`), PAX records (`x`) and the extension blocks of GNU sparse
//! maps.
//!
//! The tar crate reads the body of each of these whole into a `Vec` before
//! it yields the entry they describe, whatever size the header declares: a
//! 1 GB long name costs a gigabyte (more while the `Vec` doubles). Go's
//! archive/tar, and so docker and containerd, refuse these bodies past 1 MiB
//! (`maxSpecialFileSize`); so does crius, with [`MAX_EXTENSION`].
//!
//! [`HeaderBound`] sits between the decompressed stream and the tar crate
//! and follows the archive's block framing exactly as the crate does: a
//! header block, then the data rounded up to 512 bytes, where the data size
//! is the header's unless a PAX `size` record overrides it (not for
//! extension headers themselves), and a GNU sparse header is followed by its
//! extension blocks before the data. When a header block declares an
//! extension body larger than the limit, the next read (the crate asking for
//! that body) fails, so the crate never allocates for it. A GNU sparse map
//! (which the crate keeps as a list of regions, 21 per extension block) is
//! held to the same limit: its extension blocks stop after 1 MiB.
//!
//! Why not the crate's raw mode, handling the extensions ourselves: raw mode
//! frames a GNU sparse entry with extension blocks wrongly (only the
//! processed mode reads those blocks), so we would have to replace the
//! crate's reader altogether. Following its framing needs only sizes. The
//! two must not drift apart: every entry the crate yields is checked against
//! the header position this reader expected ([`Framing::entry_header`]), so
//! a disagreement fails the layer instead of silently skipping the bound.

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

/// Largest body of a GNU long-name, long-link or PAX header (Go's
/// archive/tar limit).
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// A kind of extension header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// GNU long name (`L`).
    LongName,
    /// GNU long link name (`K`).
    LongLink,
    /// PAX extended header (`x`).
    Pax,
    /// The extension blocks of a GNU sparse map.
    SparseMap,
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LongName => "GNU long name",
            Self::LongLink => "GNU long link name",
            Self::Pax => "PAX",
            Self::SparseMap => "GNU sparse map",
        })
    }
}

/// What the reader found, shared with the unpack loop.
#[derive(Debug, Default)]
pub(super) struct Framing {
    /// An extension header over the limit, with its declared size.
    pub(super) refused: Cell<Option<(Extension, u64)>>,
    /// Position of the last header that is not an extension header: the
    /// entry the crate yields next must start there.
    pub(super) entry_header: Cell<Option<u64>>,
}

/// What the reader expects at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A header block.
    Header,
    /// A GNU sparse extension block, the `index`th (from 1); `stored` data
    /// bytes follow the last one.
    SparseExt { stored: u64, index: u64 },
    /// The body of a PAX header (kept: it may set the next entry's size).
    PaxBody { len: u64 },
    /// An extension header over the limit: its body is never read.
    Refused,
    /// The end of the archive, or a header the crate fails on: the rest is
    /// passed through.
    Done,
}

/// Follows the tar framing of the stream it wraps and refuses oversized
/// extension bodies (see the module docs).
pub(super) struct HeaderBound<R> {
    pub(super) inner: R,
    /// Bytes passed on so far.
    pos: u64,
    /// Where the structure `next` starts.
    at: u64,
    next: Next,
    /// The bytes of that structure read so far.
    buf: Vec<u8>,
    /// PAX records for the next header.
    pax: Option<Vec<u8>>,
    framing: Rc<Framing>,
}

impl<R: Read> HeaderBound<R> {
    pub(super) fn new(inner: R, framing: Rc<Framing>) -> Self {
        Self { inner, pos: 0, at: 0, next: Next::Header, buf: Vec::with_capacity(BLOCK as usize), pax: None, framing }
    }

    /// Length of the structure at `at` that is captured, if any.
    fn captured_len(&self) -> Option<u64> {
        match self.next {
            Next::Header | Next::SparseExt { .. } => Some(BLOCK),
            Next::PaxBody { len } => Some(len),
            Next::Refused | Next::Done => None,
        }
    }

    /// Moves on to `next` at `at`; a PAX body of length 0 is complete at once.
    fn expect(&mut self, at: Option<u64>, next: Next) {
        self.buf.clear();
        match at {
            None => self.next = Next::Done,
            Some(at) => {
                self.at = at;
                self.next = next;
                if next == (Next::PaxBody { len: 0 }) {
                    self.pax = Some(Vec::new());
                    self.next = Next::Header;
                }
            }
        }
    }

    /// The structure at `at` is complete in `buf`.
    fn complete(&mut self) {
        match self.next {
            Next::Header => self.header(),
            Next::SparseExt { stored, index } => {
                let mut ext = tar::GnuExtSparseHeader::new();
                ext.as_mut_bytes().copy_from_slice(&self.buf);
                let after = self.at + BLOCK;
                if ext.is_extended() {
                    let read = (index + 1) * BLOCK;
                    if read > MAX_EXTENSION {
                        self.framing.refused.set(Some((Extension::SparseMap, read)));
                        self.next = Next::Refused;
                        return;
                    }
                    self.expect(Some(after), Next::SparseExt { stored, index: index + 1 });
                } else {
                    self.expect(padded(stored).and_then(|s| after.checked_add(s)), Next::Header);
                }
            }
            Next::PaxBody { len } => {
                self.pax = Some(std::mem::take(&mut self.buf));
                self.expect(padded(len).and_then(|l| self.at.checked_add(l)), Next::Header);
            }
            Next::Refused | Next::Done => {}
        }
    }

    /// A header block: as the crate's `next_entry` reads it.
    fn header(&mut self) {
        let block = std::mem::take(&mut self.buf);
        let header = tar::Header::from_byte_slice(&block);
        // The end of the archive, or a checksum the crate refuses.
        if block.iter().all(|b| *b == 0) || !checksum_ok(&block, header) {
            return self.expect(None, Next::Done);
        }
        let kind = header.entry_type();
        let Ok(size) = header.entry_size() else { return self.expect(None, Next::Done) };
        let body = self.at + BLOCK;
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension = match kind {
            _ if !recognized => None,
            _ if kind.is_gnu_longname() => Some(Extension::LongName),
            _ if kind.is_gnu_longlink() => Some(Extension::LongLink),
            _ if kind.is_pax_local_extensions() => Some(Extension::Pax),
            _ => None,
        };
        if let Some(extension) = extension {
            if size > MAX_EXTENSION {
                self.framing.refused.set(Some((extension, size)));
                self.next = Next::Refused;
                return;
            }
            if extension == Extension::Pax {
                if self.pax.is_some() {
                    // Two PAX headers for one entry: the crate refuses it.
                    return self.expect(None, Next::Done);
                }
                return self.expect(Some(body), Next::PaxBody { len: size });
            }
            return self.expect(padded(size).and_then(|s| body.checked_add(s)), Next::Header);
        }
        // An entry the crate yields. Its PAX `size` overrides the header's,
        // except for the types the crate counts as extension headers.
        let is_extension_type = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        let pax = self.pax.take();
        let size = match pax.as_deref() {
            Some(records) if !is_extension_type => pax_size(records).unwrap_or(size),
            _ => size,
        };
        self.framing.entry_header.set(Some(self.at));
        if kind.is_gnu_sparse() {
            match header.as_gnu() {
                Some(gnu) if gnu.is_extended() => {
                    return self.expect(Some(body), Next::SparseExt { stored: size, index: 1 });
                }
                Some(_) => {}
                None => return self.expect(None, Next::Done),
            }
        }
        self.expect(padded(size).and_then(|s| body.checked_add(s)), Next::Header);
    }
}

impl<R: Read> Read for HeaderBound<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let (Next::Refused, Some((extension, size))) = (self.next, self.framing.refused.get()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{extension} header of {size} bytes exceeds the limit of {MAX_EXTENSION} bytes"),
            ));
        }
        // A read never crosses the start or the end of a captured
        // structure, so each decision is made before the crate reads on.
        let room = match self.captured_len() {
            Some(_) if self.pos < self.at => self.at - self.pos,
            Some(len) => self.at + len - self.pos,
            None => u64::MAX,
        };
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(out.len());
        let n = self.inner.read(&mut out[..want])?;
        if n > 0 && self.captured_len().is_some() && self.pos >= self.at {
            self.buf.extend_from_slice(&out[..n]);
        }
        self.pos += n as u64;
        if self.captured_len().is_some_and(|len| self.pos == self.at + len && self.buf.len() as u64 == len) {
            self.complete();
        }
        Ok(n)
    }
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> Option<u64> {
    size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1))
}

/// The header checksum as the crate checks it (the checksum field counted
/// as spaces).
fn checksum_ok(block: &[u8], header: &tar::Header) -> bool {
    let sum: u32 = block[..148].iter().chain(&block[156..]).map(|b| u32::from(*b)).sum::<u32>() + 8 * 32;
    header.cksum().is_ok_and(|stored| stored == sum)
}

/// The PAX `size` record as the crate reads it: the first `size` key, and
/// none at all when a record before it or its value is malformed.
fn pax_size(records: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.ok()?;
        if record.key() != Ok("size") {
            continue;
        }
        return record.value().ok()?.parse().ok();
    }
    None
}
