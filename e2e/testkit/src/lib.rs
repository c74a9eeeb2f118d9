//! Guards for tests that need something of the host: root, a tool, a cgroup
//! v1 hierarchy. Every crate's tests use these, so a skip means the same
//! everywhere:
//!
//! - The guard returns `true` when the test can run. Otherwise it prints
//!   `SKIP <test>: <why>` to stderr (past the test harness's capture, so it
//!   shows among the results), appends the line `<test>: <why>` to the file
//!   named by `CRIUS_TEST_SKIP_LOG` when that is set (`test.sh` counts those
//!   lines as skipped, not passed), and returns `false`; the test returns.
//! - When `TEST_REQUIRE` (a comma list of [`ROOT`], [`TOOLS`], [`CGROUP_V1`],
//!   [`KVM`], or `all`) names the missing requirement, the test fails with the reason
//!   instead: CI sets it, so nothing is skipped there unnoticed.
//!
//! ```no_run
//! #[test]
//! fn veth_lands_in_the_netns() {
//!     if !testkit::require_root("veth_lands_in_the_netns") {
//!         return;
//!     }
//!     // ...
//! }
//! ```
//!
//! No dependencies: root is read from `/proc/self/status`.
#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Root: effective uid 0 with the capabilities of a host's root (see [`require_root`]).
pub const ROOT: &str = "root";
/// The tools `.ci/setup-host` installs (nft, openssl, docker-registry, busybox, CNI plugins...).
pub const TOOLS: &str = "tools";
/// A cgroup v1 (or hybrid) host, with the memory controller at `/sys/fs/cgroup/memory`.
pub const CGROUP_V1: &str = "cgroup-v1";
/// A `/dev/kvm` that opens for reading and writing (hardware KVM or PVM).
pub const KVM: &str = "kvm";
/// Every requirement, as a `TEST_REQUIRE` name.
pub const ALL: &str = "all";

/// The environment variable naming what must not be skipped.
pub const REQUIRE_ENV: &str = "TEST_REQUIRE";
/// The environment variable naming the file each skip is appended to.
pub const SKIP_LOG_ENV: &str = "CRIUS_TEST_SKIP_LOG";

const REQUIREMENTS: [&str; 4] = [ROOT, TOOLS, CGROUP_V1, KVM];

/// Capabilities the privileged tests use (mounts, namespaces, seccomp;
/// links and nftables; dropping capabilities), as (bit, name).
const ROOT_CAPS: [(u32, &str); 3] = [(21, "CAP_SYS_ADMIN"), (12, "CAP_NET_ADMIN"), (8, "CAP_SETPCAP")];

/// Whether `test` can run as root: effective uid 0 with `CAP_SYS_ADMIN`,
/// `CAP_NET_ADMIN` and `CAP_SETPCAP` effective (not a container's stripped
/// root). Otherwise [`skip`]s for [`ROOT`] and returns `false`.
#[track_caller]
pub fn require_root(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match root_missing(&status) {
        None => true,
        Some(why) => {
            skip(test, ROOT, &why);
            false
        }
    }
}

/// Whether `tool` exists and is executable: a path, or a name looked up in
/// `PATH` and the sbin directories. Otherwise [`skip`]s for [`TOOLS`], naming
/// the Debian `package` that has it, and returns `false`.
#[track_caller]
pub fn require_tool(test: &str, tool: impl AsRef<Path>, package: &str) -> bool {
    let tool = tool.as_ref();
    if find_tool(tool, std::env::var_os("PATH")).is_some() {
        return true;
    }
    skip(test, TOOLS, &format!("needs {} (Debian package {package})", tool.display()));
    false
}

/// Whether `/dev/kvm` opens for reading and writing (it exists and this
/// process may use it). Otherwise [`skip`]s for [`KVM`] and returns `false`.
#[track_caller]
pub fn require_kvm(test: &str) -> bool {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            skip(test, KVM, &format!("needs /dev/kvm ({e})"));
            false
        }
    }
}

/// Records that `test` cannot run here because `why` (it lacks
/// `requirement`, one of [`ROOT`], [`TOOLS`], [`CGROUP_V1`], [`KVM`]); the caller
/// then returns from the test. Panics instead when `TEST_REQUIRE` names
/// `requirement` or `all`, or names something unknown.
#[track_caller]
pub fn skip(test: &str, requirement: &str, why: &str) {
    assert!(REQUIREMENTS.contains(&requirement), "{test}: unknown test requirement {requirement:?}");
    let list = std::env::var(REQUIRE_ENV).unwrap_or_default();
    match required(&list, requirement) {
        Err(e) => panic!("{test}: {e}"),
        Ok(true) => panic!("{test}: {why}, and {REQUIRE_ENV}={list} says it must run"),
        Ok(false) => {}
    }
    let line = format!("{test}: {why}\n");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        append(Path::new(&log), &line).unwrap_or_else(|e| panic!("{test}: record the skip in {log:?}: {e}"));
    }
    // Not eprintln!: that is captured with the test's output, which the
    // harness drops for a test that passes.
    let _ = std::io::stderr().write_all(format!("SKIP {line}").as_bytes());
}

/// Whether the `TEST_REQUIRE` value `list` names `requirement` (or `all`).
fn required(list: &str, requirement: &str) -> Result<bool, String> {
    let mut hit = false;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name != ALL && !REQUIREMENTS.contains(&name) {
            return Err(format!("{REQUIRE_ENV} names {name:?}, which is none of {ALL}, {}", REQUIREMENTS.join(", ")));
        }
        hit |= name == ALL || name == requirement;
    }
    Ok(hit)
}

/// One line appended with `O_APPEND`, in one write, so that test binaries
/// running side by side do not interleave their lines.
fn append(log: &Path, line: &str) -> std::io::Result<()> {
    OpenOptions::new().append(true).create(true).open(log)?.write_all(line.as_bytes())
}

/// Why the process with this `/proc/<pid>/status` text is not root enough, or `None`.
fn root_missing(status: &str) -> Option<String> {
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    let euid = field("Uid:").and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some(format!("needs root (effective uid {})", euid.unwrap_or("unknown")));
    }
    let effective = field("CapEff:").and_then(|hex| u64::from_str_radix(hex, 16).ok()).unwrap_or(0);
    let lacking: Vec<&str> =
        ROOT_CAPS.iter().filter(|(bit, _)| effective & (1 << bit) == 0).map(|(_, name)| *name).collect();
    (!lacking.is_empty()).then(|| format!("needs root with {}, which this process lacks", lacking.join(", ")))
}

/// `tool` itself when it contains a `/`, else the first executable of that
/// name in `path` or the sbin directories (which a user's `PATH` may lack).
fn find_tool(tool: &Path, path: Option<OsString>) -> Option<PathBuf> {
    if tool.as_os_str().as_bytes().contains(&b'/') {
        return is_executable(tool).then(|| tool.to_path_buf());
    }
    let path = path.unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(sbin).map(|dir| dir.join(tool)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_ROOT: &str = "Name:\tx\nUid:\t0\t0\t0\t0\nCapEff:\t000001fffeffffff\n";

    #[test]
    fn require_lists_name_requirements_or_all() {
        assert_eq!(required("", ROOT), Ok(false));
        assert_eq!(required("root", ROOT), Ok(true));
        assert_eq!(required("tools, root", ROOT), Ok(true));
        assert_eq!(required("tools,cgroup-v1", ROOT), Ok(false));
        assert_eq!(required("all", CGROUP_V1), Ok(true));
        assert_eq!(required("root,", TOOLS), Ok(false));
    }

    #[test]
    fn an_unknown_requirement_name_is_an_error_not_ignored() {
        let e = required("root,vhost", ROOT).expect_err("vhost is unknown");
        assert!(e.contains("\"vhost\"") && e.contains("all, root, tools, cgroup-v1, kvm"), "{e}");
    }

    #[test]
    fn root_needs_uid_0_and_the_admin_capabilities() {
        assert_eq!(root_missing(HOST_ROOT), None);
        let user = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t0000000000000000\n";
        assert_eq!(root_missing(user).as_deref(), Some("needs root (effective uid 1000)"));
        let setuid = "Uid:\t1000\t0\t0\t0\nCapEff:\t000001ffffffffff\n";
        assert_eq!(root_missing(setuid), None, "the effective uid counts");
        let stripped = "Uid:\t0\t0\t0\t0\nCapEff:\t00000000a80425fb\n";
        assert_eq!(
            root_missing(stripped).as_deref(),
            Some("needs root with CAP_SYS_ADMIN, CAP_NET_ADMIN, which this process lacks")
        );
        assert_eq!(root_missing("").as_deref(), Some("needs root (effective uid unknown)"));
    }

    #[test]
    fn tools_are_found_by_path_or_name() {
        let dir = tempdir();
        let tool = dir.join("mytool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        assert_eq!(find_tool(&tool, None), None, "not executable yet");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(find_tool(&tool, None), Some(tool.clone()));
        assert_eq!(find_tool(Path::new("mytool"), Some(dir.clone().into_os_string())), Some(tool));
        assert_eq!(find_tool(Path::new("mytool"), None), None);
        assert_eq!(find_tool(Path::new("crius-no-such-tool"), std::env::var_os("PATH")), None);
        assert_eq!(find_tool(&dir, None), None, "a directory is no tool");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    #[test]
    fn skips_are_appended_one_line_each() {
        let dir = tempdir();
        let log = dir.join("skips");
        append(&log, "a: needs root\n").expect("append");
        append(&log, "b: needs nft (Debian package nftables)\n").expect("append");
        let text = std::fs::read_to_string(&log).expect("read");
        assert_eq!(text, "a: needs root\nb: needs nft (Debian package nftables)\n");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A fresh directory (no tempfile crate: this one has no dependencies).
    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("crius-testkit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("mkdir");
        dir
    }
}
