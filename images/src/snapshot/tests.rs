use super::*;

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount_rootfs(&self.0);
    }
}

#[test]
fn keys_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
        assert!(matches!(store.prepare(bad, &[dir.path().to_path_buf()]), Err(SnapshotError::InvalidKey(_))), "{bad}");
    }
    assert!(matches!(store.prepare("c1", &[]), Err(SnapshotError::NoLayers(_))));
}

#[test]
fn prepare_orders_layers_top_first_and_remove_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(&dir.path().join("snapshots")).expect("open");
    let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
    let overlay = store.prepare("c1", &layers).expect("prepare");
    assert_eq!(overlay.lowerdirs, vec![PathBuf::from("/l/top"), PathBuf::from("/l/bottom")]);
    let upper = overlay.upperdir.clone().expect("upper");
    assert!(upper.is_dir() && overlay.workdir.as_ref().expect("work").is_dir());
    assert_eq!(upper, store.upper_dir("c1").expect("upper"));
    assert!(overlay.options().starts_with("lowerdir=/l/top:/l/bottom,upperdir="));
    assert_eq!(store.list().expect("list"), vec!["c1".to_owned()]);
    store.remove("c1").expect("remove");
    store.remove("c1").expect("remove again");
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn option_values_are_escaped() {
    let view = OverlayMount::view(&[PathBuf::from("/a:b,c")]);
    assert_eq!(view.options(), "lowerdir=/a\\:b\\,c");
}

#[test]
fn sixty_layers_mount_despite_the_option_length_limit() {
    if !testkit::require_root("sixty_layers_mount_despite_the_option_length_limit") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut layers = Vec::new();
    for i in 0..60 {
        // Long names, as real layer paths are (…/layers/<64 hex>/fs).
        let layer = dir.path().join(format!("{i:02}-{}", "f".repeat(64))).join("fs");
        fs::create_dir_all(&layer).expect("layer");
        fs::write(layer.join(format!("file{i}")), format!("{i}")).expect("file");
        fs::write(layer.join("shadowed"), format!("{i}")).expect("file");
        layers.push(layer);
    }
    let store = SnapshotStore::open(&dir.path().join("snapshots")).expect("open");
    let overlay = store.prepare("big", &layers).expect("prepare");
    assert!(overlay.options().len() > MAX_MOUNT_DATA, "the test must exceed the classic limit");
    let target = dir.path().join("rootfs");
    fs::create_dir(&target).expect("target");
    overlay.mount(&target).expect("mount 60 layers");
    let _mounted = Mounted(target.clone());
    assert_eq!(fs::read_to_string(target.join("file0")).expect("bottom"), "0");
    assert_eq!(fs::read_to_string(target.join("file59")).expect("top"), "59");
    assert_eq!(fs::read_to_string(target.join("shadowed")).expect("shadowed"), "59", "top layer wins");
    fs::write(target.join("new"), b"written").expect("write through overlay");
    assert_eq!(fs::read(store.upper_dir("big").expect("upper").join("new")).expect("upper"), b"written");
    assert!(!layers[59].join("new").exists(), "lower layers stay untouched");
    drop(_mounted);
    store.remove("big").expect("remove");
}

#[test]
fn read_only_view_refuses_writes() {
    if !testkit::require_root("read_only_view_refuses_writes") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for layer in [&a, &b] {
        fs::create_dir(layer).expect("layer");
    }
    fs::write(a.join("x"), b"a").expect("file");
    let target = dir.path().join("view");
    fs::create_dir(&target).expect("target");
    OverlayMount::view(&[a, b]).mount(&target).expect("mount view");
    let _mounted = Mounted(target.clone());
    assert_eq!(fs::read(target.join("x")).expect("read"), b"a");
    assert!(fs::write(target.join("y"), b"no").is_err());
}
