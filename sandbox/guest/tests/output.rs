//! Container output through the kvm-test agent: lots of it, across the
//! rotations of the agent's log file, in order, before the exit.
//! Root, `unshare` (util-linux) and busybox-static are needed.

mod support;

use guest_proto::message::{GuestEvent, GuestReply, HostRequest};
use guest_proto::session::SessionEvent;
use support::{Agent, Host, can_run, create, setup_pod};

const LINES: u32 = 200_000;
const STEP: u32 = 2_000;
const STEPS: u32 = LINES / STEP;

#[test]
fn output_comes_whole_in_order_across_log_rotations_and_before_the_exit() {
    if !can_run("output_comes_whole_in_order_across_log_rotations_and_before_the_exit") {
        return;
    }
    let mut agent = Agent::start("output");
    let mut host = Host::connect(&agent.socket);
    setup_pod(&mut host);
    // In steps, so that the file is rotated while the container runs.
    let script = format!(
        "i=0; while [ $i -lt {STEPS} ]; do seq $((i*{STEP}+1)) $((i*{STEP}+{STEP})); sleep 0.02; i=$((i+1)); done"
    );
    host.ok(&create(&agent, "c1", &["/bin/sh", "-c", &script], true));
    assert_eq!(
        host.ok(&HostRequest::SubscribeOutput { id: "c1".into(), from_offset: 0 }),
        GuestReply::Subscribed { from_offset: 0 }
    );
    host.ok(&HostRequest::StartContainer { id: "c1".into() });
    let mut text = Vec::new();
    let mut next = 0;
    let exit = loop {
        let event = host.wait_event("output or exit", |e| {
            matches!(e, SessionEvent::Event(GuestEvent::Output(b)) if b.id == "c1")
                || matches!(e, SessionEvent::Event(GuestEvent::ContainerExited { id, .. }) if id == "c1")
        });
        match event {
            SessionEvent::Event(GuestEvent::Output(batch)) => {
                for record in batch.records {
                    assert_eq!(record.offset, next, "no gap, no duplicate");
                    next = record.end();
                    text.extend_from_slice(&record.data);
                }
                host.ok(&HostRequest::AckOutput { id: "c1".into(), offset: next });
            }
            SessionEvent::Event(GuestEvent::ContainerExited { exit, .. }) => break exit,
            other => panic!("{other:?}"),
        }
    };
    let expected: String = (1..=LINES).map(|i| format!("{i}\n")).collect();
    assert!(
        text == expected.as_bytes(),
        "every line, in order, before the exit ({} bytes of {})",
        text.len(),
        expected.len()
    );
    assert_eq!((exit.exit_code, exit.reason.as_str()), (0, "Completed"));
    let log = agent.state.join("run/logs/c1.log");
    let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(size < 6 << 20, "the agent's log file was rotated: {size} bytes left of about 9 MB written");
    assert!(agent.log().contains("log rotated"), "{}", agent.log());

    assert_eq!(host.ok(&HostRequest::Shutdown), GuestReply::Ok);
    assert!(host.wait_closed());
    assert_eq!(agent.wait_exit(), 0);
}
