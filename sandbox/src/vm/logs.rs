//! The CRI log of a container in a guest, written on the node from the
//! guest's `Output` events, exactly once across crius restarts.
//!
//! After each batch, the log is synced and a checkpoint (the output offset
//! written up to, the log's length then, and its inode) replaces the
//! previous one atomically; only then is the output acknowledged to the
//! guest. A restarted crius truncates the log back to the checkpoint (what
//! was written after it is written again) and subscribes from its offset.
//! A log kubelet rotated meanwhile (another inode) is not truncated.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use guest_proto::message::{OutputRecord, OutputStream};
use guest_proto::output::{OutputCursor, RecordAction};
use serde::{Deserialize, Serialize};

use crate::logs::{Stream, format_record};

/// Mode of a newly created log file.
const LOG_MODE: u32 = 0o640;

/// Why the log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum GuestLogError {
    /// A file step failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The guest sent a record that overlaps what was written.
    #[error("container output: {0}")]
    Output(#[from] guest_proto::output::OutputError),
}

/// How far the log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Output offset written up to (subscribe and acknowledge from it).
    pub offset: u64,
    /// The log's length once that output was in it.
    pub length: u64,
    /// The log's inode (a rotated log is another file).
    pub inode: u64,
}

/// One container's log on the node.
#[derive(Debug)]
pub struct GuestLog {
    path: PathBuf,
    checkpoint_path: PathBuf,
    file: File,
    cursor: OutputCursor,
}

impl GuestLog {
    /// Opens the log at `path` where the checkpoint at `checkpoint_path` left
    /// it (a new log starts at offset 0).
    pub fn open(path: &Path, checkpoint_path: &Path) -> Result<Self, GuestLogError> {
        let checkpoint = read_checkpoint(checkpoint_path)?;
        let file = open_append(path)?;
        let meta = file.metadata().map_err(io_err("stat", path))?;
        if meta.ino() == checkpoint.inode && meta.len() > checkpoint.length {
            // Written after the checkpoint: it will come again.
            file.set_len(checkpoint.length).map_err(io_err("truncate", path))?;
        }
        Ok(Self {
            path: path.to_owned(),
            checkpoint_path: checkpoint_path.to_owned(),
            file,
            cursor: OutputCursor::new(checkpoint.offset),
        })
    }

    /// The offset to subscribe and acknowledge from.
    pub fn offset(&self) -> u64 {
        self.cursor.offset()
    }

    /// Writes a batch of records (skipping what was written already) and
    /// checkpoints; returns the bytes of output the guest lost before them
    /// (its buffer overflowed while nobody read it).
    pub fn write(&mut self, records: &[OutputRecord]) -> Result<u64, GuestLogError> {
        let mut out = Vec::new();
        let mut lost = 0;
        for record in records {
            match self.cursor.accept(record)? {
                RecordAction::Skip => continue,
                RecordAction::Write => {}
                RecordAction::WriteAfterGap { lost: gap } => lost += gap,
            }
            let stream = match record.stream {
                OutputStream::Stdout => Stream::Stdout,
                OutputStream::Stderr => Stream::Stderr,
            };
            let time = UNIX_EPOCH + Duration::from_nanos(record.timestamp_ns);
            // A full record ends its line with the `\n` the log line adds.
            let content = match record.data.split_last() {
                Some((b'\n', line)) if !record.partial => line,
                _ => &record.data[..],
            };
            format_record(&mut out, time, stream, record.partial, content);
        }
        if out.is_empty() {
            return Ok(lost);
        }
        self.file.write_all(&out).map_err(io_err("write", &self.path))?;
        self.file.sync_data().map_err(io_err("sync", &self.path))?;
        let meta = self.file.metadata().map_err(io_err("stat", &self.path))?;
        let checkpoint = Checkpoint { offset: self.cursor.offset(), length: meta.len(), inode: meta.ino() };
        write_checkpoint(&self.checkpoint_path, &checkpoint)?;
        Ok(lost)
    }

    /// Opens the path again (after kubelet rotated the log).
    pub fn reopen(&mut self) -> Result<(), GuestLogError> {
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GuestLogError + 'a {
    move |source| GuestLogError::Io { op, path: path.to_owned(), source }
}

fn open_append(path: &Path) -> Result<File, GuestLogError> {
    OpenOptions::new().append(true).create(true).mode(LOG_MODE).open(path).map_err(io_err("open", path))
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint, GuestLogError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| GuestLogError::Io {
            op: "decode",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(source) => Err(GuestLogError::Io { op: "read", path: path.to_owned(), source }),
    }
}

fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), GuestLogError> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(checkpoint).map_err(|e| GuestLogError::Io {
        op: "encode",
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&json).and_then(|()| file.sync_data()).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full line's record: its text and `\n`.
    fn record(offset: u64, text: &str) -> OutputRecord {
        OutputRecord {
            offset,
            stream: OutputStream::Stdout,
            timestamp_ns: 1_700_000_000_000_000_000,
            partial: false,
            data: format!("{text}\n").into_bytes(),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("log")
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn a_restart_writes_every_record_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log_path, checkpoint) = (dir.path().join("c.log"), dir.path().join("c.checkpoint"));
        let mut log = GuestLog::open(&log_path, &checkpoint).expect("open");
        assert_eq!(log.write(&[record(0, "one"), record(4, "two")]).expect("write"), 0);
        assert_eq!(log.offset(), 8);
        // Bytes written after the last checkpoint (a crash before it was
        // renamed into place) are taken back at the next open.
        OpenOptions::new()
            .append(true)
            .open(&log_path)
            .and_then(|mut f| f.write_all(b"2023-11-14T22:13:20.000000000Z stdout F three\n"))
            .expect("append");
        drop(log);
        let mut log = GuestLog::open(&log_path, &checkpoint).expect("reopen");
        assert_eq!(log.offset(), 8, "subscribe again from the checkpoint");
        // The guest sends again from 8, and a record already written is skipped.
        log.write(&[record(4, "two"), record(8, "three"), record(14, "four")]).expect("write");
        assert_eq!(lines(&log_path), ["one", "two", "three", "four"], "one line per record, no blank ones");
        let lost = log.write(&[record(100, "late")]).expect("a gap");
        assert_eq!(lost, 81, "the guest's buffer overflowed");
        let mut partial = record(105, "part");
        partial.partial = true;
        partial.data = b"part".to_vec();
        log.write(&[partial]).expect("partial");
        assert!(std::fs::read_to_string(&log_path).expect("log").ends_with(" stdout P part\n"));
    }

    #[test]
    fn a_rotated_log_is_not_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log_path, checkpoint) = (dir.path().join("c.log"), dir.path().join("c.checkpoint"));
        let mut log = GuestLog::open(&log_path, &checkpoint).expect("open");
        log.write(&[record(0, "one")]).expect("write");
        std::fs::rename(&log_path, dir.path().join("c.log.1")).expect("rotate");
        log.reopen().expect("reopen");
        std::fs::write(&log_path, "kept by kubelet\n").expect("new file");
        drop(log);
        let log = GuestLog::open(&log_path, &checkpoint).expect("open");
        assert_eq!(std::fs::read_to_string(&log_path).expect("log"), "kept by kubelet\n");
        assert_eq!(log.offset(), 4);
    }
}
