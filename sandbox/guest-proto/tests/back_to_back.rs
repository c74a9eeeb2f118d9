//! A host session and a guest session wired back to back through the codec,
//! with bytes cut at random places, as over a socket: requests and responses
//! interleave with events and with echoed data on many streams, some of
//! whose readers are slow. Every byte must arrive intact and in order.

use std::collections::{HashMap, VecDeque};

use bytes::BytesMut;
use guest_proto::codec::{Decoder, StreamId};
use guest_proto::message::{
    ContainerStatus, GuestEvent, GuestReply, HostRequest, OutputBatch, OutputRecord, OutputStream,
};
use guest_proto::session::{Session, SessionConfig, SessionEvent, Side};

/// xorshift64*: a seeded PRNG, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

/// One direction of the connection.
struct Wire {
    bytes: VecDeque<u8>,
    decoder: Decoder,
}

impl Wire {
    fn new() -> Self {
        Self { bytes: VecDeque::new(), decoder: Decoder::new() }
    }

    /// Moves up to `limit` bytes of queued frames from `from` onto the wire.
    fn send(&mut self, from: &mut Session, limit: usize) {
        let mut buf = BytesMut::new();
        from.write_transmit(&mut buf, limit).expect("encodes");
        self.bytes.extend(&buf[..]);
    }

    /// Delivers up to `n` bytes to `to`; returns its events.
    fn deliver(&mut self, to: &mut Session, n: usize) -> Vec<SessionEvent> {
        let chunk: Vec<u8> = self.bytes.drain(..n.min(self.bytes.len())).collect();
        let mut input = &chunk[..];
        let mut events = Vec::new();
        while let Some(frame) = self.decoder.decode(&mut input).expect("decodes") {
            events.extend(to.handle_frame(frame).expect("valid frame"));
        }
        events
    }
}

/// Host side of one stream: a payload to send, the echo coming back.
struct HostStream {
    payload: Vec<u8>,
    sent: usize,
    closed: bool,
    echo: Vec<u8>,
    /// Received, not yet consumed (a slow reader holds on to it).
    held: usize,
    slow: bool,
    finished: bool,
}

/// Guest side: an echo server per stream.
#[derive(Default)]
struct GuestStream {
    pending: VecDeque<u8>,
    peer_finished: bool,
    closed: bool,
}

fn connected(rng: &mut Rng, host_wire: &mut Wire, guest_wire: &mut Wire) -> (Session, Session) {
    let mut host = Session::new(Side::Host, SessionConfig::new("host 1.0"));
    let mut guest = Session::new(Side::Guest, SessionConfig::new("guest 1.0"));
    while host.version().is_none() {
        host_wire.send(&mut host, usize::MAX);
        guest_wire.send(&mut guest, usize::MAX);
        host_wire.deliver(&mut guest, 1 + rng.below(8));
        guest_wire.deliver(&mut host, 1 + rng.below(8));
    }
    assert_eq!(guest.version(), Some(1));
    (host, guest)
}

#[test]
fn requests_events_and_many_streams_back_to_back() {
    for seed in 1..=4u64 {
        run(seed);
    }
}

fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let (mut h2g, mut g2h) = (Wire::new(), Wire::new());
    let (mut host, mut guest) = connected(&mut rng, &mut h2g, &mut g2h);

    let mut host_streams: HashMap<StreamId, HostStream> = HashMap::new();
    for i in 0..24 {
        let id = host.open_stream().expect("open");
        let len = [0, 1, 1000, 70_000, 300_000, 700_000][rng.below(6)];
        let payload = (0..len).map(|j| (j * 31 + i * 7) as u8).collect();
        let slow = rng.below(4) == 0;
        host_streams
            .insert(id, HostStream { payload, sent: 0, closed: false, echo: vec![], held: 0, slow, finished: false });
    }
    let mut guest_streams: HashMap<StreamId, GuestStream> = HashMap::new();
    let mut pending: HashMap<u64, String> = HashMap::new();
    let mut guest_inbox: Vec<(u64, HostRequest)> = Vec::new();
    let (mut answered, mut events_seen, mut next_offset, mut last_offset) = (0, 0, 0u64, 0u64);
    let (mut requests_sent, mut events_sent) = (0, 0);

    for step in 0.. {
        assert!(step < 200_000, "seed {seed}: no progress");
        // Host application: requests now and then, stream payloads, slow reads.
        if rng.below(3) == 0 && pending.len() < 50 && requests_sent < 300 {
            requests_sent += 1;
            let id = format!("c{}", rng.below(1000));
            let req_id = host.send_request(&HostRequest::ContainerState { id: id.clone() }).expect("sent");
            pending.insert(req_id, id);
        }
        for (id, s) in host_streams.iter_mut() {
            if s.sent < s.payload.len() {
                let end = (s.sent + rng.below(100_000) + 1).min(s.payload.len());
                s.sent += host.send_data(*id, &s.payload[s.sent..end]).expect("send");
            }
            if s.sent == s.payload.len() && !s.closed {
                host.close_stream(*id).expect("close");
                s.closed = true;
            }
            if s.held > 0 && (!s.slow || rng.below(20) == 0) {
                host.consumed(*id, s.held).expect("consumed");
                s.held = 0;
            }
        }
        // Guest application: answer some requests, echo, emit output events.
        while !guest_inbox.is_empty() && rng.below(3) > 0 {
            let (req_id, request) = guest_inbox.swap_remove(rng.below(guest_inbox.len()));
            let HostRequest::ContainerState { id } = request else { panic!("unexpected {request:?}") };
            let started_at_ns = id[1..].parse().expect("number");
            let reply = Ok(GuestReply::State(ContainerStatus::Running { started_at_ns }));
            guest.respond(req_id, &reply).expect("respond");
        }
        for (id, s) in guest_streams.iter_mut().filter(|(_, s)| !s.closed) {
            let (front, _) = s.pending.as_slices();
            let n = guest.send_data(*id, front).expect("echo");
            s.pending.drain(..n);
            guest.consumed(*id, n).expect("consumed");
            if s.pending.is_empty() && s.peer_finished && !s.closed {
                guest.close_stream(*id).expect("close");
                s.closed = true;
            }
        }
        if rng.below(5) == 0 && events_sent < 100 {
            events_sent += 1;
            let data = format!("line {next_offset}\n").into_bytes();
            let record = OutputRecord {
                offset: next_offset,
                stream: OutputStream::Stdout,
                timestamp_ns: 1,
                partial: false,
                data,
            };
            next_offset = record.end();
            let batch = OutputBatch { id: "c1".into(), records: vec![record] };
            guest.send_event(&GuestEvent::Output(batch)).expect("event");
        }

        // The wires, cut at random places.
        h2g.send(&mut host, rng.below(200_000));
        g2h.send(&mut guest, rng.below(200_000));
        for event in h2g.deliver(&mut guest, rng.below(150_000)) {
            match event {
                SessionEvent::Request { id, request } => guest_inbox.push((id, request)),
                SessionEvent::StreamOpened(id) => assert!(guest_streams.insert(id, GuestStream::default()).is_none()),
                SessionEvent::Data { stream, data } => {
                    guest_streams.get_mut(&stream).expect("open").pending.extend(&data)
                }
                SessionEvent::Finished(stream) => guest_streams.get_mut(&stream).expect("open").peer_finished = true,
                SessionEvent::Writable { .. } => {}
                other => panic!("seed {seed}: guest got {other:?}"),
            }
        }
        for event in g2h.deliver(&mut host, rng.below(150_000)) {
            match event {
                SessionEvent::Response { id, reply } => {
                    let container = pending.remove(&id).expect("pending request");
                    let Ok(GuestReply::State(ContainerStatus::Running { started_at_ns })) = reply else {
                        panic!("seed {seed}: reply {reply:?}")
                    };
                    assert_eq!(started_at_ns.to_string(), container[1..], "reply for the wrong request");
                    answered += 1;
                }
                SessionEvent::Event(GuestEvent::Output(batch)) => {
                    assert!(batch.records[0].offset >= last_offset, "events out of order");
                    last_offset = batch.records[0].end();
                    events_seen += 1;
                }
                SessionEvent::Data { stream, data } => {
                    let s = host_streams.get_mut(&stream).expect("open");
                    s.echo.extend_from_slice(&data);
                    s.held += data.len();
                }
                SessionEvent::Writable { .. } => {}
                SessionEvent::Finished(stream) => host_streams.get_mut(&stream).expect("open").finished = true,
                other => panic!("seed {seed}: host got {other:?}"),
            }
        }
        let done = host_streams.values().all(|s| s.finished) && pending.is_empty() && guest_inbox.is_empty();
        let done = done && requests_sent == 300 && events_sent == 100;
        if done && h2g.bytes.is_empty() && g2h.bytes.is_empty() {
            break;
        }
    }
    for (id, s) in &host_streams {
        assert_eq!(s.echo.len(), s.payload.len(), "seed {seed}: stream {id} length");
        assert!(s.echo == s.payload, "seed {seed}: stream {id} bytes differ");
    }
    assert_eq!((host.open_streams(), guest.open_streams()), (0, 0), "seed {seed}: streams left open");
    assert_eq!((host.pending_requests(), guest.pending_requests()), (0, 0));
    assert_eq!((answered, events_seen), (300, 100), "seed {seed}: answers and events");
    h2g.decoder.finish().expect("boundary");
    g2h.decoder.finish().expect("boundary");
}
