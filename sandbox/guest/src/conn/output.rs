//! Container output and exits on one connection.
//!
//! A `SubscribeOutput` makes the connection send the container's records
//! from the offset it names (or the first still held), in order, as
//! `Output` events, then — once the container has exited and its last
//! record is sent — `Oom` (when the OOM killer killed it) and
//! `ContainerExited`. Every subscription that reaches the end gets the exit,
//! so a host that resubscribes after reconnecting gets it again. A
//! container whose output is not captured (`log: false`) has its exit sent
//! once per connection, as soon as both exist.
//!
//! Output is sent only while the session's transmit queue is short, so it
//! never crowds out replies, and each event stays well below the frame
//! bound (records of one-byte lines cost more JSON than data).

use std::collections::{BTreeMap, HashSet};

use guest_proto::message::{
    ErrorCode, ErrorReply, ExitStatus, GuestEvent, GuestReply, OutputBatch, OutputRecord, Reply,
};
use guest_proto::output::OutputBuffer;
use guest_proto::session::{Session, SessionError};

use crate::guest::{Guest, lock};

/// Output is queued only while less than this is waiting to be written.
const OUTPUT_GATE: usize = 1 << 20;
/// Estimated JSON bytes of one Output event, at most.
const EVENT_BUDGET: usize = 768 << 10;
/// JSON bytes of a record besides its base64 data, at most.
const RECORD_OVERHEAD: usize = 112;

/// A connection's subscriptions.
#[derive(Debug, Default)]
pub struct Subscriptions {
    subs: BTreeMap<String, Sub>,
    /// Containers without captured output whose exit this connection sent.
    exits_sent: HashSet<String>,
}

#[derive(Debug)]
struct Sub {
    /// The next offset to send.
    next: u64,
    exit_sent: bool,
}

impl Subscriptions {
    /// `SubscribeOutput`.
    pub fn subscribe(&mut self, guest: &Guest, id: &str, from: u64) -> Reply {
        let container = guest.container(id)?;
        if container.log_file.is_none() {
            return Err(invalid(format!("container {id:?} does not capture its output (log: false)")));
        }
        let start = lock(&container.output).buffer.subscribe(from).map_err(|e| invalid(e.to_string()))?;
        self.subs.insert(id.to_owned(), Sub { next: start, exit_sent: false });
        Ok(GuestReply::Subscribed { from_offset: start })
    }

    /// `AckOutput`.
    pub fn ack(guest: &Guest, id: &str, offset: u64) -> Reply {
        let container = guest.container(id)?;
        lock(&container.output).buffer.ack(offset).map_err(|e| invalid(e.to_string()))?;
        Ok(GuestReply::Ok)
    }

    /// Queues what there is to send, while the queue is short.
    pub fn pump(&mut self, guest: &Guest, session: &mut Session) {
        if session.version().is_none() {
            return;
        }
        for container in guest.containers() {
            if container.log_file.is_some() || self.exits_sent.contains(&container.id) {
                continue;
            }
            let Some(exit) = container.exit() else { continue };
            if send_exit(session, &container.id, exit).is_err() {
                return;
            }
            self.exits_sent.insert(container.id.clone());
        }
        loop {
            let mut progressed = false;
            let ids: Vec<String> = self.subs.keys().cloned().collect();
            for id in ids {
                if session.queued_bytes() >= OUTPUT_GATE {
                    return;
                }
                let Ok(container) = guest.container(&id) else {
                    self.subs.remove(&id);
                    continue;
                };
                let Some(sub) = self.subs.get_mut(&id) else { continue };
                let (batch, exit, end) = {
                    let output = lock(&container.output);
                    (take_batch(&output.buffer, sub.next), output.exit.clone(), output.buffer.end())
                };
                if !batch.is_empty() {
                    match send_batch(session, &id, batch) {
                        Ok(next) => sub.next = next,
                        Err(_) => return,
                    }
                    progressed = true;
                } else if let Some(exit) = exit.filter(|_| !sub.exit_sent && sub.next >= end) {
                    if send_exit(session, &id, exit).is_err() {
                        return;
                    }
                    sub.exit_sent = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }
}

/// Records from `from` on, as many as fit one event.
fn take_batch(buffer: &OutputBuffer, from: u64) -> Vec<OutputRecord> {
    let mut batch = buffer.batch_from(from);
    let mut size = 0;
    let fit = batch
        .iter()
        .take_while(|r| {
            size += r.data.len().div_ceil(3) * 4 + RECORD_OVERHEAD;
            size <= EVENT_BUDGET
        })
        .count();
    batch.truncate(fit.max(1));
    batch
}

/// Sends records as one event; the end offset of what was sent.
fn send_batch(session: &mut Session, id: &str, records: Vec<OutputRecord>) -> Result<u64, SessionError> {
    let mut event = GuestEvent::Output(OutputBatch { id: id.to_owned(), records });
    loop {
        let result = session.send_event(&event);
        let GuestEvent::Output(batch) = &mut event else { return result.map(|()| 0) };
        match result {
            Ok(()) => return Ok(batch.records.last().map_or(0, OutputRecord::end)),
            // The estimate was wrong after all: send fewer.
            Err(SessionError::Message(_)) if batch.records.len() > 1 => {
                let half = batch.records.len() / 2;
                batch.records.truncate(half);
            }
            Err(e) => return Err(e),
        }
    }
}

fn send_exit(session: &mut Session, id: &str, exit: ExitStatus) -> Result<(), SessionError> {
    if session.queued_bytes() >= OUTPUT_GATE {
        return Err(SessionError::QueueFull { queued: session.queued_bytes(), max: OUTPUT_GATE });
    }
    if exit.oom_killed {
        session.send_event(&GuestEvent::Oom { id: id.to_owned() })?;
    }
    session.send_event(&GuestEvent::ContainerExited { id: id.to_owned(), exit })
}

fn invalid(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidArgument, message)
}

#[cfg(test)]
mod tests {
    use guest_proto::message::{MAX_OUTPUT_RECORD, OutputStream};

    use super::*;

    #[test]
    fn batches_of_tiny_records_stay_within_an_event() {
        let mut buffer = OutputBuffer::new(64 << 20);
        for _ in 0..100_000 {
            buffer.push(OutputStream::Stdout, 1, false, b"\n".to_vec()).expect("push");
        }
        let batch = take_batch(&buffer, 0);
        assert!(batch.len() < 100_000 && !batch.is_empty());
        let event = GuestEvent::Output(OutputBatch { id: "c".repeat(64), records: batch });
        let json = guest_proto::message::encode_event(&event).expect("fits one event");
        assert!(json.len() <= EVENT_BUDGET + 4096, "{}", json.len());
    }

    #[test]
    fn a_batch_starts_at_the_offset_and_holds_at_least_one_record() {
        let mut buffer = OutputBuffer::new(64 << 20);
        for _ in 0..100 {
            buffer.push(OutputStream::Stderr, 1, true, vec![b'x'; MAX_OUTPUT_RECORD]).expect("push");
        }
        let from = 3 * MAX_OUTPUT_RECORD as u64;
        let batch = take_batch(&buffer, from);
        assert_eq!(batch[0].offset, from);
        assert!(batch.windows(2).all(|w| w[0].end() == w[1].offset));
        assert!(take_batch(&buffer, buffer.end()).is_empty());
    }
}
