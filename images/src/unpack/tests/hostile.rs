//! Hostile layers: each is refused with an error naming the entry, and
//! nothing outside the destination changes.

use tar::EntryType;

use super::{Compression, Layer, Sandbox, unpack};

/// Builds a layer for a sandbox (absolute paths point into its `outside`).
type Build = fn(&Sandbox, &mut Layer);

/// Unpacks the layer built by `build` into a fresh sandbox, expects an error
/// naming `entry`, and checks that nothing outside `dest` changed.
fn assert_refused(case: &str, build: Build, entry: &dyn Fn(&Sandbox) -> String) {
    let sandbox = Sandbox::new();
    let mut layer = Layer::new();
    build(&sandbox, &mut layer);
    let before = sandbox.snapshot();
    let result = unpack(&layer.finish(), Compression::None, &sandbox.dest);
    let err = match result {
        Ok(stats) => panic!("{case}: hostile layer unpacked: {stats:?}"),
        Err(err) => err.to_string(),
    };
    let entry = format!("{:?}", entry(&sandbox));
    assert!(err.contains(&entry), "{case}: error {err:?} does not name {entry}");
    assert_eq!(std::fs::read(sandbox.outside.join("sentinel")).expect("sentinel"), b"original", "{case}");
    assert_eq!(sandbox.snapshot(), before, "{case}: something outside dest changed");
}

/// The sandbox's `outside` directory as an absolute path without the
/// leading slash.
fn outside_rel(sandbox: &Sandbox) -> String {
    sandbox.outside.to_str().expect("utf-8 tmp").trim_start_matches('/').to_owned()
}

fn fixed(name: &'static str) -> impl Fn(&Sandbox) -> String {
    move |_| name.to_owned()
}

#[test]
fn unpack_refuses_path_traversal() {
    assert_refused(
        "traversal",
        |_, l| {
            l.raw(b"../outside/x", EntryType::Regular, b"", b"pwned");
        },
        &fixed("../outside/x"),
    );
    assert_refused(
        "inner traversal",
        |_, l| {
            l.raw(b"a/../../outside/x", EntryType::Regular, b"", b"pwned");
        },
        &fixed("a/../../outside/x"),
    );
    assert_refused(
        "directory traversal",
        |_, l| {
            l.raw(b"../outside/newdir/", EntryType::Directory, b"", b"");
        },
        &fixed("../outside/newdir/"),
    );
}

#[test]
fn unpack_refuses_absolute_paths() {
    assert_refused(
        "absolute tmp path",
        |_, l| {
            l.raw(b"/tmp/x", EntryType::Regular, b"", b"pwned");
        },
        &fixed("/tmp/x"),
    );
    assert_refused(
        "absolute path into outside",
        |s, l| {
            l.raw(format!("/{}/pwned", outside_rel(s)).as_bytes(), EntryType::Regular, b"", b"pwned");
        },
        &|s| format!("/{}/pwned", outside_rel(s)),
    );
}

#[test]
fn unpack_refuses_writes_through_escaping_symlinks() {
    assert_refused(
        "file through symlink",
        |_, l| {
            l.symlink("evil", "../outside").file("evil/pwned", b"pwned");
        },
        &fixed("evil/pwned"),
    );
    assert_refused(
        "overwrite through symlink",
        |_, l| {
            l.symlink("evil", "../outside").file("evil/sentinel", b"pwned");
        },
        &fixed("evil/sentinel"),
    );
    assert_refused(
        "directory through symlink",
        |_, l| {
            l.symlink("evil", "../outside").dir("evil/newdir/", 0o777);
        },
        &fixed("evil/newdir/"),
    );
    assert_refused(
        "missing parents through symlink",
        |_, l| {
            l.symlink("evil", "../outside").file("evil/a/b/c", b"pwned");
        },
        &fixed("evil/a/b/c"),
    );
    assert_refused(
        "symlink through symlink",
        |_, l| {
            l.symlink("evil", "../outside").symlink("evil/link", "/etc/passwd");
        },
        &fixed("evil/link"),
    );
    assert_refused(
        "fifo through symlink",
        |_, l| {
            l.symlink("evil", "../outside").device("evil/fifo", EntryType::Fifo, 0o666, 0, 0);
        },
        &fixed("evil/fifo"),
    );
    assert_refused(
        "whiteout through symlink",
        |_, l| {
            l.symlink("evil", "../outside").file("evil/.wh.sentinel", b"");
        },
        &fixed("evil/.wh.sentinel"),
    );
    assert_refused(
        "opaque through symlink",
        |_, l| {
            l.symlink("evil", "../outside").file("evil/.wh..wh..opq", b"");
        },
        &fixed("evil/.wh..wh..opq"),
    );
    assert_refused(
        "nested symlink",
        |_, l| {
            l.dir("a/", 0o755).symlink("a/up", "../..").file("a/up/outside/pwned", b"pwned");
        },
        &fixed("a/up/outside/pwned"),
    );
}

#[test]
fn unpack_refuses_absolute_symlink_escapes() {
    assert_refused(
        "absolute symlink to /",
        |s, l| {
            l.symlink("evil", "/").file(&format!("evil/{}/pwned", outside_rel(s)), b"pwned");
        },
        &|s| format!("evil/{}/pwned", outside_rel(s)),
    );
    assert_refused(
        "absolute symlink to outside",
        |s, l| {
            l.symlink("evil", s.outside.to_str().expect("utf-8")).file("evil/pwned", b"pwned");
        },
        &fixed("evil/pwned"),
    );
    assert_refused(
        "absolute symlink chain",
        |s, l| {
            l.symlink("a", "/b").symlink("b", &format!("/../../..{}", s.outside.display())).file("a/pwned", b"pwned");
        },
        &fixed("a/pwned"),
    );
    assert_refused(
        "relative symlink chain",
        |_, l| {
            l.symlink("a", "b/outside").symlink("b", "..").file("a/pwned", b"pwned");
        },
        &fixed("a/pwned"),
    );
    assert_refused(
        "magic link",
        |_, l| {
            l.symlink("proc", "/proc/self/cwd").file("proc/pwned", b"pwned");
        },
        &fixed("proc/pwned"),
    );
}

#[test]
fn unpack_refuses_hardlink_escapes() {
    assert_refused(
        "hardlink traversal",
        |_, l| {
            l.hardlink("h", "../outside/sentinel");
        },
        &fixed("h"),
    );
    assert_refused(
        "absolute hardlink",
        |s, l| {
            l.hardlink("h", &format!("{}/sentinel", s.outside.display()));
        },
        &fixed("h"),
    );
    assert_refused(
        "hardlink through escaping symlink",
        |_, l| {
            l.symlink("evil", "../outside").hardlink("h", "evil/sentinel");
        },
        &fixed("h"),
    );
    assert_refused(
        "hardlink through absolute symlink",
        |s, l| {
            l.symlink("evil", "/").hardlink("h", &format!("evil/{}/sentinel", outside_rel(s)));
        },
        &fixed("h"),
    );
}

#[test]
fn unpack_refuses_bad_names() {
    assert_refused(
        "whiteout of ..",
        |_, l| {
            l.dir("a/", 0o755).file("a/.wh...", b"");
        },
        &fixed("a/.wh..."),
    );
    assert_refused(
        "whiteout of .",
        |_, l| {
            l.file(".wh..", b"");
        },
        &fixed(".wh.."),
    );
    assert_refused(
        "empty name",
        |_, l| {
            l.raw(b"", EntryType::Regular, b"", b"x");
        },
        &fixed(""),
    );
    assert_refused(
        "file as root",
        |_, l| {
            l.raw(b"./", EntryType::Regular, b"", b"x");
        },
        &fixed("./"),
    );
}

#[test]
fn unpack_file_replaces_symlink_instead_of_writing_through_it() {
    let sandbox = Sandbox::new();
    let before = sandbox.snapshot();
    let mut layer = Layer::new();
    layer.symlink("link", "../outside/sentinel").file("link", b"pwned");
    layer.symlink("dirlink", "../outside").dir("dirlink/", 0o755).file("dirlink/inside", b"in");
    layer.symlink("h-target", "../outside/sentinel").hardlink("h", "h-target");
    unpack(&layer.finish(), Compression::None, &sandbox.dest).expect("unpack");
    let dest = &sandbox.dest;
    assert!(std::fs::symlink_metadata(dest.join("link")).expect("link").is_file());
    assert_eq!(std::fs::read(dest.join("link")).expect("link"), b"pwned");
    assert!(std::fs::symlink_metadata(dest.join("dirlink")).expect("dirlink").is_dir());
    assert!(std::fs::symlink_metadata(dest.join("h")).expect("h").is_symlink(), "the symlink itself is linked");
    assert_eq!(std::fs::read(sandbox.outside.join("sentinel")).expect("sentinel"), b"original");
    assert_eq!(sandbox.snapshot(), before, "something outside dest changed");
}
