use bytes::Bytes;

use super::tests::{assert_violation, drain, pair, pump, sid};
use super::*;
use crate::codec::MAX_DATA_PAYLOAD;

fn data(stream: StreamId, len: usize) -> Frame {
    Frame::Data { stream, data: Bytes::from(vec![0xab; len]) }
}

/// Sum of Data bytes among `events`, per stream.
fn received(events: &[SessionEvent], stream: StreamId) -> usize {
    events
        .iter()
        .map(|e| match e {
            SessionEvent::Data { stream: s, data } if *s == stream => data.len(),
            _ => 0,
        })
        .sum()
}

#[test]
fn host_opens_odd_ids_guest_even_ones() {
    let (mut host, mut guest) = pair();
    let h: Vec<u32> = (0..3).map(|_| host.open_stream().expect("open").get()).collect();
    let g: Vec<u32> = (0..3).map(|_| guest.open_stream().expect("open").get()).collect();
    assert_eq!((h, g), (vec![1, 3, 5], vec![2, 4, 6]));
    let events = pump(&mut host, &mut guest);
    assert_eq!(events, [1, 3, 5].map(|n| SessionEvent::StreamOpened(sid(n))));
    pump(&mut guest, &mut host);
    assert_eq!((host.open_streams(), guest.open_streams()), (6, 6));
}

#[test]
fn bad_opens_are_violations() {
    let (_, mut guest) = pair();
    assert_violation(guest.handle_frame(Frame::Open { stream: sid(2) }), &mut guest);
    let (_, mut guest) = pair();
    guest.handle_frame(Frame::Open { stream: sid(5) }).expect("open");
    assert_violation(guest.handle_frame(Frame::Open { stream: sid(5) }), &mut guest);
    let (_, mut guest) = pair();
    guest.handle_frame(Frame::Open { stream: sid(5) }).expect("open");
    assert_violation(guest.handle_frame(Frame::Open { stream: sid(3) }), &mut guest);
}

#[test]
fn frames_on_streams_never_opened_are_violations() {
    for frame in [
        data(sid(1), 1),
        Frame::Credit { stream: sid(1), increment: 1 },
        Frame::Close { stream: sid(1) },
        Frame::Reset { stream: sid(1), code: ResetCode::Cancel, reason: String::new() },
        data(sid(2), 1),
    ] {
        let (_, mut guest) = pair();
        assert_violation(guest.handle_frame(frame), &mut guest);
    }
}

#[test]
fn data_flows_and_credit_returns_in_batches() {
    let (mut host, mut guest) = pair();
    let s = host.open_stream().expect("open");
    assert_eq!(host.send_data(s, b"hello").expect("sent"), 5);
    let events = pump(&mut host, &mut guest);
    assert_eq!(events[1], SessionEvent::Data { stream: s, data: Bytes::from_static(b"hello") });
    assert_eq!(host.send_credit(s), Some(INITIAL_WINDOW - 5));
    // A small consumption is not worth a Credit frame yet.
    guest.consumed(s, 5).expect("consumed");
    assert!(drain(&mut guest).is_empty());
    assert!(matches!(guest.consumed(s, 1), Err(SessionError::OverConsumed { unconsumed: 0, .. })));
    let big = vec![7u8; 100_000];
    assert_eq!(host.send_data(s, &big).expect("sent"), big.len());
    let events = pump(&mut host, &mut guest);
    assert_eq!(received(&events, s), big.len());
    guest.consumed(s, big.len()).expect("consumed");
    let events = pump(&mut guest, &mut host);
    assert_eq!(events, [SessionEvent::Writable { stream: s, credit: INITIAL_WINDOW }]);
}

#[test]
fn a_stream_without_credit_does_not_block_another() {
    let (mut host, mut guest) = pair();
    let slow = host.open_stream().expect("open");
    let fast = host.open_stream().expect("open");
    pump(&mut host, &mut guest);
    let chunk = vec![1u8; 32 * 1024];
    // Fill the slow stream's window; its receiver consumes nothing.
    let mut sent = 0;
    while sent < INITIAL_WINDOW as usize {
        let n = host.send_data(slow, &chunk).expect("sent");
        assert!(n > 0);
        sent += n;
        pump(&mut host, &mut guest);
    }
    assert_eq!(host.send_data(slow, &chunk).expect("no credit"), 0);
    assert_eq!(host.send_credit(slow), Some(0));
    // Ten windows' worth on the other stream, consumed as it arrives.
    let mut fast_bytes = 0;
    while fast_bytes < 10 * INITIAL_WINDOW as usize {
        let n = host.send_data(fast, &chunk).expect("sent");
        assert!(n > 0, "the fast stream stalled");
        let events = pump(&mut host, &mut guest);
        let got = received(&events, fast);
        assert_eq!(received(&events, slow), 0);
        fast_bytes += got;
        guest.consumed(fast, got).expect("consumed");
        pump(&mut guest, &mut host);
    }
    assert_eq!(host.send_credit(slow), Some(0));
    // The slow reader catches up: credit restores the slow stream.
    guest.consumed(slow, sent).expect("consumed");
    let events = pump(&mut guest, &mut host);
    assert!(events.contains(&SessionEvent::Writable { stream: slow, credit: INITIAL_WINDOW }), "{events:?}");
    assert!(host.send_data(slow, &chunk).expect("sent") > 0);
}

#[test]
fn data_beyond_the_window_resets_only_that_stream() {
    let (_, mut guest) = pair();
    guest.handle_frame(Frame::Open { stream: sid(1) }).expect("open");
    guest.handle_frame(Frame::Open { stream: sid(3) }).expect("open");
    for _ in 0..INITIAL_WINDOW as usize / MAX_DATA_PAYLOAD {
        guest.handle_frame(data(sid(1), MAX_DATA_PAYLOAD)).expect("within window");
    }
    let event = guest.handle_frame(data(sid(1), 1)).expect("stream error only");
    assert!(matches!(event, Some(SessionEvent::StreamReset { code: ResetCode::FlowControl, by_peer: false, .. })));
    assert!(matches!(drain(&mut guest)[..], [Frame::Reset { code: ResetCode::FlowControl, .. }]));
    // The reset stream's late data is ignored; the other stream still works.
    assert_eq!(guest.handle_frame(data(sid(1), 10)).expect("ignored"), None);
    assert!(guest.handle_frame(data(sid(3), 10)).expect("fine").is_some());
    assert!(!guest.is_closed());
}

#[test]
fn data_after_close_resets_the_stream() {
    let (_, mut guest) = pair();
    guest.handle_frame(Frame::Open { stream: sid(1) }).expect("open");
    assert_eq!(guest.handle_frame(Frame::Close { stream: sid(1) }).expect("ok"), Some(SessionEvent::Finished(sid(1))));
    let event = guest.handle_frame(data(sid(1), 1)).expect("stream error only");
    assert!(matches!(event, Some(SessionEvent::StreamReset { code: ResetCode::StreamState, .. })));
    assert_eq!(guest.open_streams(), 0);
}

#[test]
fn credit_beyond_the_largest_window_is_a_violation() {
    let (mut host, _) = pair();
    let s = host.open_stream().expect("open");
    let increment = MAX_WINDOW - INITIAL_WINDOW;
    assert!(host.handle_frame(Frame::Credit { stream: s, increment }).expect("ok").is_some());
    assert_violation(host.handle_frame(Frame::Credit { stream: s, increment: 1 }), &mut host);
}

#[test]
fn close_from_both_sides_finishes_the_stream() {
    let (mut host, mut guest) = pair();
    let s = host.open_stream().expect("open");
    host.send_data(s, b"last words").expect("sent");
    host.close_stream(s).expect("closed");
    host.close_stream(s).expect("idempotent");
    assert!(matches!(host.send_data(s, b"more"), Err(SessionError::StreamClosed(_))));
    let events = pump(&mut host, &mut guest);
    assert_eq!(events.last(), Some(&SessionEvent::Finished(s)));
    // The guest may still send until it closes too.
    guest.send_data(s, b"reply").expect("sent");
    guest.close_stream(s).expect("closed");
    assert_eq!(guest.open_streams(), 0);
    let events = pump(&mut guest, &mut host);
    assert_eq!(
        events,
        [SessionEvent::Data { stream: s, data: Bytes::from_static(b"reply") }, SessionEvent::Finished(s)]
    );
    assert_eq!(host.open_streams(), 0);
    // Gone, not unknown: late frames and calls are harmless.
    assert_eq!(host.handle_frame(Frame::Credit { stream: s, increment: 5 }).expect("ignored"), None);
    host.consumed(s, 0).expect("harmless");
    assert!(matches!(host.send_data(s, b"x"), Err(SessionError::StreamClosed(_))));
    assert!(matches!(host.send_data(sid(99), b"x"), Err(SessionError::UnknownStream(_))));
}

#[test]
fn reset_drops_queued_data_and_ends_the_stream() {
    let (mut host, mut guest) = pair();
    let s = host.open_stream().expect("open");
    let keep = host.open_stream().expect("open");
    host.send_data(s, &[1; 200_000]).expect("queued");
    host.send_data(keep, b"kept").expect("queued");
    host.reset_stream(s, ResetCode::Cancel, "client went away").expect("reset");
    let frames = drain(&mut host);
    assert!(!frames.iter().any(|f| matches!(f, Frame::Data { stream, .. } if *stream == s)));
    assert!(frames.iter().any(|f| matches!(f, Frame::Data { stream, .. } if *stream == keep)));
    for frame in frames {
        guest.handle_frame(frame).expect("valid");
    }
    assert_eq!(host.queued_bytes(), 0);
    assert_eq!(guest.open_streams(), 1);
    let event = guest.handle_frame(Frame::Reset { stream: keep, code: ResetCode::Internal, reason: "dial".into() });
    assert_eq!(
        event.expect("ok"),
        Some(SessionEvent::StreamReset {
            stream: keep,
            code: ResetCode::Internal,
            reason: "dial".into(),
            by_peer: true
        })
    );
}

#[test]
fn open_streams_are_bounded_on_both_sides() {
    let (mut host, mut guest) = pair();
    for _ in 0..MAX_STREAMS {
        host.open_stream().expect("open");
    }
    assert!(matches!(host.open_stream(), Err(SessionError::TooManyStreams)));
    pump(&mut host, &mut guest);
    // A closed stream frees a slot.
    let s = sid(1);
    host.close_stream(s).expect("closed");
    guest.close_stream(s).expect("closed");
    pump(&mut host, &mut guest);
    pump(&mut guest, &mut host);
    host.open_stream().expect("a slot again");
    // A peer ignoring the bound is cut off.
    let next = u32::try_from(2 * MAX_STREAMS + 10).expect("small") | 1;
    pump(&mut host, &mut guest);
    assert_violation(guest.handle_frame(Frame::Open { stream: sid(next) }), &mut guest);
}

#[test]
fn send_data_respects_the_queue_bound() {
    let mut cfg = SessionConfig::new("h");
    cfg.max_queued_data = 100_000;
    let mut host = Session::new(Side::Host, cfg);
    let mut guest = Session::new(Side::Guest, SessionConfig::new("g"));
    pump(&mut host, &mut guest);
    pump(&mut guest, &mut host);
    let s = host.open_stream().expect("open");
    let n = host.send_data(s, &[0; 200_000]).expect("partly");
    assert!(n < 100_000 && n > 90_000, "{n}");
    assert_eq!(host.send_data(s, &[0; 10]).expect("full"), 0);
    drain(&mut host);
    assert_eq!(host.send_data(s, &[0; 10]).expect("room again"), 10);
}

#[test]
fn receive_window_accounting_holds_under_random_traffic() {
    let (mut host, mut guest) = pair();
    let streams: Vec<StreamId> = (0..4).map(|_| host.open_stream().expect("open")).collect();
    pump(&mut host, &mut guest);
    let mut rng = crate::testutil::Rng::new(3);
    let mut unconsumed = [0usize; 4];
    for _ in 0..2_000 {
        let i = rng.below(4);
        let len = rng.below(50_000);
        host.send_data(streams[i], &vec![0; len]).expect("sent");
        for event in pump(&mut host, &mut guest) {
            if let SessionEvent::Data { stream, data } = event {
                unconsumed[streams.iter().position(|s| *s == stream).expect("known")] += data.len();
            }
        }
        let j = rng.below(4);
        let n = rng.below(unconsumed[j] + 1);
        guest.consumed(streams[j], n).expect("consumed");
        unconsumed[j] -= n;
        pump(&mut guest, &mut host);
        for (k, s) in streams.iter().enumerate() {
            let stream = &guest.streams[s];
            assert_eq!(stream.unconsumed as usize, unconsumed[k]);
            // The window identity: nothing is lost or invented.
            assert_eq!(stream.recv_window + stream.unconsumed + stream.pending_credit, INITIAL_WINDOW);
            assert!(host.send_credit(*s).expect("open") <= stream.recv_window);
        }
    }
}

#[test]
fn nothing_is_queued_after_goodbye() {
    let (mut host, mut guest) = pair();
    let s = host.open_stream().expect("open");
    host.send_data(s, b"data").expect("sent");
    pump(&mut host, &mut guest);
    guest.goodbye(GoodbyeCode::Normal, "shutting down").expect("bye");
    guest.consumed(s, 4).expect("harmless");
    assert!(matches!(guest.close_stream(s), Err(SessionError::Closed)));
    assert_eq!(guest.send_credit(s), None);
    assert!(matches!(drain(&mut guest).last(), Some(Frame::Goodbye { .. })));
    assert_eq!(guest.open_streams(), 0);
}
