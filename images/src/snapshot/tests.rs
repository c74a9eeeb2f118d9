use super::*;

#[test]
fn keys_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
        assert!(matches!(store.prepare(bad), Err(SnapshotError::InvalidKey(_))), "{bad}");
    }
}

#[test]
fn prepare_makes_the_writable_layer_and_remove_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(&dir.path().join("snapshots")).expect("open");
    let snapshot = store.prepare("c1").expect("prepare");
    assert!(snapshot.upper.is_dir() && snapshot.work.is_dir());
    assert_eq!(snapshot.upper, store.upper_dir("c1").expect("upper"));
    assert_eq!(store.prepare("c1").expect("again"), snapshot, "preparing again reuses it");
    assert_eq!(store.list().expect("list"), vec!["c1".to_owned()]);
    store.remove("c1").expect("remove");
    store.remove("c1").expect("remove again");
    assert!(store.list().expect("list").is_empty());
}
