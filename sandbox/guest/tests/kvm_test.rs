//! The guest agent in kvm-test mode, end to end: started as crius starts
//! it, driven over its socket by a test host speaking the guest protocol.
//! Root, `unshare` (util-linux) and busybox-static are needed.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use crius_sandbox::backend::START_ERROR_EXIT_CODE;
use crius_sandbox::cgroups::{Cgroup, detect_host};
use guest_proto::codec::{Decoder, Frame, GoodbyeCode, Hello};
use guest_proto::message::{
    ContainerCreate, ContainerStatus, DnsConfig, ErrorCode, ExecRequest, ExecSyncRequest, GuestEvent, GuestReply,
    HostRequest, HostsEntry, OutputStream, PodSetup, Rootfs,
};
use guest_proto::session::SessionEvent;
use support::{Agent, Host, can_run, create, state};

const SCRIPT: &str = "nc -ll -p 7777 -e /bin/cat </dev/null >/dev/null 2>&1 &
i=0; while [ $i -lt 5 ]; do echo line$i; i=$((i+1)); done; echo oops >&2
hostname; grep nameserver /etc/resolv.conf; grep db /etc/hosts
while [ ! -e /tmp/go ]; do sleep 0.05; done
i=0; while [ $i -lt 3 ]; do sleep 0.2; echo after$i; i=$((i+1)); done
exec sleep 1000";

#[test]
fn kvm_test_agent_runs_containers_across_reconnects() {
    if !can_run("kvm_test_agent_runs_containers_across_reconnects") {
        return;
    }
    let mut agent = Agent::start("main");
    let mut host = Host::connect(&agent.socket);

    host.ok(&HostRequest::SetupPod(PodSetup {
        hostname: "guest-test".into(),
        dns: DnsConfig {
            servers: vec!["10.0.0.10".parse().expect("ip")],
            searches: vec!["svc.local".into()],
            options: vec!["ndots:5".into()],
        },
        hosts_entries: vec![HostsEntry { ip: "10.1.2.3".parse().expect("ip"), names: vec!["db".into()] }],
        interfaces: Vec::new(),
        sysctls: BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]),
    }));

    // A container: its output comes as records, in order, numbered from 0.
    host.ok(&create(&agent, "c1", &["/bin/sh", "-c", SCRIPT], true));
    assert!(matches!(state(&mut host, "c1"), ContainerStatus::Created { .. }));
    match host.ok(&HostRequest::StartContainer { id: "c1".into() }) {
        GuestReply::Started { started_at_ns } => assert!(started_at_ns > 0),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        host.ok(&HostRequest::SubscribeOutput { id: "c1".into(), from_offset: 0 }),
        GuestReply::Subscribed { from_offset: 0 }
    );
    let records = host.output_until("c1", |text| text.contains("\tdb\n"));
    assert_eq!(records[0].offset, 0);
    assert!(records.windows(2).all(|w| w[0].end() == w[1].offset), "contiguous offsets: {records:?}");
    let stdout: String = records
        .iter()
        .filter(|r| r.stream == OutputStream::Stdout)
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(
        stdout, "line0\nline1\nline2\nline3\nline4\nguest-test\nnameserver 10.0.0.10\n10.1.2.3\tdb\n",
        "in order, with the pod's hostname, resolv.conf and hosts"
    );
    let stderr: Vec<_> = records.iter().filter(|r| r.stream == OutputStream::Stderr).collect();
    assert_eq!(stderr.len(), 1);
    assert_eq!(stderr[0].data, b"oops\n");
    let seen = records.last().expect("records").end();
    host.ok(&HostRequest::AckOutput { id: "c1".into(), offset: seen });

    // ExecSync.
    let exec_sync = |args: &[&str]| {
        HostRequest::ExecSync(ExecSyncRequest {
            id: "c1".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env_extra: Vec::new(),
            timeout_ms: 10_000,
            max_output: 4096,
        })
    };
    match host.ok(&exec_sync(&["/bin/sh", "-c", "echo hello; echo bad >&2; exit 3"])) {
        GuestReply::ExecSyncResult(out) => {
            assert_eq!((out.exit_code, &out.stdout[..], &out.stderr[..]), (3, &b"hello\n"[..], &b"bad\n"[..]));
        }
        other => panic!("{other:?}"),
    }

    // Exec on streams: stdin comes back on stdout, then the exit.
    let (main, err) = (host.session.open_stream().expect("open"), host.session.open_stream().expect("open"));
    host.ok(&HostRequest::Exec(ExecRequest {
        id: "c1".into(),
        args: vec!["/bin/cat".into()],
        env_extra: Vec::new(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: true,
        stream: main,
        stderr_stream: Some(err),
    }));
    assert_eq!(host.session.send_data(main, b"ping\n").expect("send"), 5);
    host.session.close_stream(main).expect("close");
    host.flush();
    assert_eq!(host.read_stream(main), b"ping\n");
    assert_eq!(host.read_stream(err), b"");
    let exited = host.wait_event("ExecExited", |e| matches!(e, SessionEvent::Event(GuestEvent::ExecExited { .. })));
    assert_eq!(exited, SessionEvent::Event(GuestEvent::ExecExited { stream: main, exit_code: 0 }));

    // A port forward to the container's echo server.
    let mut echoed = None;
    for _ in 0..100 {
        let stream = host.session.open_stream().expect("open");
        if host.request(&HostRequest::PortForward { port: 7777, stream }).is_err() {
            std::thread::sleep(Duration::from_millis(50)); // nc is not listening yet
            continue;
        }
        host.session.send_data(stream, b"through the tunnel\n").expect("send");
        host.flush();
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let event = host
                .wait_event("forwarded data", |e| matches!(e, SessionEvent::Data { stream: s, .. } if *s == stream));
            if let SessionEvent::Data { data, .. } = event {
                got.extend_from_slice(&data);
            }
        }
        host.session.close_stream(stream).expect("close");
        host.flush();
        assert_eq!(host.read_stream(stream), b"", "the echo ends when the host closes");
        echoed = Some(got);
        break;
    }
    assert_eq!(echoed.as_deref(), Some(&b"through the tunnel\n"[..]));

    // The host goes away while the container writes; a new host resumes
    // from the last offset it wrote: nothing lost, nothing twice.
    assert!(
        matches!(host.ok(&exec_sync(&["/bin/touch", "/tmp/go"])), GuestReply::ExecSyncResult(o) if o.exit_code == 0)
    );
    drop(host);
    std::thread::sleep(Duration::from_millis(1500));
    let mut host = Host::connect(&agent.socket);
    assert!(matches!(state(&mut host, "c1"), ContainerStatus::Running { .. }), "still running");
    assert_eq!(
        host.ok(&HostRequest::SubscribeOutput { id: "c1".into(), from_offset: seen }),
        GuestReply::Subscribed { from_offset: seen }
    );
    let records = host.output_until("c1", |text| text.contains("after2\n"));
    assert_eq!(records[0].offset, seen);
    assert!(records.windows(2).all(|w| w[0].end() == w[1].offset));
    let text: String = records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect();
    assert_eq!(text, "after0\nafter1\nafter2\n");

    // A program that does not exist: the start fails, the container exits.
    host.ok(&create(&agent, "c2", &["/bin/nonexistent"], false));
    let failed = host.request(&HostRequest::StartContainer { id: "c2".into() }).expect_err("start fails");
    assert_eq!(failed.code, ErrorCode::StartFailed, "{failed:?}");
    let exit = host.wait_event(
        "c2's exit",
        |e| matches!(e, SessionEvent::Event(GuestEvent::ContainerExited { id, .. }) if id == "c2"),
    );
    match exit {
        SessionEvent::Event(GuestEvent::ContainerExited { exit, .. }) => {
            assert_eq!((exit.exit_code, exit.reason.as_str()), (START_ERROR_EXIT_CODE, "StartError"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(state(&mut host, "c2"), ContainerStatus::Exited(e) if e.exit_code == START_ERROR_EXIT_CODE));

    match host.ok(&HostRequest::Stats { ids: vec!["c1".into()] }) {
        GuestReply::Stats(stats) => {
            assert_eq!(stats.containers.len(), 1);
            assert!(stats.containers[0].pids >= 1 && stats.pod.pids >= stats.containers[0].pids, "{stats:?}");
        }
        other => panic!("{other:?}"),
    }
    match host.ok(&HostRequest::ListContainers) {
        GuestReply::Containers { containers } => assert_eq!(containers.len(), 2),
        other => panic!("{other:?}"),
    }

    // Remove, then shut down: nothing is left.
    let mode = detect_host().expect("cgroups");
    let c1_cgroup = Cgroup::open(&mode, &agent.cgroup("c1")).expect("cgroup");
    assert!(c1_cgroup.exists());
    host.ok(&HostRequest::RemoveContainer { id: "c1".into() });
    assert!(!c1_cgroup.exists(), "removed with its cgroup");
    let gone = host.request(&HostRequest::ContainerState { id: "c1".into() }).expect_err("gone");
    assert_eq!(gone.code, ErrorCode::NotFound);
    host.ok(&HostRequest::RemoveContainer { id: "c1".into() });
    assert_eq!(host.ok(&HostRequest::Shutdown), GuestReply::Ok);
    let bye = host.wait_event("Goodbye", |e| matches!(e, SessionEvent::Goodbye { .. }));
    assert!(matches!(bye, SessionEvent::Goodbye { code: GoodbyeCode::Normal, .. }));
    assert_eq!(agent.wait_exit(), 0, "log:\n{}", agent.log());
    assert!(!Cgroup::open(&mode, &agent.cgroup("c2")).expect("cgroup").exists());
    assert!(agent.processes_in_netns().is_empty(), "left: {:?}", agent.processes_in_netns());
    assert!(!agent.socket.exists() && !agent.state.join("run").exists(), "the socket and run root are removed");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(agent.dir.to_str().expect("utf-8")), "no mount left under {}", agent.dir.display());
}

/// Raw frames: requests the host's session would not send.
struct Raw {
    sock: std::os::unix::net::UnixStream,
    decoder: Decoder,
    buf: Vec<u8>,
    next_id: u64,
}

impl Raw {
    fn connect(agent: &Agent) -> Raw {
        let sock = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
        sock.set_read_timeout(Some(support::TIMEOUT)).expect("timeout");
        let mut raw = Raw { sock, decoder: Decoder::new(), buf: Vec::new(), next_id: 1 };
        raw.send(Frame::Hello(Hello { min_version: 1, max_version: 1, build: "raw".into() }));
        assert!(matches!(raw.frame(), Some(Frame::Welcome(w)) if w.version == 1));
        raw
    }

    fn send(&mut self, frame: Frame) {
        use std::io::Write;
        self.sock.write_all(&frame.to_bytes().expect("encode")).expect("write");
    }

    /// The next frame; `None` at the end of the connection.
    fn frame(&mut self) -> Option<Frame> {
        use std::io::Read;
        loop {
            let mut chunk = &self.buf[..];
            let decoded = self.decoder.decode(&mut chunk).expect("a frame");
            let used = self.buf.len() - chunk.len();
            self.buf.drain(..used);
            if decoded.is_some() {
                return decoded;
            }
            let mut read = [0u8; 4096];
            let n = self.sock.read(&mut read).expect("read");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&read[..n]);
        }
    }

    /// Sends a raw request body; the error code of the answer.
    fn refused(&mut self, body: &[u8]) -> ErrorCode {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Frame::Request { id, body: body.to_vec().into() });
        match self.frame() {
            Some(Frame::Response { id: got, body }) => {
                assert_eq!(got, id);
                match guest_proto::message::decode_reply(&body).expect("a reply") {
                    Err(e) => e.code,
                    Ok(reply) => panic!("{} accepted: {reply:?}", String::from_utf8_lossy(body.as_ref())),
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn hostile_requests_get_error_replies() {
    if !can_run("hostile_requests_get_error_replies") {
        return;
    }
    let mut agent = Agent::start("hostile");
    let mut raw = Raw::connect(&agent);
    let json = |r: &HostRequest| guest_proto::message::encode_request(r).expect("encode");
    assert_eq!(raw.refused(b"{"), ErrorCode::InvalidArgument);
    assert_eq!(raw.refused(br#"{"type":"frobnicate"}"#), ErrorCode::Unsupported);
    let bad_spec = HostRequest::CreateContainer(ContainerCreate {
        id: "x".into(),
        spec: serde_json::json!({"nope": 1}),
        rootfs: Rootfs { layers: Vec::new(), writable: String::new() },
        log: true,
    });
    assert_eq!(raw.refused(&json(&bad_spec)), ErrorCode::InvalidArgument);
    assert_eq!(raw.refused(&json(&create(&agent, "c1", &["/bin/true"], true))), ErrorCode::InvalidArgument, "no pod");
    assert_eq!(raw.refused(&json(&create(&agent, "bad id", &["/bin/true"], true))), ErrorCode::InvalidArgument);
    assert_eq!(raw.refused(&json(&HostRequest::StartContainer { id: "none".into() })), ErrorCode::NotFound);
    assert_eq!(
        raw.refused(&json(&HostRequest::SignalContainer { id: "x".into(), signal: 999 })),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        raw.refused(&json(&HostRequest::SubscribeOutput { id: "none".into(), from_offset: 0 })),
        ErrorCode::NotFound
    );
    assert_eq!(raw.refused(&json(&HostRequest::AckOutput { id: "none".into(), offset: 7 })), ErrorCode::NotFound);
    let stream = guest_proto::codec::StreamId::new(1).expect("id");
    assert_eq!(
        raw.refused(&json(&HostRequest::PortForward { port: 80, stream })),
        ErrorCode::InvalidArgument,
        "never opened"
    );
    let resize = HostRequest::Resize { stream, rows: 1, cols: 1 };
    assert_eq!(raw.refused(&json(&resize)), ErrorCode::NotFound);
    let update = HostRequest::UpdateResources { id: "x".into(), resources: serde_json::json!("lots") };
    assert_eq!(raw.refused(&json(&update)), ErrorCode::InvalidArgument);
    // A frame that breaks the framing ends the connection, not the agent.
    use std::io::Write;
    raw.sock.write_all(&[0, 0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0]).expect("write");
    assert!(matches!(raw.frame(), Some(Frame::Goodbye { code: GoodbyeCode::ProtocolError, .. })));
    assert_eq!(raw.frame(), None, "closed");

    let mut host = Host::connect(&agent.socket);
    assert_eq!(host.ok(&HostRequest::ListContainers), GuestReply::Containers { containers: Vec::new() });
    assert_eq!(host.ok(&HostRequest::Shutdown), GuestReply::Ok);
    assert!(host.wait_closed());
    assert_eq!(agent.wait_exit(), 0);
}
