use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::*;

fn pod(id: &str) -> PodRecord {
    PodRecord {
        id: id.to_owned(),
        name: format!("name-{id}"),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
        attempt: 0,
        runtime_handler: String::new(),
        state: PodState::Ready,
        created_at_ns: 1,
        labels: BTreeMap::from([("app".into(), "web".into())]),
        annotations: BTreeMap::new(),
        config: serde_json::Value::Null,
        problem: String::new(),
    }
}

fn container(id: &str, pod_id: &str) -> ContainerRecord {
    ContainerRecord {
        id: id.to_owned(),
        pod_id: pod_id.to_owned(),
        name: "c".into(),
        attempt: 0,
        image: "busybox".into(),
        image_id: String::new(),
        state: ContainerState::Created,
        created_at_ns: 2,
        started_at_ns: 0,
        finished_at_ns: 0,
        exit_code: 0,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        image_layers: Vec::new(),
        config: serde_json::Value::Null,
        problem: String::new(),
    }
}

#[test]
fn new_store_records_the_schema_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(&dir.path().join("nested/root")).expect("open");
    assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
    assert!(store.path().ends_with("nested/root/state.redb"));
    store.check().expect("healthy");
}

#[test]
fn records_round_trip_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = StateStore::open(dir.path()).expect("open");
        store.put(&pod("p2")).expect("put");
        store.put(&pod("p1")).expect("put");
        store.put(&container("c1", "p1")).expect("put");
        store
            .put(&ImageRecord {
                id: "sha256:abc".into(),
                repo_tags: vec!["docker.io/library/busybox:latest".into()],
                repo_digests: vec![],
                size: 10,
                pinned: false,
                manifest_digest: String::new(),
                layers: Vec::new(),
                blobs: Vec::new(),
                user: String::new(),
            })
            .expect("put");
    }
    let store = StateStore::open(dir.path()).expect("reopen");
    let pods: Vec<PodRecord> = store.list().expect("list");
    assert_eq!(pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["p1", "p2"]);
    assert_eq!(store.get::<PodRecord>("p1").expect("get"), Some(pod("p1")));
    assert_eq!(store.get::<ContainerRecord>("c1").expect("get"), Some(container("c1", "p1")));
    assert_eq!(store.list::<ImageRecord>().expect("list").len(), 1);
    assert_eq!(store.get::<PodRecord>("c1").expect("get"), None, "kinds live in separate tables");
}

#[test]
fn delete_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open");
    store.put(&pod("p1")).expect("put");
    store.delete::<PodRecord>("p1").expect("delete");
    store.delete::<PodRecord>("p1").expect("delete again");
    assert_eq!(store.get::<PodRecord>("p1").expect("get"), None);
}

#[test]
fn batch_applies_all_writes_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open");
    store.put(&pod("old")).expect("put");
    let mut batch = WriteBatch::default();
    batch.put(&pod("p1")).expect("encode").put(&container("c1", "p1")).expect("encode");
    batch.delete::<PodRecord>("old").setting("pod_cidr", Some("10.1.0.0/16"));
    store.write(batch).expect("write");
    assert!(store.get::<PodRecord>("old").expect("get").is_none());
    assert!(store.get::<PodRecord>("p1").expect("get").is_some());
    assert!(store.get::<ContainerRecord>("c1").expect("get").is_some());
    assert_eq!(store.setting("pod_cidr").expect("setting").as_deref(), Some("10.1.0.0/16"));
    let mut clear = WriteBatch::default();
    clear.setting("pod_cidr", None);
    store.write(clear).expect("write");
    assert_eq!(store.setting("pod_cidr").expect("setting"), None);
}

#[test]
fn second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = StateStore::open(dir.path()).expect("open");
    let err = StateStore::open(dir.path()).expect_err("already open");
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("another crius"), "{err}");
}

#[test]
fn store_from_a_newer_crius_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = StateStore::open(dir.path()).expect("open");
        let txn = store.db.begin_write().expect("txn");
        txn.open_table(META).expect("meta").insert(SCHEMA_KEY, SCHEMA_VERSION + 1).expect("insert");
        txn.commit().expect("commit");
    }
    let err = StateStore::open(dir.path()).expect_err("newer schema");
    assert!(matches!(err, StoreError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1), "{err:?}");
}

#[test]
fn a_garbled_record_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open");
    let txn = store.db.begin_write().expect("txn");
    txn.open_table(RecordKind::Pod.table()).expect("table").insert("bad", b"{not json".as_slice()).expect("insert");
    txn.commit().expect("commit");
    let err = store.get::<PodRecord>("bad").expect_err("garbled");
    assert!(err.to_string().contains("pod/bad"), "{err}");
    assert!(store.list::<PodRecord>().is_err());
}

/// Run by `store_survives_sigkill_mid_write` in a child process: writes records
/// until it is killed, printing a line after each commit.
#[test]
#[ignore = "helper process for store_survives_sigkill_mid_write"]
fn store_writer_child() {
    let Some(root) = std::env::var_os("CRIUS_STORE_CRASH_ROOT") else { return };
    let store = StateStore::open(Path::new(&root)).expect("open");
    for i in 0.. {
        let mut batch = WriteBatch::default();
        batch.put(&pod(&format!("p{i:06}"))).expect("encode");
        batch.put(&container(&format!("c{i:06}"), &format!("p{i:06}"))).expect("encode");
        store.write(batch).expect("write");
        println!("committed {i}");
    }
}

#[test]
fn store_survives_sigkill_mid_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "store::tests::store_writer_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CRIUS_STORE_CRASH_ROOT", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut committed = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse::<u64>().expect("number") + 1;
            if committed >= 50 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL the writer mid-stream");
    child.wait().expect("reap");
    assert!(committed >= 50, "writer only committed {committed}");

    let store = StateStore::open(dir.path()).expect("store opens after SIGKILL");
    let pods: Vec<PodRecord> = store.list().expect("pods readable");
    let containers: Vec<ContainerRecord> = store.list().expect("containers readable");
    assert!(pods.len() as u64 >= committed, "every acknowledged commit is durable");
    assert_eq!(pods.len(), containers.len(), "each batch landed whole or not at all");
}

#[test]
fn records_are_found_by_id_or_unique_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open");
    store.put(&pod("abc123")).expect("put");
    store.put(&pod("abd456")).expect("put");
    let found = |id: &str| store.get_by_id_or_prefix::<PodRecord>(id).expect("read").map(|p| p.id);
    assert_eq!(found("abc123").as_deref(), Some("abc123"));
    assert_eq!(found("abd").as_deref(), Some("abd456"));
    assert_eq!(found("ab"), None, "ambiguous");
    assert_eq!(found("zz"), None);
}

#[test]
fn concurrent_updates_of_one_record_are_never_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open");
    store.put(&pod("p1")).expect("put");
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let store = &store;
            scope.spawn(move || {
                for n in 0..25 {
                    store
                        .update::<PodRecord, StoreError>("p1", |pod| {
                            pod.labels.insert(format!("t{thread}-{n}"), String::new());
                            Ok(())
                        })
                        .expect("update")
                        .expect("record exists");
                }
            });
        }
    });
    let pod = store.get::<PodRecord>("p1").expect("get").expect("pod");
    assert_eq!(pod.labels.len(), 101, "updates lost");
    let missing = store.update::<PodRecord, StoreError>("nope", |_| Ok(())).expect("update");
    assert!(missing.is_none());
}

#[test]
fn a_failed_transaction_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StateStore::open(dir.path()).expect("open");
    let result: Result<(), StoreError> = store.transact(|txn| {
        txn.put(&pod("p1"))?;
        Err(StoreError::InUse { path: "/x".into() })
    });
    assert!(result.is_err());
    assert!(store.get::<PodRecord>("p1").expect("get").is_none());
}
