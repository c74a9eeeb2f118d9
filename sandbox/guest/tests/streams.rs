//! Exec on a terminal with resize, and attach, through the kvm-test agent.
//! Root, `unshare` (util-linux) and busybox-static are needed.

mod support;

use guest_proto::message::{AttachRequest, ExecRequest, GuestEvent, GuestReply, HostRequest};
use guest_proto::session::SessionEvent;
use support::{Agent, Host, can_run, create, create_request, setup_pod};

/// Data on `stream` until the text holds `wanted`.
fn read_until(host: &mut Host, stream: guest_proto::codec::StreamId, wanted: &str) -> String {
    let mut text = String::new();
    while !text.contains(wanted) {
        let event = host.wait_event(wanted, |e| matches!(e, SessionEvent::Data { stream: s, .. } if *s == stream));
        if let SessionEvent::Data { data, .. } = event {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}

#[test]
fn exec_on_a_terminal_follows_resizes_and_attach_reaches_the_container() {
    if !can_run("exec_on_a_terminal_follows_resizes_and_attach_reaches_the_container") {
        return;
    }
    let mut agent = Agent::start("streams");
    let mut host = Host::connect(&agent.socket);
    setup_pod(&mut host);
    host.ok(&create(&agent, "c1", &["/bin/sleep", "1000"], true));
    host.ok(&HostRequest::StartContainer { id: "c1".into() });

    let tty = host.session.open_stream().expect("open");
    host.ok(&HostRequest::Exec(ExecRequest {
        id: "c1".into(),
        args: vec!["/bin/sh".into(), "-c".into(), "read line; stty size; echo got $line".into()],
        env_extra: Vec::new(),
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
        stream: tty,
        stderr_stream: None,
    }));
    host.ok(&HostRequest::Resize { stream: tty, rows: 33, cols: 77 });
    host.session.send_data(tty, b"hello\n").expect("send");
    host.flush();
    let text = read_until(&mut host, tty, "got hello");
    assert!(text.contains("33 77"), "the terminal has the size the host set: {text:?}");
    let exited = host.wait_event("ExecExited", |e| matches!(e, SessionEvent::Event(GuestEvent::ExecExited { .. })));
    assert_eq!(exited, SessionEvent::Event(GuestEvent::ExecExited { stream: tty, exit_code: 0 }));
    let no_tty = host.request(&HostRequest::Resize { stream: tty, rows: 1, cols: 1 });
    assert!(no_tty.is_err(), "the exec is over");

    let mut cat = agent.container("c3", &["/bin/cat"]);
    cat.process.stdin = true;
    host.ok(&create_request(&cat, true));
    host.ok(&HostRequest::StartContainer { id: "c3".into() });
    let (main, err) = (host.session.open_stream().expect("open"), host.session.open_stream().expect("open"));
    host.ok(&HostRequest::Attach(AttachRequest {
        id: "c3".into(),
        stdin: true,
        stdout: true,
        stderr: true,
        stream: main,
        stderr_stream: Some(err),
    }));
    host.session.send_data(main, b"attached\n").expect("send");
    host.flush();
    read_until(&mut host, main, "attached\n");
    assert_eq!(
        host.ok(&HostRequest::SubscribeOutput { id: "c3".into(), from_offset: 0 }),
        GuestReply::Subscribed { from_offset: 0 }
    );
    let records = host.output_until("c3", |text| text == "attached\n");
    assert_eq!(records.len(), 1, "the attached input reached the container, and its log");
    // Detach: the container keeps running.
    host.session.reset_stream(main, guest_proto::codec::ResetCode::Cancel, "detach").expect("reset");
    host.session.reset_stream(err, guest_proto::codec::ResetCode::Cancel, "detach").expect("reset");
    host.flush();
    assert!(matches!(support::state(&mut host, "c3"), guest_proto::message::ContainerStatus::Running { .. }));

    assert_eq!(host.ok(&HostRequest::Shutdown), GuestReply::Ok);
    assert!(host.wait_closed());
    assert_eq!(agent.wait_exit(), 0);
    assert!(agent.processes_in_netns().is_empty());
}
