//! Streams: the table, their states and flow control.
//!
//! Each direction of a stream has a window: the sender may have at most
//! that many bytes sent and not yet credited back. Both start at
//! [`INITIAL_WINDOW`]. The receiver credits bytes back (a Credit frame) once
//! the application says it has consumed them, in batches of at least a
//! quarter window. A stream without credit stalls alone: the others keep
//! sending, since data enters the transmit queue only within credit.
//!
//! A stream is open until both sides have sent Close, or either has sent
//! Reset. Frames for a stream that was open and is gone are ignored (a Reset
//! crosses data in flight); frames for an id never opened are violations.

use super::{INITIAL_WINDOW, MAX_STREAMS, MAX_WINDOW, Session, SessionError, SessionEvent, Side, violation};
use crate::codec::{Frame, MAX_DATA_PAYLOAD, MAX_REASON_LEN, ResetCode, StreamId};

/// Bytes consumed before the receiver sends a Credit.
const CREDIT_BATCH: u32 = INITIAL_WINDOW / 4;

/// One open stream.
#[derive(Debug)]
pub(super) struct Stream {
    /// Bytes this side may still send.
    pub(super) send_credit: u32,
    /// Bytes the peer may still send.
    pub(super) recv_window: u32,
    /// Bytes delivered to the application and not yet consumed.
    pub(super) unconsumed: u32,
    /// Bytes consumed and not yet credited back to the peer.
    pub(super) pending_credit: u32,
    local_closed: bool,
    remote_closed: bool,
}

impl Stream {
    fn new() -> Self {
        Self {
            send_credit: INITIAL_WINDOW,
            recv_window: INITIAL_WINDOW,
            unconsumed: 0,
            pending_credit: 0,
            local_closed: false,
            remote_closed: false,
        }
    }
}

enum Lookup {
    Open,
    /// Was open, is finished or reset.
    Gone,
    /// Never opened.
    Never,
}

impl Session {
    /// Opens a stream: queues its Open frame and returns its id, to name in
    /// a request (`Exec`, `PortForward`, ...).
    pub fn open_stream(&mut self) -> Result<StreamId, SessionError> {
        self.ready()?;
        if self.local_open >= MAX_STREAMS {
            return Err(SessionError::TooManyStreams);
        }
        let id = u32::try_from(self.next_local).ok().and_then(StreamId::new).ok_or(SessionError::StreamIdsExhausted)?;
        self.push_app(Frame::Open { stream: id })?;
        self.next_local += 2;
        self.streams.insert(id, Stream::new());
        self.local_open += 1;
        Ok(id)
    }

    /// Queues up to `data.len()` bytes on a stream and returns how many it
    /// took: no more than the stream's credit and the room left below
    /// [`super::SessionConfig::max_queued_data`]. 0 means wait for a
    /// [`SessionEvent::Writable`] or for the transmit queue to drain.
    pub fn send_data(&mut self, id: StreamId, data: &[u8]) -> Result<usize, SessionError> {
        self.ready()?;
        let room = self.config.max_queued_data.saturating_sub(self.queued_bytes);
        let stream = self.sendable(id)?;
        let n = data.len().min(stream.send_credit as usize).min(room);
        // n is at most send_credit, a u32.
        stream.send_credit -= u32::try_from(n).unwrap_or(u32::MAX);
        for chunk in data[..n].chunks(MAX_DATA_PAYLOAD) {
            self.push(Frame::Data { stream: id, data: chunk.to_vec().into() });
        }
        Ok(n)
    }

    /// Bytes `send_data` may send on the stream now, credit-wise; `None` if
    /// the stream is not open for sending.
    pub fn send_credit(&self, id: StreamId) -> Option<u32> {
        self.streams.get(&id).filter(|s| !s.local_closed).map(|s| s.send_credit)
    }

    /// The application has written out `n` more bytes delivered on the
    /// stream; they return to the peer as credit. Harmless on a stream that
    /// is gone.
    pub fn consumed(&mut self, id: StreamId, n: usize) -> Result<(), SessionError> {
        match self.lookup(id) {
            Lookup::Open => {}
            Lookup::Gone => return Ok(()),
            Lookup::Never => return Err(SessionError::UnknownStream(id)),
        }
        let Some(stream) = self.streams.get_mut(&id) else { return Ok(()) };
        let unconsumed = stream.unconsumed;
        let n = u32::try_from(n).ok().filter(|n| *n <= unconsumed).ok_or(SessionError::OverConsumed {
            stream: id,
            n,
            unconsumed,
        })?;
        stream.unconsumed -= n;
        if stream.remote_closed {
            return Ok(());
        }
        stream.pending_credit += n;
        if stream.pending_credit >= CREDIT_BATCH {
            let increment = std::mem::take(&mut stream.pending_credit);
            stream.recv_window += increment;
            self.push(Frame::Credit { stream: id, increment });
        }
        Ok(())
    }

    /// Half-closes the stream: this side sends no more data (what is queued
    /// still goes first). Idempotent.
    pub fn close_stream(&mut self, id: StreamId) -> Result<(), SessionError> {
        self.ready()?;
        match self.lookup(id) {
            Lookup::Open => {}
            Lookup::Gone => return Ok(()),
            Lookup::Never => return Err(SessionError::UnknownStream(id)),
        }
        let Some(stream) = self.streams.get_mut(&id) else { return Ok(()) };
        if stream.local_closed {
            return Ok(());
        }
        stream.local_closed = true;
        let finished = stream.remote_closed;
        self.push(Frame::Close { stream: id });
        if finished {
            self.remove_stream(id);
        }
        Ok(())
    }

    /// Aborts the stream in both directions; its queued data is dropped.
    /// Harmless on a stream that is gone.
    pub fn reset_stream(&mut self, id: StreamId, code: ResetCode, reason: &str) -> Result<(), SessionError> {
        self.ready()?;
        match self.lookup(id) {
            Lookup::Open => {
                self.drop_stream(id);
                self.push(reset_frame(id, code, reason));
                Ok(())
            }
            Lookup::Gone => Ok(()),
            Lookup::Never => Err(SessionError::UnknownStream(id)),
        }
    }

    /// Streams open, both sides' together.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    pub(super) fn handle_stream_frame(&mut self, frame: Frame) -> Result<Option<SessionEvent>, SessionError> {
        let Some(id) = frame.stream() else {
            return Err(violation(format!("unexpected {:?} frame", frame.frame_type())));
        };
        if let Frame::Open { stream } = frame {
            return self.on_open(stream);
        }
        match self.lookup(id) {
            Lookup::Open => {}
            Lookup::Gone => return Ok(None),
            Lookup::Never => {
                return Err(violation(format!("{:?} frame on stream {id}, never opened", frame.frame_type())));
            }
        }
        let Some(stream) = self.streams.get_mut(&id) else { return Ok(None) };
        match frame {
            Frame::Data { data, .. } => {
                if stream.remote_closed {
                    return self.reset_for_peer(id, ResetCode::StreamState, "data after close");
                }
                let Some(len) = u32::try_from(data.len()).ok().filter(|len| *len <= stream.recv_window) else {
                    return self.reset_for_peer(id, ResetCode::FlowControl, "data beyond the window");
                };
                stream.recv_window -= len;
                stream.unconsumed += len;
                Ok(Some(SessionEvent::Data { stream: id, data }))
            }
            Frame::Credit { increment, .. } => {
                let credit = u64::from(stream.send_credit) + u64::from(increment);
                let Some(credit) = u32::try_from(credit).ok().filter(|c| *c <= MAX_WINDOW) else {
                    return Err(violation(format!("stream {id}: credit beyond the largest window {MAX_WINDOW}")));
                };
                stream.send_credit = credit;
                let writable = increment > 0 && !stream.local_closed;
                Ok(writable.then_some(SessionEvent::Writable { stream: id, credit }))
            }
            Frame::Close { .. } => {
                if stream.remote_closed {
                    return self.reset_for_peer(id, ResetCode::StreamState, "second close");
                }
                stream.remote_closed = true;
                // No more data comes: what is not yet credited never will be.
                stream.pending_credit = 0;
                if stream.local_closed {
                    self.remove_stream(id);
                }
                Ok(Some(SessionEvent::Finished(id)))
            }
            Frame::Reset { code, reason, .. } => {
                self.drop_stream(id);
                Ok(Some(SessionEvent::StreamReset { stream: id, code, reason, by_peer: true }))
            }
            other => Err(violation(format!("unexpected {:?} frame", other.frame_type()))),
        }
    }

    fn on_open(&mut self, id: StreamId) -> Result<Option<SessionEvent>, SessionError> {
        if self.is_local(id) {
            return Err(violation(format!("peer opened stream {id}, an id of this side")));
        }
        if !matches!(self.lookup(id), Lookup::Never) {
            return Err(violation(format!("stream {id} opened twice or out of order")));
        }
        if self.remote_open >= MAX_STREAMS {
            return Err(violation(format!("peer opened more than {MAX_STREAMS} streams")));
        }
        self.next_remote = u64::from(id.get()) + 2;
        self.streams.insert(id, Stream::new());
        self.remote_open += 1;
        Ok(Some(SessionEvent::StreamOpened(id)))
    }

    /// Resets a stream the peer misused; the stream ends, the session goes on.
    fn reset_for_peer(
        &mut self,
        id: StreamId,
        code: ResetCode,
        reason: &str,
    ) -> Result<Option<SessionEvent>, SessionError> {
        self.drop_stream(id);
        self.push_answer(reset_frame(id, code, reason))?;
        Ok(Some(SessionEvent::StreamReset { stream: id, code, reason: reason.to_owned(), by_peer: false }))
    }

    fn sendable(&mut self, id: StreamId) -> Result<&mut Stream, SessionError> {
        let never = matches!(self.lookup(id), Lookup::Never);
        match self.streams.get_mut(&id) {
            Some(stream) if !stream.local_closed => Ok(stream),
            _ if never => Err(SessionError::UnknownStream(id)),
            _ => Err(SessionError::StreamClosed(id)),
        }
    }

    fn lookup(&self, id: StreamId) -> Lookup {
        let next = if self.is_local(id) { self.next_local } else { self.next_remote };
        if self.streams.contains_key(&id) {
            Lookup::Open
        } else if u64::from(id.get()) < next {
            Lookup::Gone
        } else {
            Lookup::Never
        }
    }

    fn is_local(&self, id: StreamId) -> bool {
        id.is_host_opened() == (self.side == Side::Host)
    }

    /// Forgets a finished stream (both sides closed); its queued data and
    /// Close still go out.
    fn remove_stream(&mut self, id: StreamId) {
        if self.streams.remove(&id).is_none() {
            return;
        }
        if self.is_local(id) {
            self.local_open -= 1;
        } else {
            self.remote_open -= 1;
        }
    }

    /// Forgets a reset stream and drops its queued data.
    fn drop_stream(&mut self, id: StreamId) {
        self.remove_stream(id);
        let mut dropped = 0;
        self.queue.retain(|f| match f {
            Frame::Data { stream, .. } if *stream == id => {
                dropped += f.encoded_len();
                false
            }
            _ => true,
        });
        self.queued_bytes -= dropped;
    }
}

fn reset_frame(stream: StreamId, code: ResetCode, reason: &str) -> Frame {
    Frame::Reset { stream, code, reason: crate::codec::truncate_utf8(reason, MAX_REASON_LEN).to_owned() }
}
