//! Container output for the CRI log: the offset contract, and its two ends.
//!
//! The guest captures each container's stdout and stderr, cuts them into
//! [`OutputRecord`]s (one CRI log entry each, see [`LineSplitter`]) and keeps
//! them in an [`OutputBuffer`] until the host acknowledges them. The host
//! writes them to the CRI log file through an [`OutputCursor`].
//!
//! **Exactly once.** Offsets number the container's output bytes, so a
//! record's place never changes and a record sent twice is identical. The
//! host gets each byte into its log file exactly once, across its own
//! restarts and reconnections, by following these rules:
//!
//! 1. Per container it keeps a checkpoint `(offset, log length)`: the end
//!    offset of the last record written and the log file's length just
//!    after it. It writes the checkpoint durably *after* the log bytes it
//!    covers (flushed).
//! 2. On connecting, it truncates the log file to the checkpoint's length
//!    (dropping lines written after the last checkpoint) and sends
//!    `SubscribeOutput { from_offset: offset }`.
//! 3. It passes every record to [`OutputCursor::accept`]: duplicates (a
//!    record resent after a resubscription) are skipped, records are written
//!    in order, and a gap (output the guest had to drop) is reported.
//! 4. After a checkpoint is durable it sends `AckOutput { offset }`; the
//!    guest may then drop the records before `offset`. The guest never drops
//!    unacknowledged output except when its bounded buffer overflows, which
//!    the host sees as a gap, never as a duplicate.
//!
//! When the kubelet reopens the log (rotation) the checkpoint becomes
//! `(offset, 0)` for the new file.

use std::collections::VecDeque;

use crate::message::{MAX_OUTPUT_BATCH, MAX_OUTPUT_RECORD, OutputRecord, OutputStream};

/// Errors of output bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// A record is empty or longer than [`MAX_OUTPUT_RECORD`].
    #[error("output record at offset {offset} has {len} bytes, must have 1 to {MAX_OUTPUT_RECORD}")]
    BadLength {
        /// Its offset.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// A record straddles the written offset: record boundaries changed.
    #[error("output record {offset}..{end} straddles the written offset {written}")]
    Straddles {
        /// Its offset.
        offset: u64,
        /// Its end.
        end: u64,
        /// The cursor's offset.
        written: u64,
    },
    /// An offset beyond the output produced so far, or inside a record.
    #[error("offset {offset} is not a record boundary within the output so far (end {end})")]
    BadOffset {
        /// The offset given.
        offset: u64,
        /// The end of the output.
        end: u64,
    },
}

/// What the host does with a record ([`OutputCursor::accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordAction {
    /// Already written: skip it.
    Skip,
    /// Write it.
    Write,
    /// Write it; `lost` bytes before it were dropped by the guest.
    WriteAfterGap {
        /// Bytes lost.
        lost: u64,
    },
}

/// The host's position in a container's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputCursor {
    written: u64,
}

impl OutputCursor {
    /// A cursor at the checkpoint's offset (0 for a new container).
    pub fn new(written: u64) -> Self {
        Self { written }
    }

    /// The end of the last record written: to checkpoint, acknowledge and
    /// subscribe from.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Decides what to do with the next record received, and advances past
    /// it unless it is skipped.
    pub fn accept(&mut self, record: &OutputRecord) -> Result<RecordAction, OutputError> {
        check_len(record)?;
        let (offset, end) = (record.offset, record.end());
        if end <= self.written {
            return Ok(RecordAction::Skip);
        }
        if offset < self.written {
            return Err(OutputError::Straddles { offset, end, written: self.written });
        }
        let lost = offset - self.written;
        self.written = end;
        Ok(if lost == 0 { RecordAction::Write } else { RecordAction::WriteAfterGap { lost } })
    }
}

fn check_len(record: &OutputRecord) -> Result<(), OutputError> {
    let len = record.data.len();
    if len == 0 || len > MAX_OUTPUT_RECORD {
        return Err(OutputError::BadLength { offset: record.offset, len });
    }
    Ok(())
}

/// The guest's store of a container's output not yet acknowledged, bounded
/// by a byte capacity: past it the oldest records are dropped (the host sees
/// a gap).
#[derive(Debug)]
pub struct OutputBuffer {
    records: VecDeque<OutputRecord>,
    bytes: usize,
    capacity: usize,
    /// Offset of the first byte not yet produced.
    end: u64,
}

impl OutputBuffer {
    /// An empty buffer holding at most `capacity` data bytes.
    pub fn new(capacity: usize) -> Self {
        Self { records: VecDeque::new(), bytes: 0, capacity, end: 0 }
    }

    /// Appends a record of the next `data.len()` output bytes and returns it.
    pub fn push(
        &mut self,
        stream: OutputStream,
        timestamp_ns: u64,
        partial: bool,
        data: Vec<u8>,
    ) -> Result<&OutputRecord, OutputError> {
        let record = OutputRecord { offset: self.end, stream, timestamp_ns, partial, data };
        check_len(&record)?;
        self.end = record.end();
        self.bytes += record.data.len();
        self.records.push_back(record);
        while self.bytes > self.capacity && self.records.len() > 1 {
            self.pop_front();
        }
        self.records.back().ok_or(OutputError::BadOffset { offset: self.end, end: self.end })
    }

    /// Drops the records before `offset`, which the host has written.
    pub fn ack(&mut self, offset: u64) -> Result<(), OutputError> {
        self.check_boundary(offset)?;
        while self.records.front().is_some_and(|r| r.end() <= offset) {
            self.pop_front();
        }
        Ok(())
    }

    /// Where a subscription from `from` starts: `from` itself, or the first
    /// record still held if the ones before it were dropped. `from` must be
    /// a record boundary not beyond the output produced.
    pub fn subscribe(&self, from: u64) -> Result<u64, OutputError> {
        self.check_boundary(from)?;
        Ok(from.max(self.start()))
    }

    /// Records from offset `from` on, at most [`MAX_OUTPUT_BATCH`] data bytes
    /// (at least one record if there is one).
    pub fn batch_from(&self, from: u64) -> Vec<OutputRecord> {
        let first = self.records.partition_point(|r| r.offset < from);
        let mut bytes = 0;
        self.records
            .range(first..)
            .take_while(|r| {
                bytes += r.data.len();
                bytes == r.data.len() || bytes <= MAX_OUTPUT_BATCH
            })
            .cloned()
            .collect()
    }

    /// Offset of the first byte still held.
    pub fn start(&self) -> u64 {
        self.records.front().map_or(self.end, |r| r.offset)
    }

    /// Offset just past the output produced so far.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Data bytes held.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.bytes -= r.data.len();
        }
    }

    fn check_boundary(&self, offset: u64) -> Result<(), OutputError> {
        let inside = self.records.iter().any(|r| r.offset < offset && offset < r.end());
        if offset > self.end || inside {
            return Err(OutputError::BadOffset { offset, end: self.end });
        }
        Ok(())
    }
}

/// Cuts one output stream into CRI log records: a record per line (with its
/// `\n`), lines longer than [`MAX_OUTPUT_RECORD`] split into partial records.
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    /// A splitter with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the stream; `emit(partial, data)` gets each
    /// record completed. An unfinished line waits for more bytes.
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(bool, Vec<u8>)) {
        while !bytes.is_empty() {
            let room = MAX_OUTPUT_RECORD - self.line.len();
            let newline = bytes[..room.min(bytes.len())].iter().position(|b| *b == b'\n');
            let take = newline.map_or(room.min(bytes.len()), |i| i + 1);
            self.line.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if newline.is_some() {
                emit(false, std::mem::take(&mut self.line));
            } else if self.line.len() == MAX_OUTPUT_RECORD {
                emit(true, std::mem::take(&mut self.line));
            }
        }
    }

    /// At the end of the stream: the unfinished line, as a full record
    /// without `\n`.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.line.is_empty()).then(|| std::mem::take(&mut self.line))
    }
}

#[cfg(test)]
mod tests;
