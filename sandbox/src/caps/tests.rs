use std::io::Write;
use std::path::Path;
use std::process::Command;

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn set(caps: &[Capability]) -> CapsHashSet {
    caps.iter().copied().collect()
}

/// A bounding set like this host's: everything but CAP_SYS_RESOURCE.
fn host_like() -> CapsHashSet {
    let mut all = ::caps::all();
    all.remove(&Capability::CAP_SYS_RESOURCE);
    all
}

fn resolve(add: &[&str], drop: &[&str], privileged: bool) -> CapSet {
    effective_set_within(&host_like(), &names(add), &names(drop), privileged, &[]).expect("resolve")
}

#[test]
fn names_are_normalised() {
    for name in ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_net_admin", "Cap_Net_Admin", " net_admin "] {
        assert_eq!(parse_name(name).expect(name), Capability::CAP_NET_ADMIN, "{name}");
    }
    for name in ["NOPE", "CAP_", "", "ALL", "net admin"] {
        match parse_name(name) {
            Err(CapsError::Unknown { name: got }) => assert_eq!(got, name),
            other => panic!("{name:?}: {other:?}"),
        }
    }
    assert_eq!(CapsError::Unknown { name: "nope".into() }.to_string(), "unknown capability nope");
}

#[test]
fn default_set_is_containerds() {
    let caps = resolve(&[], &[], false);
    assert_eq!(caps.effective, set(&DEFAULT_CAPS));
    assert_eq!(caps.effective.len(), 14);
    assert_eq!(caps.bounding, caps.effective);
    assert_eq!(caps.permitted, caps.effective);
    assert!(caps.inheritable.is_empty() && caps.ambient.is_empty());
    assert!(!caps.effective.contains(&Capability::CAP_SYS_ADMIN));
    assert!(!caps.effective.contains(&Capability::CAP_NET_ADMIN));
}

#[test]
fn add_and_drop_named() {
    let caps = resolve(&["net_admin", "CAP_SYS_PTRACE"], &["CHOWN", "cap_kill"], false);
    let mut want = set(&DEFAULT_CAPS);
    want.extend([Capability::CAP_NET_ADMIN, Capability::CAP_SYS_PTRACE]);
    want.remove(&Capability::CAP_CHOWN);
    want.remove(&Capability::CAP_KILL);
    assert_eq!(caps.effective, want);
    // A cap both added and dropped is dropped.
    assert!(!resolve(&["NET_ADMIN"], &["NET_ADMIN"], false).effective.contains(&Capability::CAP_NET_ADMIN));
}

#[test]
fn drop_all_then_add() {
    let caps = resolve(&["NET_BIND_SERVICE"], &["ALL"], false);
    assert_eq!(caps.effective, set(&[Capability::CAP_NET_BIND_SERVICE]));
    assert_eq!(caps.bounding, caps.effective);
    assert!(resolve(&[], &["all"], false).effective.is_empty());
    // add ALL, drop ALL: drop ALL wins, named adds still apply.
    assert_eq!(resolve(&["ALL", "KILL"], &["ALL"], false).effective, set(&[Capability::CAP_KILL]));
}

#[test]
fn add_all_means_the_bounding_set() {
    assert_eq!(resolve(&["ALL"], &[], false).effective, host_like());
    let mut want = host_like();
    want.remove(&Capability::CAP_SYS_ADMIN);
    assert_eq!(resolve(&["all"], &["SYS_ADMIN"], false).effective, want);
}

#[test]
fn privileged_gets_the_bounding_set_and_ignores_add_drop() {
    let caps = resolve(&[], &["ALL"], true);
    assert_eq!(caps.effective, host_like());
    assert_eq!(caps.bounding, host_like());
    assert!(!caps.effective.contains(&Capability::CAP_SYS_RESOURCE));
}

#[test]
fn clamped_to_the_given_bounding_set() {
    let bounding = set(&[Capability::CAP_CHOWN, Capability::CAP_KILL, Capability::CAP_NET_ADMIN]);
    let caps = effective_set_within(&bounding, &names(&["NET_ADMIN", "SYS_RESOURCE"]), &[], false, &[])
        .expect("outside the bounding set is not an error");
    assert_eq!(caps.effective, bounding);
    let caps = effective_set_within(&host_like(), &names(&["SYS_RESOURCE"]), &[], false, &[]).expect("resolve");
    assert!(!caps.effective.contains(&Capability::CAP_SYS_RESOURCE));
    assert_eq!(caps.effective, set(&DEFAULT_CAPS));
    let empty =
        effective_set_within(&CapsHashSet::new(), &names(&["ALL"]), &[], true, &names(&["KILL"])).expect("resolve");
    assert!(empty.effective.is_empty() && empty.ambient.is_empty());
}

#[test]
fn ambient_caps() {
    let bounding = host_like();
    let caps =
        effective_set_within(&bounding, &[], &names(&["ALL"]), false, &names(&["net_bind_service", "SYS_RESOURCE"]))
            .expect("resolve");
    let nbs = set(&[Capability::CAP_NET_BIND_SERVICE]);
    assert_eq!(caps.ambient, nbs);
    assert_eq!(caps.inheritable, nbs);
    assert_eq!(caps.effective, nbs);
    assert_eq!(caps.permitted, nbs);
}

#[test]
fn unknown_names_are_errors() {
    for (add, drop, ambient) in [(&["NOPE"][..], &[][..], &[][..]), (&[], &["cap_nope"], &[]), (&[], &[], &["x"])] {
        let err =
            effective_set_within(&host_like(), &names(add), &names(drop), false, &names(ambient)).expect_err("unknown");
        assert!(matches!(err, CapsError::Unknown { .. }), "{err:?}");
    }
    // Also when privileged: the request is still malformed.
    assert!(effective_set_within(&host_like(), &names(&["NOPE"]), &[], true, &[]).is_err());
}

#[test]
fn host_result_is_within_the_host_bounding_set() {
    let host = ::caps::read(None, Kind::Bounding).expect("read bounding");
    let caps = effective_set(&names(&["ALL"]), &[], false, &[]).expect("resolve");
    assert!(caps.effective.is_subset(&host));
    assert_eq!(effective_set(&[], &[], true, &[]).expect("resolve").bounding, host);
}

// ---- in a child process -------------------------------------------------

/// Env var that turns [`caps_child`] into the child for one scenario.
const CHILD_ENV: &str = "CRIUS_CAPS_TEST_CHILD";
/// Env var carrying the file to chown.
const CHILD_FILE_ENV: &str = "CRIUS_CAPS_TEST_FILE";
/// Child exit codes.
const DENIED: i32 = 10;
const ALLOWED: i32 = 11;
const OTHER_ERROR: i32 = 12;
const SETUP_FAILED: i32 = 13;

fn in_child(scenario: &str, file: &Path) -> i32 {
    let name = concat!(module_path!(), "::caps_child");
    let name = name.split_once("::").map_or(name, |(_, rest)| rest);
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env(CHILD_FILE_ENV, file)
        .output()
        .expect("spawn child");
    let code = out.status.code().unwrap_or_else(|| panic!("child killed: {:?}", out.status));
    if ![DENIED, ALLOWED].contains(&code) {
        std::io::stderr().write_all(&out.stdout).ok();
        std::io::stderr().write_all(&out.stderr).ok();
    }
    code
}

#[test]
fn caps_without_chown_deny_chown_in_child() {
    if !testkit::require_root("caps_without_chown_deny_chown_in_child") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").expect("write");
    assert_eq!(in_child("no-chown", &file), DENIED);
    assert_eq!(in_child("keepcaps-uid1000", &file), ALLOWED, "uid 1000 with PR_SET_KEEPCAPS keeps CAP_CHOWN");
    assert_eq!(in_child("default", &file), ALLOWED, "control: the default set has CAP_CHOWN");
}

/// The child side; does nothing unless started by [`in_child`].
#[test]
#[ignore = "child process of the caps tests"]
fn caps_child() {
    let (Ok(scenario), Ok(file)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_FILE_ENV)) else { return };
    std::process::exit(child(&scenario, Path::new(&file)));
}

fn child(scenario: &str, file: &Path) -> i32 {
    let drop = if scenario == "no-chown" { names(&["chown"]) } else { Vec::new() };
    let caps = match effective_set(&[], &drop, false, &[]) {
        Ok(caps) => caps,
        Err(e) => {
            eprintln!("resolve: {e:?}");
            return SETUP_FAILED;
        }
    };
    if scenario == "keepcaps-uid1000" {
        let uid = nix::unistd::Uid::from_raw(1000);
        if let Err(e) = ::caps::securebits::set_keepcaps(true)
            .map_err(|e| e.to_string())
            .and_then(|()| nix::unistd::setresuid(uid, uid, uid).map_err(|e| e.to_string()))
        {
            eprintln!("setuid: {e}");
            return SETUP_FAILED;
        }
    }
    if let Err(e) = caps.apply() {
        eprintln!("apply: {e:?}");
        return SETUP_FAILED;
    }
    let effective = ::caps::read(None, Kind::Effective).unwrap_or_default();
    let bounding = ::caps::read(None, Kind::Bounding).unwrap_or_default();
    if effective != caps.effective || bounding != caps.bounding {
        eprintln!("applied {effective:?} / {bounding:?}, wanted {caps:?}");
        return SETUP_FAILED;
    }
    match std::os::unix::fs::chown(file, Some(1000), Some(1000)) {
        Ok(()) => ALLOWED,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => DENIED,
        Err(e) => {
            eprintln!("chown: {e}");
            OTHER_ERROR
        }
    }
}
