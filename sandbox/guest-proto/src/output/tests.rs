use super::*;
use crate::testutil::Rng;

fn record(offset: u64, data: &[u8]) -> OutputRecord {
    OutputRecord { offset, stream: OutputStream::Stdout, timestamp_ns: 1, partial: false, data: data.to_vec() }
}

#[test]
fn cursor_writes_skips_and_reports_gaps() {
    let mut cursor = OutputCursor::new(10);
    assert_eq!(cursor.accept(&record(0, b"0123456789")), Ok(RecordAction::Skip));
    assert_eq!(cursor.accept(&record(10, b"abc")), Ok(RecordAction::Write));
    assert_eq!(cursor.offset(), 13);
    assert_eq!(cursor.accept(&record(10, b"abc")), Ok(RecordAction::Skip));
    assert_eq!(cursor.accept(&record(20, b"x")), Ok(RecordAction::WriteAfterGap { lost: 7 }));
    assert_eq!(cursor.offset(), 21);
    assert!(matches!(cursor.accept(&record(19, b"abc")), Err(OutputError::Straddles { .. })));
    assert!(matches!(cursor.accept(&record(21, b"")), Err(OutputError::BadLength { .. })));
    let long = vec![b'x'; MAX_OUTPUT_RECORD + 1];
    assert!(matches!(cursor.accept(&record(21, &long)), Err(OutputError::BadLength { .. })));
    assert_eq!(cursor.offset(), 21);
}

#[test]
fn buffer_numbers_records_and_drops_what_is_acked() {
    let mut buffer = OutputBuffer::new(1 << 20);
    for line in [&b"one\n"[..], b"two\n", b"three\n"] {
        buffer.push(OutputStream::Stderr, 5, false, line.to_vec()).expect("pushed");
    }
    assert_eq!((buffer.start(), buffer.end(), buffer.held_bytes()), (0, 14, 14));
    assert_eq!(buffer.batch_from(4).iter().map(|r| r.offset).collect::<Vec<_>>(), [4, 8]);
    assert!(matches!(buffer.ack(5), Err(OutputError::BadOffset { .. })), "inside a record");
    assert!(matches!(buffer.ack(15), Err(OutputError::BadOffset { .. })), "beyond the end");
    buffer.ack(8).expect("acked");
    assert_eq!((buffer.start(), buffer.held_bytes()), (8, 6));
    assert_eq!(buffer.subscribe(8), Ok(8));
    assert_eq!(buffer.subscribe(14), Ok(14));
    assert_eq!(buffer.subscribe(0), Ok(8), "acked output is gone");
    assert!(buffer.batch_from(14).is_empty());
    assert!(buffer.push(OutputStream::Stdout, 0, false, vec![]).is_err());
}

#[test]
fn a_full_buffer_drops_the_oldest_and_the_host_sees_a_gap() {
    let mut buffer = OutputBuffer::new(10);
    for _ in 0..5 {
        buffer.push(OutputStream::Stdout, 0, false, b"abcd".to_vec()).expect("pushed");
    }
    assert_eq!((buffer.start(), buffer.end(), buffer.held_bytes()), (12, 20, 8));
    let from = buffer.subscribe(0).expect("boundary");
    let mut cursor = OutputCursor::new(0);
    let actions: Vec<_> = buffer.batch_from(from).iter().map(|r| cursor.accept(r).expect("valid")).collect();
    assert_eq!(actions, [RecordAction::WriteAfterGap { lost: 12 }, RecordAction::Write]);
}

#[test]
fn batches_stay_within_the_event_bound() {
    let mut buffer = OutputBuffer::new(usize::MAX);
    for _ in 0..40 {
        buffer.push(OutputStream::Stdout, 0, true, vec![b'x'; MAX_OUTPUT_RECORD]).expect("pushed");
    }
    let batch = buffer.batch_from(0);
    assert_eq!(batch.len(), MAX_OUTPUT_BATCH / MAX_OUTPUT_RECORD);
    let next = batch.last().map(OutputRecord::end).expect("records");
    assert_eq!(buffer.batch_from(next)[0].offset, next);
}

#[test]
fn splitter_cuts_lines_and_long_lines() {
    let mut splitter = LineSplitter::new();
    let mut records = Vec::new();
    let mut long = vec![b'y'; MAX_OUTPUT_RECORD * 2 + 5];
    long.push(b'\n');
    for piece in [&b"a\nbb"[..], b"b\n\n", &long, b"tail"] {
        splitter.push(piece, |partial, data| records.push((partial, data)));
    }
    let tail = splitter.finish();
    assert_eq!(records[0], (false, b"a\n".to_vec()));
    assert_eq!(records[1], (false, b"bbb\n".to_vec()));
    assert_eq!(records[2], (false, b"\n".to_vec()));
    assert_eq!(records[3], (true, vec![b'y'; MAX_OUTPUT_RECORD]));
    assert_eq!(records[4], (true, vec![b'y'; MAX_OUTPUT_RECORD]));
    assert_eq!(records[5], (false, b"yyyyy\n".to_vec()));
    assert_eq!(records.len(), 6);
    assert_eq!(tail, Some(b"tail".to_vec()));
    assert_eq!(splitter.finish(), None);
}

/// The host side of the contract: a log file and a checkpoint that survive
/// crashes, and an in-memory cursor that does not.
struct Host {
    log: Vec<u8>,
    checkpoint: (u64, usize),
}

fn cri_line(r: &OutputRecord) -> Vec<u8> {
    let stream = match r.stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    };
    let tag = if r.partial { 'P' } else { 'F' };
    let content = r.data.strip_suffix(b"\n").unwrap_or(&r.data);
    let mut line = format!("{} {stream} {tag} ", r.timestamp_ns).into_bytes();
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

#[test]
fn host_restarts_write_every_record_exactly_once() {
    let mut rng = Rng::new(11);
    let mut skipped = 0;
    for _ in 0..50 {
        let mut guest = OutputBuffer::new(usize::MAX);
        let mut splitter = LineSplitter::new();
        let mut host = Host { log: Vec::new(), checkpoint: (0, 0) };
        let mut cursor = OutputCursor::new(0);
        let mut sent_from = guest.subscribe(0).expect("boundary");
        let mut produced = Vec::new();
        for step in 0..300u64 {
            // The container writes something.
            let len = rng.below(40);
            let bytes: Vec<u8> =
                (0..len).map(|_| if rng.below(8) == 0 { b'\n' } else { b'a' + rng.byte() % 26 }).collect();
            let stream = if rng.below(2) == 0 { OutputStream::Stdout } else { OutputStream::Stderr };
            splitter.push(&bytes, |partial, data| {
                produced.push(guest.push(stream, step, partial, data).expect("pushed").clone());
            });
            // Some records reach the host and are written.
            let batch = guest.batch_from(sent_from);
            let delivered = rng.below(batch.len() + 1);
            for record in &batch[..delivered] {
                sent_from = record.end();
                match cursor.accept(record).expect("valid") {
                    RecordAction::Write => host.log.extend(cri_line(record)),
                    RecordAction::Skip => skipped += 1,
                    RecordAction::WriteAfterGap { .. } => panic!("nothing is dropped here"),
                }
            }
            // Sometimes a checkpoint, then an ack.
            if rng.below(3) == 0 {
                host.checkpoint = (cursor.offset(), host.log.len());
                guest.ack(host.checkpoint.0).expect("boundary");
            }
            // Sometimes the host crashes: the log may hold lines past the
            // checkpoint. It truncates and resubscribes.
            if rng.below(10) == 0 {
                host.log.truncate(host.checkpoint.1);
                cursor = OutputCursor::new(host.checkpoint.0);
                sent_from = guest.subscribe(host.checkpoint.0).expect("boundary");
            } else if rng.below(10) == 0 {
                // The connection drops, the host lives: it resubscribes from
                // its checkpoint and skips what it already wrote.
                sent_from = guest.subscribe(host.checkpoint.0).expect("boundary");
            }
        }
        if let Some(tail) = splitter.finish() {
            produced.push(guest.push(OutputStream::Stdout, 999, false, tail).expect("pushed").clone());
        }
        // The end: the host catches up with everything not yet written.
        while let Some(record) = guest.batch_from(cursor.offset()).first().cloned() {
            if cursor.accept(&record).expect("valid") == RecordAction::Write {
                host.log.extend(cri_line(&record));
            }
        }
        assert_eq!(cursor.offset(), guest.end());
        let expected: Vec<u8> = produced.iter().flat_map(cri_line).collect();
        assert!(host.log == expected, "the log differs from the output, written once each");
    }
    assert!(skipped > 0, "no resent record was skipped");
}
