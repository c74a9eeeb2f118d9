//! The CRI container log format kubelet reads, written by the monitor.
//!
//! Each record is `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <content>\n`.
//! Content is the line without its `\n` (a `\r` before it is kept, as
//! containerd does). A line longer than [`MAX_LINE`] bytes is cut into `P`
//! (partial) records of [`MAX_LINE`] bytes followed by one `F` (full) record
//! with the rest; text left without a newline when a stream ends is written as
//! a final `P` record. [`parse_line`] reads records back the way kubelet does.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record (kubelet's default `containerLogMaxLineSize`
/// in containerd and CRI-O: 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Mode of a newly created log file.
const LOG_MODE: u32 = 0o640;

/// Which output stream a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The container's standard output (and a terminal's output).
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    /// The stream's name in a record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Failures to write a container log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened (or created).
    #[error("open container log {}", path.display())]
    Open {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Records could not be written.
    #[error("write container log {}", path.display())]
    Write {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Writes the output of one container to its CRI log file.
///
/// Each call writes whole records with one `write` to a file opened with
/// `O_APPEND`, so records of the two streams never interleave inside a line.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    /// Bytes of an unfinished line, per stream (at most [`MAX_LINE`]).
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens `path` for appending, creating it with mode 0640 when missing.
    /// The parent directory must exist (kubelet makes it).
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let file = open_append(path)?;
        Ok(LogWriter { path: path.to_owned(), file, pending: [Vec::new(), Vec::new()] })
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds output of `stream`: every completed line is written (split into
    /// `P` records when longer than [`MAX_LINE`]); the unfinished rest is kept
    /// until its newline, more output, or [`flush_partial`](Self::flush_partial).
    pub fn write_chunk(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), LogError> {
        let pending = &mut self.pending[stream.index()];
        pending.extend_from_slice(bytes);
        let stamp = format_timestamp(SystemTime::now());
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(offset) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + offset;
            while end - start > MAX_LINE {
                push_record(&mut out, &stamp, stream, true, &pending[start..start + MAX_LINE]);
                start += MAX_LINE;
            }
            push_record(&mut out, &stamp, stream, false, &pending[start..end]);
            start = end + 1;
        }
        while pending.len() - start > MAX_LINE {
            push_record(&mut out, &stamp, stream, true, &pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        pending.drain(..start);
        self.write_out(&out)
    }

    /// Writes the unfinished line of `stream`, if any, as a `P` record (at the
    /// end of the stream).
    pub fn flush_partial(&mut self, stream: Stream) -> Result<(), LogError> {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if pending.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(pending.len() + 48);
        push_record(&mut out, &format_timestamp(SystemTime::now()), stream, true, &pending);
        self.write_out(&out)
    }

    /// Closes the file and opens the path again (CRI `ReopenContainerLog`):
    /// after a rename the following records go to a new file at the path.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        self.file = open_append(&self.path)?;
        Ok(())
    }

    fn write_out(&mut self, out: &[u8]) -> Result<(), LogError> {
        if out.is_empty() {
            return Ok(());
        }
        self.file.write_all(out).map_err(|source| LogError::Write { path: self.path.clone(), source })
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_MODE)
        .open(path)
        .map_err(|source| LogError::Open { path: path.to_owned(), source })
}

/// Appends one record to `out`: the content (without its newline) of
/// `stream` at `time`, `P` when `partial`.
pub fn format_record(out: &mut Vec<u8>, time: SystemTime, stream: Stream, partial: bool, content: &[u8]) {
    push_record(out, &format_timestamp(time), stream, partial, content);
}

fn push_record(out: &mut Vec<u8>, stamp: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.extend_from_slice(stamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// One record read back by [`parse_line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The timestamp, nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The stream.
    pub stream: Stream,
    /// `P`: the line continues in the next record of the stream.
    pub partial: bool,
    /// The content, without the record's newline.
    pub content: &'a str,
}

/// Parses one record (with or without its trailing `\n`) as kubelet does:
/// the tag may carry more `:`-separated fields after `P`/`F`, which are
/// ignored. `None` when the record is malformed.
pub fn parse_line(line: &str) -> Option<LogLine<'_>> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (stamp, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    let (tag, content) = rest.split_once(' ')?;
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match tag.split(':').next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    Some(LogLine { timestamp_ns: parse_timestamp(stamp)?, stream, partial, content })
}

/// Formats `t` as RFC 3339 in UTC with nine fractional digits:
/// `2026-11-22T21:41:07.123456789Z`. Times before the epoch are clamped to it.
pub fn format_timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX / 2);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Parses an RFC 3339 timestamp (`Z` or a `±hh:mm` offset, 0 to 9
/// fractional digits) into nanoseconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = s.get(from..to)?;
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 || len > 9 {
            return None;
        }
        nanos = frac[..len].parse::<i64>().ok()? * 10i64.pow(9 - u32::try_from(len).ok()?);
        rest = &frac[len..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (h, m) = (rest[1..3].parse::<i64>().ok()?, rest[4..6].parse::<i64>().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01 (Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn records(path: &Path) -> Vec<(Stream, bool, String)> {
        let text = std::fs::read_to_string(path).expect("read log");
        // Not `lines()`: it would strip the `\r` of the content.
        text.split_terminator('\n')
            .map(|l| {
                let r = parse_line(l).unwrap_or_else(|| panic!("malformed record {l:?}"));
                (r.stream, r.partial, r.content.to_owned())
            })
            .collect()
    }

    fn writer() -> (tempfile::TempDir, PathBuf, LogWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let w = LogWriter::open(&path).expect("open");
        (dir, path, w)
    }

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_795_383_667, 123_456_789);
        assert_eq!(format_timestamp(t), "2026-11-22T21:41:07.123456789Z");
        assert_eq!(format_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(parse_timestamp("2026-11-22T21:41:07.123456789Z"), Some(1_795_383_667_123_456_789));
        assert_eq!(parse_timestamp("2026-11-22T22:41:07.5+01:00"), Some(1_795_383_667_500_000_000));
        assert_eq!(parse_timestamp("2026-11-22T21:41:07Z"), Some(1_795_383_667_000_000_000));
        for bad in ["2026-11-22 21:41:07Z", "2026-13-22T21:41:07Z", "2026-11-22T21:41:07.Z", "x"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        let now = SystemTime::now();
        let ns = i64::try_from(now.duration_since(UNIX_EPOCH).expect("after epoch").as_nanos()).expect("fits");
        assert_eq!(parse_timestamp(&format_timestamp(now)), Some(ns));
    }

    #[test]
    fn parse_follows_kubelet() {
        let l = parse_line("2026-11-22T21:41:07.123456789Z stderr P:x some text \n").expect("parse");
        assert_eq!((l.stream, l.partial, l.content), (Stream::Stderr, true, "some text "));
        let l = parse_line("2026-11-22T21:41:07.123456789Z stdout F ").expect("empty content");
        assert_eq!((l.partial, l.content), (false, ""));
        assert!(parse_line("2026-11-22T21:41:07.123456789Z stdin F x").is_none());
        assert!(parse_line("2026-11-22T21:41:07.123456789Z stdout X x").is_none());
        assert!(parse_line("2026-11-22T21:41:07.123456789Z stdout").is_none());
    }

    #[test]
    fn lines_are_split_on_newlines_and_crlf_is_content() {
        let (_dir, path, mut w) = writer();
        w.write_chunk(Stream::Stdout, b"one\ntw").expect("write");
        w.write_chunk(Stream::Stdout, b"o\r\n\nthree").expect("write");
        assert_eq!(records(&path).len(), 3, "the unfinished line is held back");
        w.flush_partial(Stream::Stdout).expect("flush");
        w.flush_partial(Stream::Stdout).expect("nothing left");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.lines().all(|l| l.len() > 31 && l.as_bytes()[29] == b'Z' && l.as_bytes()[30] == b' '), "{text}");
        assert_eq!(
            records(&path),
            vec![
                (Stream::Stdout, false, "one".into()),
                (Stream::Stdout, false, "two\r".into()),
                (Stream::Stdout, false, String::new()),
                (Stream::Stdout, true, "three".into()),
            ]
        );
    }

    #[test]
    fn long_lines_are_cut_into_partial_records() {
        let (_dir, path, mut w) = writer();
        let line = vec![b'a'; 2 * MAX_LINE + 100];
        for chunk in line.chunks(4096) {
            w.write_chunk(Stream::Stdout, chunk).expect("write");
        }
        assert_eq!(records(&path).len(), 2, "full partial records go out before the newline");
        w.write_chunk(Stream::Stdout, b"\n").expect("newline");
        w.write_chunk(Stream::Stdout, &[b'b'; MAX_LINE]).expect("exactly the limit");
        w.write_chunk(Stream::Stdout, b"\n").expect("newline");
        let got: Vec<_> = records(&path).into_iter().map(|(_, p, c)| (p, c.len())).collect();
        assert_eq!(got, vec![(true, MAX_LINE), (true, MAX_LINE), (false, 100), (false, MAX_LINE)]);
    }

    #[test]
    fn streams_are_buffered_separately() {
        let (_dir, path, mut w) = writer();
        w.write_chunk(Stream::Stdout, b"out-").expect("write");
        w.write_chunk(Stream::Stderr, b"err-").expect("write");
        w.write_chunk(Stream::Stdout, b"1\n").expect("write");
        w.write_chunk(Stream::Stderr, b"1\nerr-2").expect("write");
        w.flush_partial(Stream::Stderr).expect("flush");
        assert_eq!(
            records(&path),
            vec![
                (Stream::Stdout, false, "out-1".into()),
                (Stream::Stderr, false, "err-1".into()),
                (Stream::Stderr, true, "err-2".into()),
            ]
        );
    }

    #[test]
    fn reopen_after_rename_writes_a_new_file() {
        let (dir, path, mut w) = writer();
        w.write_chunk(Stream::Stdout, b"before\n").expect("write");
        let rotated = dir.path().join("c.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        w.write_chunk(Stream::Stdout, b"late\n").expect("write to the renamed file");
        w.reopen().expect("reopen");
        w.write_chunk(Stream::Stdout, b"after\n").expect("write");
        let contents = |p: &Path| records(p).into_iter().map(|(_, _, c)| c).collect::<Vec<_>>();
        assert_eq!(contents(&rotated), ["before", "late"]);
        assert_eq!(contents(&path), ["after"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
    }
}
