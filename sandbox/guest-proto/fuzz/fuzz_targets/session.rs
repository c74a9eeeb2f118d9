//! A host or guest session fed frames a hostile peer could send (decoded
//! from raw bytes, or built to reach deep states) interleaved with the
//! application's calls: it returns events or errors, never panics, keeps
//! its transmit-queue accounting exact, closes on every fatal error, and
//! only ever queues frames that encode and decode back unchanged.
#![no_main]

use bytes::Bytes;
use guest_proto::codec::{Decoder, Frame, GoodbyeCode, Hello, ResetCode, StreamId, Welcome};
use guest_proto::message::{GuestEvent, GuestReply, HostRequest};
use guest_proto::session::{Session, SessionConfig, SessionEvent, Side};
use libfuzzer_sys::fuzz_target;

const REQUESTS: [&[u8]; 5] = [
    br#"{"type":"shutdown"}"#,
    br#"{"type":"start_container","id":"c"}"#,
    br#"{"type":"teleport"}"#,
    br#"{"type":"resize","stream":1,"rows":1,"cols":1}"#,
    b"\xff{",
];
const REPLIES: [&[u8]; 4] = [
    br#"{"ok":{"type":"ok"}}"#,
    br#"{"error":{"code":"not_found","message":"x"}}"#,
    br#"{"ok":{"type":"exec_sync_result","exit_code":0,"stdout":"aGkK","stderr":""}}"#,
    br#"{"ok":7}"#,
];
const EVENTS: [&[u8]; 4] = [
    br#"{"type":"oom","id":"c"}"#,
    br#"{"type":"exec_exited","stream":1,"exit_code":0}"#,
    br#"{"type":"output","id":"c","records":[{"offset":0,"stream":"stdout","timestamp_ns":1,"partial":false,"data":"aGkK"}]}"#,
    br#"{"type":"oom"}"#,
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

#[derive(Default)]
struct App {
    streams: Vec<StreamId>,
    /// Guest: requests to answer. Host: requests sent.
    requests: Vec<u64>,
}

impl App {
    fn stream(&self, b: u8) -> StreamId {
        let known = usize::from(b / 2) % (self.streams.len() + 1);
        match (b % 2, self.streams.get(known)) {
            (0, Some(id)) => *id,
            _ => StreamId::new(u32::from(b) % 16 + 1).expect("non-zero"),
        }
    }

    fn note(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::StreamOpened(id) => self.streams.push(*id),
            SessionEvent::Request { id, .. } => self.requests.push(*id),
            _ => {}
        }
    }
}

fn built_frame(input: &mut Input<'_>, app: &App) -> Frame {
    let kind = input.byte() % 13;
    let stream = app.stream(input.byte());
    let small = input.byte();
    let pick = |list: &[&'static [u8]]| Bytes::from_static(list[usize::from(small) % list.len()]);
    let id = app.requests.get(usize::from(small) % (app.requests.len() + 1)).copied().unwrap_or(u64::from(small));
    match kind {
        0 => Frame::Hello(Hello { min_version: u16::from(small % 3), max_version: u16::from(small / 64), build: String::new() }),
        1 => Frame::Welcome(Welcome { version: u16::from(small % 3), min_version: 1, max_version: 1, build: String::new() }),
        2 => Frame::Request { id, body: pick(&REQUESTS) },
        3 => Frame::Response { id, body: pick(&REPLIES) },
        4 => Frame::Event { body: pick(&EVENTS) },
        5 => Frame::Open { stream },
        6 => Frame::Data { stream, data: Bytes::from(vec![small; usize::from(small) * 256 + 1]) },
        7 => Frame::Credit { stream, increment: input.u32() },
        8 => Frame::Close { stream },
        9 => Frame::Reset { stream, code: ResetCode::Cancel, reason: "r".into() },
        10 => Frame::Ping(u64::from(small)),
        11 => Frame::Pong(u64::from(small)),
        _ => Frame::Goodbye { code: GoodbyeCode::Normal, reason: String::new() },
    }
}

fn feed(session: &mut Session, app: &mut App, frame: Frame) {
    match session.handle_frame(frame) {
        Ok(Some(event)) => app.note(&event),
        Ok(None) => {}
        Err(e) if e.is_fatal() => assert!(session.is_closed(), "fatal error left the session open: {e}"),
        Err(e) => panic!("handle_frame returned a non-fatal error: {e}"),
    }
}

/// Drains the transmit queue: the accounting matches, every frame round-trips.
fn drain(session: &mut Session) {
    let queued = session.queued_bytes();
    let mut total = 0;
    while let Some(frame) = session.poll_transmit() {
        let bytes = frame.to_bytes().expect("queued frames encode");
        if !matches!(frame, Frame::Pong(_)) {
            total += bytes.len();
        }
        let mut decoder = Decoder::new();
        let mut input = &bytes[..];
        assert_eq!(decoder.decode(&mut input).expect("decodes"), Some(frame));
    }
    assert_eq!(total, queued, "queued_bytes out of step with the queue");
    assert_eq!(session.queued_bytes(), 0);
}

fn app_call(session: &mut Session, app: &mut App, op: u8, input: &mut Input<'_>) {
    let b = input.byte();
    let stream = app.stream(b);
    // Non-fatal errors are the application's to handle; none may panic.
    let _ = match op {
        2 => session.open_stream().map(|id| app.streams.push(id)),
        3 => session.send_data(stream, &vec![b; usize::from(input.byte()) * 1024]).map(drop),
        4 => session.consumed(stream, usize::from(input.byte()) * 512),
        5 => session.close_stream(stream),
        6 => session.reset_stream(stream, ResetCode::Refused, "no"),
        7 if session.side() == Side::Host => {
            session.send_request(&HostRequest::ContainerState { id: "c".into() }).map(|id| app.requests.push(id))
        }
        7 => {
            let id = app.requests.get(usize::from(b) % (app.requests.len() + 1)).copied().unwrap_or(0);
            session.respond(id, &Ok(GuestReply::Ok))
        }
        8 => session.send_event(&GuestEvent::Oom { id: "c".into() }),
        9 => session.ping(u64::from(b)),
        _ if b == 0xff => session.goodbye(GoodbyeCode::Normal, "bye"),
        _ => Ok(()),
    };
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.byte();
    let side = if flags & 1 == 0 { Side::Host } else { Side::Guest };
    let mut config = SessionConfig::new("fuzz");
    config.max_queued = 256 * 1024;
    config.max_queued_data = 64 * 1024;
    let mut session = Session::new(side, config);
    let mut app = App::default();
    if flags & 2 == 0 {
        let frame = match side {
            Side::Guest => Frame::Hello(Hello { min_version: 1, max_version: 1, build: "h".into() }),
            Side::Host => Frame::Welcome(Welcome { version: 1, min_version: 1, max_version: 1, build: "g".into() }),
        };
        session.handle_frame(frame).expect("handshake");
    }
    while !input.0.is_empty() {
        let op = input.byte() % 12;
        match op {
            0 => {
                // Raw bytes through the decoder, as they would come off the socket.
                let len = usize::from(input.byte()) * 4;
                let raw = input.bytes(len).to_vec();
                let mut decoder = Decoder::new();
                let mut chunk = &raw[..];
                while let Ok(Some(frame)) = decoder.decode(&mut chunk) {
                    feed(&mut session, &mut app, frame);
                }
            }
            1 => {
                let frame = built_frame(&mut input, &app);
                feed(&mut session, &mut app, frame);
            }
            10 => drain(&mut session),
            _ => app_call(&mut session, &mut app, op, &mut input),
        }
        // The hard limit, plus what the session queues unchecked (per stream
        // a Close, a Reset and credits; a Goodbye): the peer cannot push past it.
        assert!(session.queued_bytes() <= 256 * 1024 + 128 * 1024, "queue grew to {}", session.queued_bytes());
    }
    drain(&mut session);
});
