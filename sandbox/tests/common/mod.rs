//! Fixtures shared by the privileged container tests (`init_run.rs`,
//! `exec_run.rs`): pinned namespaces, a bundle with a rootfs.
#![allow(dead_code)] // each test binary uses part of it

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crius_sandbox::ns::spec::{NamespaceSpec, PidNamespace};
use nix::sys::stat::Mode;

/// Fresh UTS, net and IPC namespaces, kept alive by a sleeping helper that
/// is killed on drop.
pub struct PinnedNs {
    helper: Child,
}

impl PinnedNs {
    pub fn start() -> Self {
        let helper = Command::new("unshare")
            .args(["--uts", "--net", "--ipc", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare");
        let pinned = Self { helper };
        let own = fs::read_link("/proc/self/ns/ipc").expect("own ipc ns");
        for _ in 0..200 {
            if fs::read_link(pinned.path("ipc")).is_ok_and(|ns| ns != own) {
                return pinned;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("unshare helper did not enter new namespaces");
    }

    pub fn path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.helper.id()))
    }

    pub fn spec(&self) -> NamespaceSpec {
        NamespaceSpec {
            net: Some(self.path("net")),
            ipc: Some(self.path("ipc")),
            uts: Some(self.path("uts")),
            pid: PidNamespace::Host,
        }
    }
}

impl Drop for PinnedNs {
    fn drop(&mut self) {
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

/// A bundle and a rootfs in a temporary directory.
pub struct Fixture {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonicalize");
        let (rootfs, bundle) = (dir.join("rootfs"), dir.join("bundle"));
        fs::create_dir(&rootfs).expect("mkdir rootfs");
        fs::create_dir(&bundle).expect("mkdir bundle");
        nix::unistd::mkfifo(&bundle.join("start"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
        Self { _tmp: tmp, dir, rootfs, bundle }
    }

    /// Host mount points under the fixture.
    pub fn host_mounts(&self) -> Vec<String> {
        let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let prefix = self.dir.display().to_string();
        text.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|mp| mp.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }
}

pub fn default_caps() -> Vec<String> {
    let set = crius_sandbox::caps::effective_set(&[], &[], false, &[]).expect("default caps");
    let mut names: Vec<String> = set.effective.iter().map(ToString::to_string).collect();
    names.sort();
    names
}
