//! Reading the monitor's CRI log file back into output records.
//!
//! The container's monitor (the namespace runtime's) already cuts the
//! output into CRI log entries (`<timestamp> <stream> <P|F> <content>\n`,
//! see `crius_sandbox::logs`); the guest tails that file and turns each
//! entry into one [`guest_proto::message::OutputRecord`] of the entry's
//! bytes: the content, plus the `\n` a full (`F`) entry ended with. Records
//! are numbered by the output-buffer (data bytes, not file bytes), so the
//! file can be rotated and truncated freely.
//!
//! An `F` entry always gets its `\n` back, so a stream that ended without
//! one (the monitor writes that text as a final `P` entry) keeps it `P`.

use guest_proto::message::{MAX_OUTPUT_RECORD, OutputStream};

/// Longest entry accepted: the monitor's 16 KiB of content plus the
/// header. A longer run of bytes without `\n` is not the monitor's format:
/// it is dropped up to the next `\n`.
pub const MAX_ENTRY: usize = 32 * 1024;

/// One record's worth of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stdout or stderr.
    pub stream: OutputStream,
    /// The entry's timestamp, ns since the epoch.
    pub timestamp_ns: u64,
    /// Part of a longer line.
    pub partial: bool,
    /// 1 to [`MAX_OUTPUT_RECORD`] bytes.
    pub data: Vec<u8>,
}

/// Assembles entries from file chunks of any size.
#[derive(Debug, Default)]
pub struct EntryReader {
    line: Vec<u8>,
    /// Dropping bytes up to the next `\n` (an overlong entry).
    skipping: bool,
    /// Entries dropped as malformed or overlong.
    pub dropped: u64,
}

impl EntryReader {
    /// A reader at an entry boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the file; `emit` gets the records of every
    /// complete entry, in order.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Record)) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|b| *b == b'\n');
            let take = newline.map_or(bytes.len(), |i| i + 1);
            let (chunk, rest) = bytes.split_at(take);
            bytes = rest;
            if self.skipping {
                self.skipping = newline.is_none();
                continue;
            }
            if self.line.len() + chunk.len() > MAX_ENTRY + 1 {
                self.line.clear();
                self.dropped += 1;
                self.skipping = newline.is_none();
                continue;
            }
            self.line.extend_from_slice(chunk);
            if newline.is_some() {
                let line = std::mem::take(&mut self.line);
                if !entry_records(&line, &mut emit) {
                    self.dropped += 1;
                }
            }
        }
    }

    /// Whether an entry is incomplete (bytes after the last `\n`).
    pub fn pending(&self) -> bool {
        !self.line.is_empty()
    }
}

/// The records of one entry (with its `\n`); false when it is malformed.
fn entry_records(line: &[u8], emit: &mut impl FnMut(Record)) -> bool {
    let Some(line) = line.strip_suffix(b"\n") else { return false };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(stamp), Some(stream), Some(tag), Some(content)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let stream = match stream {
        b"stdout" => OutputStream::Stdout,
        b"stderr" => OutputStream::Stderr,
        _ => return false,
    };
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return false,
    };
    let Some(timestamp) = std::str::from_utf8(stamp).ok().and_then(crius_sandbox::logs::parse_timestamp) else {
        return false;
    };
    let timestamp_ns = u64::try_from(timestamp).unwrap_or(0);
    let mut data = content.to_vec();
    if !partial {
        data.push(b'\n');
    }
    let count = data.len().div_ceil(MAX_OUTPUT_RECORD);
    for (i, chunk) in data.chunks(MAX_OUTPUT_RECORD).enumerate() {
        let last = i + 1 == count;
        emit(Record { stream, timestamp_ns, partial: partial || !last, data: chunk.to_vec() });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: &str = "2026-11-22T21:41:07.123456789Z";
    const NS: u64 = 1_795_383_667_123_456_789;

    fn read(chunks: &[&[u8]]) -> (Vec<Record>, EntryReader) {
        let mut reader = EntryReader::new();
        let mut out = Vec::new();
        for chunk in chunks {
            reader.push(chunk, |r| out.push(r));
        }
        (out, reader)
    }

    fn rec(stream: OutputStream, partial: bool, data: &[u8]) -> Record {
        Record { stream, timestamp_ns: NS, partial, data: data.to_vec() }
    }

    #[test]
    fn entries_become_records_with_their_newline() {
        let text = format!("{STAMP} stdout F hello\n{STAMP} stderr P par\n{STAMP} stderr F tial\n{STAMP} stdout F \n");
        let (records, reader) = read(&[text.as_bytes()]);
        assert_eq!(
            records,
            vec![
                rec(OutputStream::Stdout, false, b"hello\n"),
                rec(OutputStream::Stderr, true, b"par"),
                rec(OutputStream::Stderr, false, b"tial\n"),
                rec(OutputStream::Stdout, false, b"\n"),
            ]
        );
        assert!(!reader.pending());
    }

    #[test]
    fn entries_may_arrive_in_pieces_and_hold_any_bytes() {
        let mut text = format!("{STAMP} stdout F ").into_bytes();
        text.extend_from_slice(&[0xff, 0xfe, b' ', b'x']);
        text.push(b'\n');
        let pieces: Vec<&[u8]> = text.chunks(3).collect();
        let (records, _) = read(&pieces[..pieces.len() - 1]);
        assert!(records.is_empty(), "nothing before the newline");
        let (records, _) = read(&pieces);
        assert_eq!(records, vec![rec(OutputStream::Stdout, false, &[0xff, 0xfe, b' ', b'x', b'\n'])]);
    }

    #[test]
    fn a_full_line_of_the_largest_size_is_cut_before_its_newline() {
        let content = "a".repeat(MAX_OUTPUT_RECORD);
        let text = format!("{STAMP} stdout F {content}\n");
        let (records, _) = read(&[text.as_bytes()]);
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].partial, records[0].data.len()), (true, MAX_OUTPUT_RECORD));
        assert_eq!(records[1], rec(OutputStream::Stdout, false, b"\n"));
    }

    #[test]
    fn malformed_and_overlong_entries_are_dropped() {
        let bad = [
            format!("{STAMP} stdin F x\n"),
            format!("{STAMP} stdout X x\n"),
            "not-a-time stdout F x\n".to_owned(),
            format!("{STAMP} stdout\n"),
            format!("{STAMP} stdout P \n"),
        ];
        let long = format!("{STAMP} stdout F {}\n", "b".repeat(MAX_ENTRY));
        let good = format!("{STAMP} stdout F ok\n");
        let mut chunks: Vec<&[u8]> = bad.iter().map(|s| s.as_bytes()).collect();
        chunks.extend(long.as_bytes().chunks(1000));
        chunks.push(good.as_bytes());
        let (records, reader) = read(&chunks);
        assert_eq!(records, vec![rec(OutputStream::Stdout, false, b"ok\n")]);
        assert_eq!(reader.dropped, 5, "the empty P entry makes no record but is well formed");
    }
}
