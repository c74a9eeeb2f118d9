use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::*;
use crate::codec::StreamId;

fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("non-zero")
}

fn exit() -> ExitStatus {
    ExitStatus {
        exit_code: 137,
        signal: Some(9),
        started_at_ns: 1_700_000_000_000_000_000,
        finished_at_ns: u64::MAX,
        oom_killed: true,
        reason: "OOMKilled".into(),
        message: "killed by the OOM killer".into(),
    }
}

/// One of every request, with non-default values in every field.
pub(crate) fn every_request() -> Vec<HostRequest> {
    let setup = PodSetup {
        hostname: "web-0".into(),
        dns: DnsConfig {
            servers: vec!["10.96.0.10".parse().expect("ip"), "fd00::a".parse().expect("ip")],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        },
        hosts_entries: vec![HostsEntry { ip: "10.88.0.5".parse().expect("ip"), names: vec!["web-0".into()] }],
        interfaces: vec![InterfaceConfig {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".parse().expect("mac"),
            mtu: 1500,
            addresses: vec!["10.88.0.5/16".parse().expect("cidr"), "fd00::5/64".parse().expect("cidr")],
            routes: vec![
                RouteConfig {
                    dest: "0.0.0.0/0".parse().expect("cidr"),
                    gateway: Some("10.88.0.1".parse().expect("ip")),
                },
                RouteConfig { dest: "10.88.0.0/16".parse().expect("cidr"), gateway: None },
            ],
        }],
        sysctls: BTreeMap::from([("net.ipv4.ping_group_range".into(), "0 2147483647".into())]),
    };
    vec![
        HostRequest::SetupPod(setup),
        HostRequest::CreateContainer(ContainerCreate {
            id: "c1".into(),
            spec: json!({"process": {"args": ["sh"], "env": ["A=1"]}, "nested": [1, 2.5, null, true]}),
            rootfs: Rootfs {
                layers: vec!["/run/layers/a".into(), "/run/layers/b".into()],
                writable: "/run/rw/c1".into(),
            },
            log: true,
        }),
        HostRequest::StartContainer { id: "c1".into() },
        HostRequest::SignalContainer { id: "c1".into(), signal: 15 },
        HostRequest::RemoveContainer { id: "c1".into() },
        HostRequest::ContainerState { id: "c1".into() },
        HostRequest::ListContainers,
        HostRequest::ExecSync(ExecSyncRequest {
            id: "c1".into(),
            args: vec!["cat".into(), "/etc/hostname".into()],
            env_extra: vec!["X=y".into()],
            timeout_ms: 5_000,
            max_output: MAX_EXEC_SYNC_OUTPUT,
        }),
        HostRequest::Exec(ExecRequest {
            id: "c1".into(),
            args: vec!["sh".into()],
            env_extra: vec![],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
            stream: sid(7),
            stderr_stream: Some(sid(9)),
        }),
        HostRequest::Attach(AttachRequest {
            id: "c1".into(),
            stdin: false,
            stdout: true,
            stderr: false,
            stream: sid(11),
            stderr_stream: None,
        }),
        HostRequest::Resize { stream: sid(7), rows: 24, cols: 80 },
        HostRequest::PortForward { port: 8080, stream: sid(13) },
        HostRequest::Stats { ids: vec!["c1".into(), "c2".into()] },
        HostRequest::UpdateResources { id: "c1".into(), resources: json!({"cpu": {"shares": 512}}) },
        HostRequest::SubscribeOutput { id: "c1".into(), from_offset: u64::MAX },
        HostRequest::AckOutput { id: "c1".into(), offset: 4096 },
        HostRequest::Shutdown,
    ]
}

/// One of every reply, success and failure.
pub(crate) fn every_reply() -> Vec<Reply> {
    let stats = StatsReply {
        timestamp_ns: 1,
        containers: vec![ContainerStats {
            id: "c1".into(),
            cpu: CpuStats { usage_ns: 123 },
            memory: MemoryStats {
                working_set_bytes: 1,
                usage_bytes: 2,
                rss_bytes: 3,
                page_faults: 4,
                major_page_faults: 5,
                available_bytes: Some(6),
            },
            pids: 7,
        }],
        pod: PodStats {
            cpu: CpuStats { usage_ns: u64::MAX },
            memory: MemoryStats::default(),
            pids: 9,
            network: vec![InterfaceStats { name: "eth0".into(), rx_bytes: 1, rx_errors: 2, tx_bytes: 3, tx_errors: 4 }],
        },
    };
    let mut replies = vec![
        Ok(GuestReply::Ok),
        Ok(GuestReply::Started { started_at_ns: 42 }),
        Ok(GuestReply::State(ContainerStatus::Created { created_at_ns: 1 })),
        Ok(GuestReply::State(ContainerStatus::Running { started_at_ns: 2 })),
        Ok(GuestReply::State(ContainerStatus::Exited(exit()))),
        Ok(GuestReply::Containers {
            containers: vec![ContainerInfo { id: "c1".into(), status: ContainerStatus::Running { started_at_ns: 3 } }],
        }),
        Ok(GuestReply::ExecSyncResult(ExecSyncOutput {
            exit_code: 1,
            stdout: (0..=255).collect(),
            stderr: b"no such file\n".to_vec(),
            truncated: true,
        })),
        Ok(GuestReply::Stats(stats)),
        Ok(GuestReply::Subscribed { from_offset: 77 }),
    ];
    for code in [
        ErrorCode::NotFound,
        ErrorCode::InvalidArgument,
        ErrorCode::StartFailed,
        ErrorCode::Unsupported,
        ErrorCode::AlreadyExists,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Internal,
    ] {
        replies.push(Err(ErrorReply::new(code, format!("{code:?} happened"))));
    }
    replies
}

/// One of every event.
pub(crate) fn every_event() -> Vec<GuestEvent> {
    let record = |offset, stream, partial, data: &[u8]| OutputRecord {
        offset,
        stream,
        timestamp_ns: 1_700_000_000_123_456_789,
        partial,
        data: data.to_vec(),
    };
    vec![
        GuestEvent::Output(OutputBatch {
            id: "c1".into(),
            records: vec![
                record(0, OutputStream::Stdout, false, b"hello\n"),
                record(6, OutputStream::Stderr, true, &[0xff; 100]),
                record(106, OutputStream::Stderr, false, b"end"),
            ],
        }),
        GuestEvent::ContainerExited { id: "c1".into(), exit: exit() },
        GuestEvent::Oom { id: "c1".into() },
        GuestEvent::ExecExited { stream: sid(7), exit_code: -1 },
        GuestEvent::Log(GuestLog {
            level: LogLevel::Warn,
            message: "mount failed".into(),
            fields: BTreeMap::from([("container".into(), "c1".into())]),
        }),
    ]
}

fn tag(json: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(json).expect("json");
    value["type"].as_str().expect("type tag").to_owned()
}

#[test]
fn every_request_round_trips() {
    let requests = every_request();
    let mut kinds = HashSet::new();
    for request in &requests {
        let json = encode_request(request).expect("encodes");
        assert_eq!(tag(&json), request.kind());
        assert_eq!(&decode_request(&json).expect("decodes"), request);
        assert_eq!(request.since(), 1);
        kinds.insert(request.kind());
    }
    assert_eq!(kinds.len(), HostRequest::KINDS.len(), "every_request() misses a request type");
}

#[test]
fn every_reply_round_trips() {
    let mut kinds = HashSet::new();
    for reply in every_reply() {
        let json = encode_reply(&reply).expect("encodes");
        assert_eq!(decode_reply(&json).expect("decodes"), reply);
        if let Ok(r) = &reply {
            let value: serde_json::Value = serde_json::from_slice(&json).expect("json");
            assert_eq!(value["ok"]["type"], r.kind());
            assert_eq!(r.since(), 1);
            kinds.insert(r.kind());
        }
    }
    assert_eq!(kinds.len(), 7, "every_reply() misses a reply type");
}

#[test]
fn every_event_round_trips() {
    let mut kinds = HashSet::new();
    for event in every_event() {
        let json = encode_event(&event).expect("encodes");
        assert_eq!(tag(&json), event.kind());
        assert_eq!(decode_event(&json).expect("decodes"), event);
        assert_eq!(event.since(), 1);
        kinds.insert(event.kind());
    }
    assert_eq!(kinds.len(), 5, "every_event() misses an event type");
}

#[test]
fn wire_format_is_stable() {
    let json = encode_request(&HostRequest::StartContainer { id: "c1".into() }).expect("encodes");
    assert_eq!(json, br#"{"type":"start_container","id":"c1"}"#);
    let json = encode_reply(&Err(ErrorReply::new(ErrorCode::NotFound, "no c9"))).expect("encodes");
    assert_eq!(json, br#"{"error":{"code":"not_found","message":"no c9"}}"#);
    let json = encode_reply(&Ok(GuestReply::State(ContainerStatus::Running { started_at_ns: 5 }))).expect("encodes");
    assert_eq!(json, br#"{"ok":{"type":"state","state":"running","started_at_ns":5}}"#);
    let record = OutputRecord {
        offset: 0,
        stream: OutputStream::Stdout,
        timestamp_ns: 1,
        partial: false,
        data: b"hi\n".to_vec(),
    };
    let json = serde_json::to_string(&record).expect("encodes");
    assert_eq!(json, r#"{"offset":0,"stream":"stdout","timestamp_ns":1,"partial":false,"data":"aGkK"}"#);
}

#[test]
fn exec_sync_output_at_its_bound_fits_a_response() {
    let max = MAX_EXEC_SYNC_OUTPUT as usize;
    let reply = Ok(GuestReply::ExecSyncResult(ExecSyncOutput {
        exit_code: 0,
        stdout: vec![0xff; max],
        stderr: vec![0xfe; max],
        truncated: true,
    }));
    assert!(encode_reply(&reply).expect("fits").len() <= MAX_MESSAGE_LEN);
}

#[test]
fn full_output_batch_fits_an_event() {
    let records = (0..MAX_OUTPUT_BATCH / MAX_OUTPUT_RECORD)
        .map(|i| OutputRecord {
            offset: (i * MAX_OUTPUT_RECORD) as u64,
            stream: OutputStream::Stderr,
            timestamp_ns: u64::MAX,
            partial: true,
            data: vec![0xff; MAX_OUTPUT_RECORD],
        })
        .collect();
    let event = GuestEvent::Output(OutputBatch { id: "c".repeat(64), records });
    assert!(encode_event(&event).expect("fits").len() <= MAX_CONTROL_PAYLOAD);
}

#[test]
fn too_large_messages_are_refused() {
    let request = HostRequest::Stats { ids: vec!["x".repeat(1024); 1024] };
    assert!(matches!(encode_request(&request), Err(MessageError::TooLarge { kind: "stats", .. })));
}

#[test]
fn malformed_messages_are_errors() {
    let bad: [&[u8]; 9] = [
        b"",
        b"{",
        b"[]",
        br#"{"type":"start_container"}"#,
        br#"{"type":"start_container","id":7}"#,
        br#"{"type":"resize","stream":0,"rows":1,"cols":1}"#,
        br#"{"type":"setup_pod","hostname":"h","dns":{"servers":["nope"],"searches":[],"options":[]},"hosts_entries":[],"interfaces":[],"sysctls":{}}"#,
        br#"{"type":"port_forward","port":70000,"stream":1}"#,
        b"\xff\xfe",
    ];
    for body in bad {
        assert!(decode_request(body).is_err(), "{}", String::from_utf8_lossy(body));
    }
    assert!(decode_reply(br#"{"ok":{"type":"exec_sync_result","exit_code":0,"stdout":"!!!!","stderr":""}}"#).is_err());
    assert!(decode_reply(br#"{"error":{"code":"teapot","message":""}}"#).is_err());
    assert!(decode_event(br#"{"type":"output","id":"c","records":[{"offset":0}]}"#).is_err());
}

#[test]
fn undecodable_requests_get_the_right_error_code() {
    let unknown = br#"{"type":"migrate_container","id":"c1"}"#;
    let err = decode_request(unknown).expect_err("unknown");
    assert_eq!(undecodable_request_reply(unknown, &err).code, ErrorCode::Unsupported);
    let invalid = br#"{"type":"start_container","id":[]}"#;
    let err = decode_request(invalid).expect_err("invalid");
    assert_eq!(undecodable_request_reply(invalid, &err).code, ErrorCode::InvalidArgument);
    let garbage = b"\x00\x01";
    let err = decode_request(garbage).expect_err("garbage");
    assert_eq!(undecodable_request_reply(garbage, &err).code, ErrorCode::InvalidArgument);
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let mut body = br#"{"type":"update_resources","id":"c","resources":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', 100_000));
    assert!(decode_request(&body).is_err());
}
