//! The whole contract of a skip, seen from outside: this test binary runs
//! its own `skipping_child` with the environment `test.sh` and CI set.

use std::path::Path;
use std::process::{Command, Output};

/// Set in the child: which guard to call.
const CHILD_ENV: &str = "CRIUS_TESTKIT_CHILD";

fn child(guard: &str, env: &[(&str, &Path)], require: Option<&str>) -> Output {
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command.args(["skipping_child", "--exact", "--ignored", "--test-threads=1"]).env(CHILD_ENV, guard);
    command.env_remove(testkit::REQUIRE_ENV).env_remove(testkit::SKIP_LOG_ENV);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(require) = require {
        command.env(testkit::REQUIRE_ENV, require);
    }
    command.output().expect("run child")
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("crius-testkit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir");
    dir
}

#[test]
fn a_skip_passes_prints_and_is_logged() {
    let dir = tempdir("logged");
    let log = dir.join("skips");
    for _ in 0..2 {
        let out = child("tool", &[(testkit::SKIP_LOG_ENV, &log)], Some("root,cgroup-v1"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("SKIP child_test: needs crius-no-such-tool (Debian package no-such-package)"),
            "{stderr}"
        );
    }
    let text = std::fs::read_to_string(&log).expect("read the skip log");
    let line = "child_test: needs crius-no-such-tool (Debian package no-such-package)\n";
    assert_eq!(text, line.repeat(2), "one line per skip, appended");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn a_required_skip_fails_with_the_reason() {
    let dir = tempdir("required");
    let log = dir.join("skips");
    for require in ["tools", "root, tools", "all"] {
        let out = child("tool", &[(testkit::SKIP_LOG_ENV, &log)], Some(require));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "TEST_REQUIRE={require}: {stdout}");
        assert!(
            stdout.contains("child_test: needs crius-no-such-tool (Debian package no-such-package), and TEST_REQUIRE="),
            "{stdout}"
        );
    }
    let out = child("cgroup", &[], Some("all"));
    assert!(!out.status.success(), "a plain skip fails under all as well");
    assert!(!log.exists(), "a failure is not recorded as a skip");
    std::fs::remove_dir_all(dir).expect("clean up");
}

#[test]
fn a_misspelt_requirement_fails_instead_of_being_ignored() {
    let out = child("tool", &[], Some("rot"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && stdout.contains("TEST_REQUIRE names \"rot\""), "{stdout}");
}

/// The child side; does nothing unless started by [`child`].
#[test]
#[ignore = "child process of the skip tests"]
fn skipping_child() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("tool") => assert!(!testkit::require_tool("child_test", "crius-no-such-tool", "no-such-package")),
        Ok("cgroup") => testkit::skip("child_test", testkit::CGROUP_V1, "not a cgroup v1 host"),
        _ => {}
    }
}
