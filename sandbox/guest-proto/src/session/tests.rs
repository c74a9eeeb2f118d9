use bytes::Bytes;

use super::*;
use crate::codec::Decoder;
use crate::message::{self, ErrorCode, ErrorReply, GuestReply};

pub(super) fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("non-zero")
}

fn config(min: u16, max: u16) -> SessionConfig {
    SessionConfig { min_version: min, max_version: max, ..SessionConfig::new("test") }
}

/// Moves every queued frame of `from` through the codec into `to`; returns
/// `to`'s events.
pub(super) fn pump(from: &mut Session, to: &mut Session) -> Vec<SessionEvent> {
    let mut bytes = BytesMut::new();
    from.write_transmit(&mut bytes, usize::MAX).expect("encodes");
    let mut decoder = Decoder::new();
    let mut input = &bytes[..];
    let mut events = Vec::new();
    while let Some(frame) = decoder.decode(&mut input).expect("decodes") {
        events.extend(to.handle_frame(frame).expect("valid frame"));
    }
    events
}

pub(super) fn pair() -> (Session, Session) {
    let mut host = Session::new(Side::Host, SessionConfig::new("host-build"));
    let mut guest = Session::new(Side::Guest, SessionConfig::new("guest-build"));
    assert_eq!(pump(&mut host, &mut guest), [SessionEvent::Ready { version: 1, peer_build: "host-build".into() }]);
    assert_eq!(pump(&mut guest, &mut host), [SessionEvent::Ready { version: 1, peer_build: "guest-build".into() }]);
    (host, guest)
}

pub(super) fn drain(session: &mut Session) -> Vec<Frame> {
    std::iter::from_fn(|| session.poll_transmit()).collect()
}

pub(super) fn assert_violation(result: Result<Option<SessionEvent>, SessionError>, session: &mut Session) {
    let err = result.expect_err("must be a violation");
    assert!(err.is_fatal(), "{err}");
    assert!(session.is_closed());
    let frames = drain(session);
    assert!(matches!(frames.last(), Some(Frame::Goodbye { .. })), "goodbye last: {frames:?}");
    assert!(matches!(session.open_stream(), Err(SessionError::Closed)));
    assert_eq!(session.handle_frame(Frame::Ping(1)).expect("ignored"), None);
}

#[test]
fn handshake_picks_the_highest_common_version() {
    for ((host_range, guest_range), expected) in
        [(((1, 3), (2, 5)), 3), (((1, 1), (1, 1)), 1), (((2, 9), (1, 2)), 2), (((0, 4), (0, 4)), 4)]
    {
        let mut host = Session::new(Side::Host, config(host_range.0, host_range.1));
        let mut guest = Session::new(Side::Guest, config(guest_range.0, guest_range.1));
        assert!(matches!(host.open_stream(), Err(SessionError::NotReady)));
        pump(&mut host, &mut guest);
        pump(&mut guest, &mut host);
        assert_eq!((host.version(), guest.version()), (Some(expected), Some(expected)));
        assert_eq!((host.peer_build(), guest.peer_build()), (Some("test"), Some("test")));
    }
}

#[test]
fn no_common_version_is_a_clear_error_on_both_sides() {
    let mut host = Session::new(Side::Host, config(3, 4));
    let mut guest = Session::new(Side::Guest, config(1, 2));
    let hello = host.poll_transmit().expect("hello");
    let err = guest.handle_frame(hello).expect_err("no common version");
    assert!(matches!(err, SessionError::NoCommonVersion { ours: (1, 2), theirs: (3, 4) }), "{err}");
    assert!(err.to_string().contains("(1, 2)"), "{err}");
    let frames = drain(&mut guest);
    assert!(matches!(&frames[0], Frame::Welcome(Welcome { version: 0, min_version: 1, max_version: 2, .. })));
    assert!(matches!(&frames[1], Frame::Goodbye { code: GoodbyeCode::IncompatibleVersion, .. }));
    let err = host.handle_frame(frames[0].clone()).expect_err("no common version");
    assert!(matches!(err, SessionError::NoCommonVersion { ours: (3, 4), theirs: (1, 2) }), "{err}");
    assert!(host.is_closed());
}

#[test]
fn a_welcome_with_the_wrong_version_is_a_violation() {
    let mut host = Session::new(Side::Host, config(1, 3));
    let welcome = Welcome { version: 2, min_version: 1, max_version: 3, build: String::new() };
    assert_violation(host.handle_frame(Frame::Welcome(welcome)), &mut host);
    let mut host = Session::new(Side::Host, config(1, 3));
    let welcome = Welcome { version: 0, min_version: 1, max_version: 3, build: String::new() };
    assert_violation(host.handle_frame(Frame::Welcome(welcome)), &mut host);
}

#[test]
fn frames_out_of_place_are_violations() {
    let mut guest = Session::new(Side::Guest, SessionConfig::new("g"));
    assert_violation(guest.handle_frame(Frame::Ping(1)), &mut guest);
    let mut host = Session::new(Side::Host, SessionConfig::new("h"));
    assert_violation(
        host.handle_frame(Frame::Hello(Hello { min_version: 1, max_version: 1, build: "h".into() })),
        &mut host,
    );
    let mut guest = Session::new(Side::Guest, SessionConfig::new("g"));
    let empty_range = Hello { min_version: 2, max_version: 1, build: String::new() };
    assert_violation(guest.handle_frame(Frame::Hello(empty_range)), &mut guest);

    let (mut host, mut guest) = pair();
    let hello = Frame::Hello(Hello { min_version: 1, max_version: 1, build: String::new() });
    assert_violation(guest.handle_frame(hello), &mut guest);
    assert_violation(host.handle_frame(Frame::Request { id: 1, body: Bytes::from_static(b"{}") }), &mut host);
    let (_, mut guest) = pair();
    assert_violation(guest.handle_frame(Frame::Event { body: Bytes::from_static(b"{}") }), &mut guest);
}

#[test]
fn requests_and_responses_pair_up() {
    let (mut host, mut guest) = pair();
    let a = host.send_request(&HostRequest::StartContainer { id: "c1".into() }).expect("sent");
    let b = host.send_request(&HostRequest::ListContainers).expect("sent");
    assert_ne!(a, b);
    assert_eq!(host.pending_requests(), 2);
    let events = pump(&mut host, &mut guest);
    assert_eq!(
        events,
        [
            SessionEvent::Request { id: a, request: HostRequest::StartContainer { id: "c1".into() } },
            SessionEvent::Request { id: b, request: HostRequest::ListContainers },
        ]
    );
    // Answered out of order.
    guest.respond(b, &Ok(GuestReply::Containers { containers: vec![] })).expect("answered");
    guest.respond(a, &Err(ErrorReply::new(ErrorCode::StartFailed, "exec: no such file"))).expect("answered");
    assert!(matches!(guest.respond(a, &Ok(GuestReply::Ok)), Err(SessionError::UnknownRequest(_))));
    let events = pump(&mut guest, &mut host);
    assert_eq!(
        events,
        [
            SessionEvent::Response { id: b, reply: Ok(GuestReply::Containers { containers: vec![] }) },
            SessionEvent::Response { id: a, reply: Err(ErrorReply::new(ErrorCode::StartFailed, "exec: no such file")) },
        ]
    );
    assert_eq!(host.pending_requests(), 0);
    assert_eq!(guest.pending_requests(), 0);
}

#[test]
fn a_response_to_an_unknown_request_is_a_violation() {
    let (mut host, _) = pair();
    let body = message::encode_reply(&Ok(GuestReply::Ok)).expect("encodes");
    assert_violation(host.handle_frame(Frame::Response { id: 9, body: body.into() }), &mut host);
    let (mut host, _) = pair();
    let id = host.send_request(&HostRequest::Shutdown).expect("sent");
    assert_violation(host.handle_frame(Frame::Response { id, body: Bytes::from_static(b"{\"ok\":7}") }), &mut host);
}

#[test]
fn a_reused_request_id_is_a_violation() {
    let (_, mut guest) = pair();
    let body = Bytes::from(message::encode_request(&HostRequest::Shutdown).expect("encodes"));
    assert!(guest.handle_frame(Frame::Request { id: 5, body: body.clone() }).expect("ok").is_some());
    assert_violation(guest.handle_frame(Frame::Request { id: 5, body }), &mut guest);
}

#[test]
fn undecodable_requests_are_answered_by_the_session() {
    let (mut host, mut guest) = pair();
    for (body, code) in
        [(&br#"{"type":"teleport"}"#[..], ErrorCode::Unsupported), (&b"{not json"[..], ErrorCode::InvalidArgument)]
    {
        // Sent as raw frames: the host's own API only sends valid requests.
        let id = host.send_request(&HostRequest::Shutdown).expect("sent");
        drain(&mut host);
        assert_eq!(guest.handle_frame(Frame::Request { id, body: Bytes::copy_from_slice(body) }).expect("ok"), None);
        let events = pump(&mut guest, &mut host);
        assert!(matches!(&events[..], [SessionEvent::Response { reply: Err(e), .. }] if e.code == code), "{events:?}");
    }
    assert_eq!(guest.pending_requests(), 0);
}

#[test]
fn calls_for_the_other_side_are_refused() {
    let (mut host, mut guest) = pair();
    assert!(matches!(guest.send_request(&HostRequest::Shutdown), Err(SessionError::WrongSide(_))));
    assert!(matches!(host.respond(1, &Ok(GuestReply::Ok)), Err(SessionError::WrongSide(_))));
    assert!(matches!(host.send_event(&GuestEvent::Oom { id: "c".into() }), Err(SessionError::WrongSide(_))));
}

#[test]
fn pending_requests_are_bounded() {
    let (mut host, _) = pair();
    for _ in 0..MAX_PENDING_REQUESTS {
        host.send_request(&HostRequest::ListContainers).expect("sent");
    }
    assert!(matches!(host.send_request(&HostRequest::ListContainers), Err(SessionError::TooManyRequests)));
    let (_, mut guest) = pair();
    let body = Bytes::from(message::encode_request(&HostRequest::ListContainers).expect("encodes"));
    for id in 0..MAX_PENDING_REQUESTS as u64 {
        guest.handle_frame(Frame::Request { id, body: body.clone() }).expect("within bound");
    }
    assert_violation(guest.handle_frame(Frame::Request { id: u64::MAX, body }), &mut guest);
}

#[test]
fn events_reach_the_host() {
    let (mut host, mut guest) = pair();
    let events = message::tests::every_event();
    for event in &events {
        guest.send_event(event).expect("sent");
    }
    let got = pump(&mut guest, &mut host);
    let expected: Vec<_> = events.into_iter().map(SessionEvent::Event).collect();
    assert_eq!(got, expected);
    assert_violation(host.handle_frame(Frame::Event { body: Bytes::from_static(b"{\"type\":\"x\"}") }), &mut host);
}

#[test]
fn pings_are_answered_and_coalesced() {
    let (mut host, mut guest) = pair();
    host.ping(1).expect("ping");
    host.ping(2).expect("ping");
    assert!(pump(&mut host, &mut guest).is_empty());
    assert_eq!(drain(&mut guest), [Frame::Pong(2)]);
    assert_eq!(host.handle_frame(Frame::Pong(2)).expect("ok"), Some(SessionEvent::Pong(2)));
}

#[test]
fn goodbye_ends_the_session() {
    let (mut host, mut guest) = pair();
    host.goodbye(GoodbyeCode::Normal, "pod stopped").expect("sent");
    assert!(host.is_closed());
    assert!(matches!(host.send_request(&HostRequest::Shutdown), Err(SessionError::Closed)));
    assert!(matches!(host.goodbye(GoodbyeCode::Normal, ""), Err(SessionError::Closed)));
    let events = pump(&mut host, &mut guest);
    assert_eq!(events, [SessionEvent::Goodbye { code: GoodbyeCode::Normal, reason: "pod stopped".into() }]);
    assert!(guest.is_closed());
    let long = "x".repeat(5000);
    let (mut host, _) = pair();
    host.goodbye(GoodbyeCode::Internal, &long).expect("sent");
    assert!(matches!(drain(&mut host).last(), Some(Frame::Goodbye { reason, .. }) if reason.len() == MAX_REASON_LEN));
}

#[test]
fn queue_bounds_refuse_application_frames() {
    let mut cfg = SessionConfig::new("h");
    cfg.max_queued = 4096;
    let mut host = Session::new(Side::Host, cfg);
    let mut guest = Session::new(Side::Guest, SessionConfig::new("g"));
    pump(&mut host, &mut guest);
    pump(&mut guest, &mut host);
    let big = HostRequest::Stats { ids: vec!["x".repeat(1000); 3] };
    host.send_request(&big).expect("fits");
    let err = host.send_request(&big).expect_err("full");
    assert!(matches!(err, SessionError::QueueFull { max: 4096, .. }), "{err}");
    assert!(!err.is_fatal());
    assert_eq!(host.pending_requests(), 1);
    drain(&mut host);
    host.send_request(&big).expect("room again");
}

#[test]
fn a_peer_that_does_not_read_cannot_grow_the_queue() {
    let mut cfg = SessionConfig::new("g");
    cfg.max_queued = 64 * 1024;
    let mut guest = Session::new(Side::Guest, cfg);
    let hello = Frame::Hello(Hello { min_version: 1, max_version: 1, build: String::new() });
    guest.handle_frame(hello).expect("ready");
    let mut id = 0;
    let err = loop {
        id += 1;
        // Every bad request makes the guest queue an error reply.
        match guest.handle_frame(Frame::Request { id, body: Bytes::from_static(b"bad") }) {
            Ok(_) => assert!(guest.queued_bytes() <= 64 * 1024),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SessionError::TransmitOverflow { .. }), "{err}");
    assert!(guest.is_closed());
}
