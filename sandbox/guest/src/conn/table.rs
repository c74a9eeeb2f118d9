//! The connection's streams as the guest uses them: data the host sent
//! before a request named the stream, the task a stream is bound to, the
//! one chunk each stream may have waiting for credit, terminal resizers.
//!
//! **Bounds.** Host → guest data is handed on without copying and credited
//! back only once the task has written it out, so a stream never holds
//! more than its window (the session's [`guest_proto::session::INITIAL_WINDOW`]).
//! Guest → host, a task sends one chunk and waits until the session took
//! it and the stream has credit again before it reads more from its
//! process, so a stream holds at most one chunk here.

use std::collections::{HashMap, VecDeque};

use bytes::{Buf, Bytes};
use crius_sandbox::backend::ResizeFn;
use guest_proto::codec::{ResetCode, StreamId};
use guest_proto::message::{ErrorCode, ErrorReply};
use guest_proto::session::Session;
use tokio::sync::{mpsc, oneshot};

use super::Cmd;

/// What the host sent on a stream, for the task bound to it.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes; the task sends [`Cmd::Consumed`] once it has written them.
    Data(Bytes),
    /// The host sends no more.
    End,
}

/// A stream bound to a task.
#[derive(Debug)]
pub struct Link {
    /// The stream.
    pub id: StreamId,
    /// What the host sends on it.
    pub inbound: mpsc::UnboundedReceiver<Inbound>,
    /// Resolves (with an error) once the stream is gone: reset, or the
    /// connection ended.
    pub gone: oneshot::Receiver<()>,
    /// Bytes the task may send before it waits ([`Cmd::Data`]).
    pub credit: u32,
    /// The connection's commands.
    pub cmds: mpsc::Sender<Cmd>,
}

#[derive(Default)]
struct Entry {
    /// Before binding: what the host sent (at most a window).
    early: VecDeque<Inbound>,
    inbound: Option<mpsc::UnboundedSender<Inbound>>,
    bound: bool,
    /// A chunk (possibly empty: only waiting for credit) and its sender.
    outbox: Option<(Bytes, oneshot::Sender<u32>)>,
    /// Dropped when the entry goes: the task's `gone` fires.
    alive: Option<oneshot::Sender<()>>,
    resize: Option<ResizeFn>,
    local_closed: bool,
    remote_closed: bool,
}

/// The streams of one connection.
#[derive(Default)]
pub struct Table {
    entries: HashMap<StreamId, Entry>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("streams", &self.entries.len()).finish()
    }
}

impl Table {
    /// The host opened a stream.
    pub fn opened(&mut self, id: StreamId) {
        self.entries.insert(id, Entry::default());
    }

    /// Data from the host.
    pub fn data(&mut self, session: &mut Session, id: StreamId, data: Bytes) {
        let n = data.len();
        let Some(entry) = self.entries.get_mut(&id) else {
            let _ = session.consumed(id, n);
            return;
        };
        if !entry.bound {
            entry.early.push_back(Inbound::Data(data));
            return;
        }
        let delivered = entry.inbound.as_ref().is_some_and(|tx| tx.send(Inbound::Data(data)).is_ok());
        if !delivered {
            // Nobody reads this stream (any more): drop the data, keep the credit flowing.
            entry.inbound = None;
            let _ = session.consumed(id, n);
        }
    }

    /// The host sends no more on the stream.
    pub fn finished(&mut self, id: StreamId) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        entry.remote_closed = true;
        if entry.bound {
            if let Some(tx) = entry.inbound.take() {
                let _ = tx.send(Inbound::End);
            }
        } else {
            entry.early.push_back(Inbound::End);
        }
        if entry.local_closed {
            self.entries.remove(&id);
        }
    }

    /// The stream was reset (by either side): its task is told.
    pub fn reset(&mut self, id: StreamId) {
        self.entries.remove(&id);
    }

    /// Resets a stream from this side.
    pub fn reset_local(&mut self, session: &mut Session, id: StreamId, reason: &str) {
        let _ = session.reset_stream(id, ResetCode::Internal, reason);
        self.entries.remove(&id);
    }

    /// Binds a stream the host opened (and no request named yet) to a task.
    pub fn bind(&mut self, session: &Session, id: StreamId, cmds: &mpsc::Sender<Cmd>) -> Result<Link, ErrorReply> {
        let invalid = |why: &str| ErrorReply::new(ErrorCode::InvalidArgument, format!("stream {id}: {why}"));
        if !id.is_host_opened() {
            return Err(invalid("not a stream the host opened"));
        }
        let entry = self.entries.get_mut(&id).ok_or_else(|| invalid("not open"))?;
        if entry.bound {
            return Err(invalid("already used by another request"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut open = true;
        for item in entry.early.drain(..) {
            open = !matches!(item, Inbound::End);
            let _ = tx.send(item);
        }
        let (alive, gone) = oneshot::channel();
        entry.bound = true;
        entry.inbound = open.then_some(tx);
        entry.alive = Some(alive);
        let credit = session.send_credit(id).unwrap_or(0);
        Ok(Link { id, inbound: rx, gone, credit, cmds: cmds.clone() })
    }

    /// A task's chunk to send (empty: it waits for credit). `ready` gets
    /// the stream's credit once the chunk is queued and credit is left;
    /// it is dropped when the stream is gone.
    pub fn send(&mut self, session: &mut Session, id: StreamId, data: Bytes, ready: oneshot::Sender<u32>) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.outbox = Some((data, ready));
            self.flush(session, id);
        }
    }

    /// Moves a stream's waiting chunk into the session as far as credit
    /// and queue room allow.
    pub fn flush(&mut self, session: &mut Session, id: StreamId) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        let Some((mut data, ready)) = entry.outbox.take() else { return };
        if !data.is_empty() {
            match session.send_data(id, &data) {
                Ok(n) => data.advance(n),
                // Closed or gone: the task stops sending.
                Err(_) => return,
            }
            if !data.is_empty() {
                entry.outbox = Some((data, ready));
                return;
            }
        }
        match session.send_credit(id) {
            Some(credit) if credit > 0 => {
                let _ = ready.send(credit);
            }
            Some(_) => entry.outbox = Some((data, ready)),
            None => {}
        }
    }

    /// [`Table::flush`] for every stream with a waiting chunk.
    pub fn flush_all(&mut self, session: &mut Session) {
        let waiting: Vec<StreamId> =
            self.entries.iter().filter(|(_, e)| e.outbox.is_some()).map(|(id, _)| *id).collect();
        for id in waiting {
            self.flush(session, id);
        }
    }

    /// This side sends no more on the stream.
    pub fn close(&mut self, session: &mut Session, id: StreamId) {
        let _ = session.close_stream(id);
        let Some(entry) = self.entries.get_mut(&id) else { return };
        entry.local_closed = true;
        // Closed once the process is over: nothing left to resize.
        entry.resize = None;
        if entry.remote_closed {
            self.entries.remove(&id);
        }
    }

    /// Registers the terminal resizer of the exec or attach on `id`.
    pub fn set_resize(&mut self, id: StreamId, resize: ResizeFn) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.resize = Some(resize);
        }
    }

    /// Resizes the terminal of the exec or attach on `id`.
    pub fn resize(&self, id: StreamId, cols: u16, rows: u16) -> Result<(), ErrorReply> {
        let entry = self
            .entries
            .get(&id)
            .filter(|e| e.bound)
            .ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, format!("no exec or attach on stream {id}")))?;
        let resize = entry.resize.as_ref().ok_or_else(|| {
            ErrorReply::new(
                ErrorCode::InvalidArgument,
                format!("the process on stream {id} has no terminal, or has ended"),
            )
        })?;
        resize(cols, rows);
        Ok(())
    }

    /// Streams known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use guest_proto::codec::Decoder;
    use guest_proto::session::{SessionConfig, SessionEvent, Side};

    use super::*;

    /// A guest session past the handshake, and its host peer.
    fn pair() -> (Session, Session) {
        let mut host = Session::new(Side::Host, SessionConfig::new("host"));
        let mut guest = Session::new(Side::Guest, SessionConfig::new("guest"));
        pump(&mut host, &mut guest);
        pump(&mut guest, &mut host);
        assert!(host.version().is_some() && guest.version().is_some());
        (host, guest)
    }

    /// Moves every frame `from` queued into `to`; the events it made.
    fn pump(from: &mut Session, to: &mut Session) -> Vec<SessionEvent> {
        let mut bytes = bytes::BytesMut::new();
        from.write_transmit(&mut bytes, usize::MAX).expect("encode");
        let mut decoder = Decoder::new();
        let mut chunk: &[u8] = &bytes;
        let mut events = Vec::new();
        while let Some(frame) = decoder.decode(&mut chunk).expect("decode") {
            if let Some(event) = to.handle_frame(frame).expect("frame") {
                events.push(event);
            }
        }
        events
    }

    #[test]
    fn data_before_the_request_waits_for_the_task() {
        let (mut host, mut guest) = pair();
        let (cmds, _rx) = mpsc::channel(4);
        let mut table = Table::default();
        let id = host.open_stream().expect("open");
        host.send_data(id, b"early").expect("send");
        host.close_stream(id).expect("close");
        for event in pump(&mut host, &mut guest) {
            match event {
                SessionEvent::StreamOpened(id) => table.opened(id),
                SessionEvent::Data { stream, data } => table.data(&mut guest, stream, data),
                SessionEvent::Finished(id) => table.finished(id),
                other => panic!("{other:?}"),
            }
        }
        let mut link = table.bind(&guest, id, &cmds).expect("bind");
        assert!(matches!(link.inbound.try_recv(), Ok(Inbound::Data(d)) if &d[..] == b"early"));
        assert!(matches!(link.inbound.try_recv(), Ok(Inbound::End)));
        let again = table.bind(&guest, id, &cmds).expect_err("bound twice");
        assert_eq!(again.code, ErrorCode::InvalidArgument);
        let never = StreamId::new(99).expect("id");
        assert!(table.bind(&guest, never, &cmds).is_err());
        assert!(table.bind(&guest, StreamId::new(2).expect("id"), &cmds).is_err(), "a guest id");
    }

    #[test]
    fn a_chunk_waits_for_credit_and_ready_says_how_much_is_left() {
        let (mut host, mut guest) = pair();
        let (cmds, _rx) = mpsc::channel(4);
        let mut table = Table::default();
        let id = host.open_stream().expect("open");
        for event in pump(&mut host, &mut guest) {
            if let SessionEvent::StreamOpened(id) = event {
                table.opened(id);
            }
        }
        let mut link = table.bind(&guest, id, &cmds).expect("bind");
        let window = link.credit as usize;
        let (tx, mut ready) = oneshot::channel();
        table.send(&mut guest, id, Bytes::from(vec![7u8; window]), tx);
        assert!(ready.try_recv().is_err(), "no credit left: the task waits");
        let mut received = 0;
        for event in pump(&mut guest, &mut host) {
            if let SessionEvent::Data { stream, data } = event {
                received += data.len();
                host.consumed(stream, data.len()).expect("consume");
            }
        }
        assert_eq!(received, window);
        for event in pump(&mut host, &mut guest) {
            if let SessionEvent::Writable { stream, .. } = event {
                table.flush(&mut guest, stream);
            }
        }
        let credit = ready.try_recv().expect("ready once the host credited");
        assert!(credit > 0 && credit as usize <= window, "{credit}");
        table.reset(id);
        assert!(link.gone.try_recv().is_err_and(|e| matches!(e, oneshot::error::TryRecvError::Closed)));
    }
}
