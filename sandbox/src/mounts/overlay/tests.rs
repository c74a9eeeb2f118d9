use std::fs;

use super::*;

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount_rootfs(&self.0);
    }
}

#[test]
fn layers_are_ordered_top_first_and_option_values_escaped() {
    let layers = vec![PathBuf::from("/l/bottom"), PathBuf::from("/l/top")];
    let overlay = OverlayMount::writable(&layers, Path::new("/s/upper"), Path::new("/s/work"));
    assert_eq!(overlay.lowerdirs, vec![PathBuf::from("/l/top"), PathBuf::from("/l/bottom")]);
    assert_eq!(overlay.options(), "lowerdir=/l/top:/l/bottom,upperdir=/s/upper,workdir=/s/work");
    let view = OverlayMount::view(&[PathBuf::from("/a:b,c")]);
    assert_eq!(view.options(), "lowerdir=/a\\:b\\,c");
    let none = OverlayMount::view(&[]).mount(Path::new("/nowhere"));
    assert!(matches!(none, Err(OverlayError::NoLayers(_))), "{none:?}");
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
    let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
    for d in [&upper, &work] {
        fs::create_dir(d).expect("dir");
    }
    let overlay = OverlayMount::writable(&layers, &upper, &work);
    assert!(overlay.options().len() > MAX_MOUNT_DATA, "the test must exceed the classic limit");
    let target = dir.path().join("rootfs");
    fs::create_dir(&target).expect("target");
    overlay.mount(&target).expect("mount 60 layers");
    let _mounted = Mounted(target.clone());
    assert_eq!(fs::read_to_string(target.join("file0")).expect("bottom"), "0");
    assert_eq!(fs::read_to_string(target.join("file59")).expect("top"), "59");
    assert_eq!(fs::read_to_string(target.join("shadowed")).expect("shadowed"), "59", "top layer wins");
    fs::write(target.join("new"), b"written").expect("write through overlay");
    assert_eq!(fs::read(upper.join("new")).expect("upper"), b"written");
    assert!(!layers[59].join("new").exists(), "lower layers stay untouched");
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
