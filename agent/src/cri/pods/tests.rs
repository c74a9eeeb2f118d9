use std::collections::BTreeMap;

use cri_api::v1::{PodSandboxConfig, RunPodSandboxRequest};

use super::*;
use crate::store::{ContainerRecord, ContainerState};

fn pod_record(id: &str, state: PodState, config: serde_json::Value) -> PodRecord {
    PodRecord {
        id: id.to_owned(),
        name: id.to_owned(),
        namespace: "ns".into(),
        uid: format!("uid-{id}"),
        attempt: 0,
        runtime_handler: String::new(),
        state,
        created_at_ns: 1,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        config,
        problem: String::new(),
    }
}

fn pod_details(state: &AgentState, id: &str, cgroup: &str) -> serde_json::Value {
    let request = PodRequest {
        id: id.to_owned(),
        hostname: id.to_owned(),
        dns: DnsSpec::default(),
        namespaces: PodNamespaces { net: true, ipc: true, uts: true, pid: false },
        sysctls: BTreeMap::new(),
        cgroup: Some(cgroup.to_owned()),
    };
    let handle = state.backends.get("").expect("default handler").plan_pod(&request).expect("plan");
    let details = PodDetails {
        hostname: id.into(),
        log_directory: String::new(),
        namespace_modes: [0; 3],
        cgroup: Some(cgroup.into()),
        handle: Some(handle),
        network: None,
    };
    details_json(&details).expect("details")
}

fn container_record(id: &str, pod_id: &str, state: ContainerState, run_root: &Path) -> ContainerRecord {
    let details = serde_json::json!({
        "handle": {
            "backend": "namespaces",
            "version": 1,
            "id": id,
            "bundle": run_root.join("containers").join(id),
            "rootfs": run_root.join("rootfs").join(id),
            "cgroup": null,
            "monitor_pid": 0,
        },
        "log_path": "",
        "reason": "",
        "message": "",
    });
    ContainerRecord {
        id: id.to_owned(),
        pod_id: pod_id.to_owned(),
        name: id.to_owned(),
        attempt: 0,
        image: "busybox".into(),
        image_id: String::new(),
        state,
        created_at_ns: 1,
        started_at_ns: 0,
        finished_at_ns: 0,
        exit_code: 0,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        image_layers: Vec::new(),
        config: details,
        problem: String::new(),
    }
}

/// One pod whose cleanup fails does not stop the recovery of the others:
/// it stays NOTREADY with why, the next pods are still checked, and the
/// containers a crash left `Creating` (or without a pod) are rolled back.
#[test]
fn recovery_handles_every_record_on_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = crate::cri::test_state(dir.path());
    let run_root = state.config.run_root.clone();
    // Sorted first: a half-made pod whose cleanup fails (a cgroup path the
    // cgroup code refuses).
    state
        .store
        .put(&pod_record("a-broken", PodState::Creating, pod_details(&state, "a-broken", "x/../../escape")))
        .expect("put");
    // A pod whose record part cannot be read.
    state.store.put(&pod_record("b-garbled", PodState::Ready, serde_json::json!(42))).expect("put");
    // A pod that was ready, whose namespaces are gone (a reboot).
    state
        .store
        .put(&pod_record("c-rebooted", PodState::Ready, pod_details(&state, "c-rebooted", "crius/pod-c")))
        .expect("put");
    state.store.put(&container_record("k-creating", "c-rebooted", ContainerState::Creating, &run_root)).expect("put");
    state.store.put(&container_record("k-orphan", "gone", ContainerState::Running, &run_root)).expect("put");
    state.store.put(&container_record("k-kept", "c-rebooted", ContainerState::Exited, &run_root)).expect("put");

    recover(&state).expect("recovery runs to the end");

    let pod = |id: &str| state.store.get::<PodRecord>(id).expect("get").expect("pod kept");
    let broken = pod("a-broken");
    assert_eq!(broken.state, PodState::NotReady);
    assert!(broken.problem.contains("escape"), "{}", broken.problem);
    let garbled = pod("b-garbled");
    assert_eq!(garbled.state, PodState::NotReady);
    assert!(garbled.problem.contains("unreadable"), "{}", garbled.problem);
    assert_eq!(pod("c-rebooted").state, PodState::NotReady, "checked after the failures");
    let containers: Vec<String> =
        state.store.list::<ContainerRecord>().expect("list").into_iter().map(|c| c.id).collect();
    assert_eq!(containers, ["k-kept"], "interrupted and orphaned containers are rolled back");
}

#[test]
fn paths_in_pod_requests_are_checked_before_anything_is_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = crate::cri::test_state(dir.path());
    for (log_directory, field) in
        [("relative-logs", "config.log_directory"), ("/var/log/../../etc", "config.log_directory")]
    {
        let request = RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "p".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                    attempt: 0,
                }),
                log_directory: log_directory.into(),
                ..PodSandboxConfig::default()
            }),
            runtime_handler: String::new(),
        };
        let err = run_pod_sandbox(&state, request).expect_err(log_directory);
        assert!(matches!(err, AgentError::InvalidArgument { field: f, .. } if f == field), "{log_directory}: {err}");
        assert!(state.store.list::<PodRecord>().expect("list").is_empty(), "nothing recorded");
    }
    assert!(!Path::new("relative-logs").exists(), "nothing made relative to crius's working directory");
}
