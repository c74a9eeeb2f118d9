//! What a container bundle's `config.json` holds: everything the `monitor`
//! and `init` processes need, already resolved by the agent (user names to
//! ids, image config merged with CRI, capabilities computed). Plain data.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mounts::RootfsSpec;
use crate::seccomp::SeccompProfile;

/// File name of the spec inside a bundle directory.
pub const SPEC_FILE: &str = "config.json";
/// FIFO that `init` blocks on until StartContainer writes one byte.
pub const START_FIFO: &str = "start";
/// Written by the monitor when the container process exits (atomically).
pub const EXIT_FILE: &str = "exit.json";
/// The monitor's pid (decimal).
pub const MONITOR_PID_FILE: &str = "monitor.pid";
/// The container init's pid as seen from the host (decimal).
pub const INIT_PID_FILE: &str = "init.pid";
/// Written by the monitor when init found, while setting up, that the
/// container's process cannot be started (its program does not exist): why.
/// StartContainer then fails with it (CreateContainer succeeded, as with
/// containerd and runc).
pub const START_ERROR_FILE: &str = "start-error";
/// The exit code of a container whose process could not be started (as
/// containerd reports it).
pub const START_ERROR_EXIT_CODE: i32 = 128;

/// One container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container id.
    pub id: String,
    /// Root filesystem and mounts; `rootfs.rootfs` is already mounted by the agent.
    pub rootfs: RootfsSpec,
    /// The process to run.
    pub process: ProcessSpec,
    /// Namespaces to join or create.
    pub namespaces: NamespaceSpec,
    /// Hostname to set when the container has its own UTS namespace.
    pub hostname: Option<String>,
    /// cgroup path relative to the hierarchy roots (`crius/pod-x/ctr-y`),
    /// joined by init before it is ready.
    pub cgroup: Option<String>,
    /// Namespaced sysctls (`net.*`, `kernel.shm*`, …) to write in the container's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// CRI log file the monitor writes (kubelet's format); `None` discards output.
    pub log_path: Option<PathBuf>,
}

/// The container process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: String,
    /// Numeric identity.
    pub user: UserSpec,
    /// Allocate a terminal (CRI `tty`).
    pub terminal: bool,
    /// Keep stdin open (CRI `stdin`).
    pub stdin: bool,
    /// Close stdin after the first attach disconnects (CRI `stdin_once`).
    pub stdin_once: bool,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// Capabilities, already resolved and clamped (names like `CAP_CHOWN`).
    pub capabilities: CapabilitySpec,
    /// seccomp profile.
    pub seccomp: SeccompProfile,
    /// AppArmor profile name, when the host enables AppArmor.
    pub apparmor_profile: Option<String>,
    /// rlimits: (`RLIMIT_NOFILE`-style name, soft, hard).
    pub rlimits: Vec<(String, u64, u64)>,
    /// OOM score adjustment, already clamped to what the host allows.
    pub oom_score_adj: Option<i32>,
}

/// uid, gid and supplementary groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary gids.
    pub additional_gids: Vec<u32>,
}

/// Capability sets by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitySpec {
    /// Bounding.
    pub bounding: Vec<String>,
    /// Effective.
    pub effective: Vec<String>,
    /// Permitted.
    pub permitted: Vec<String>,
    /// Inheritable.
    pub inheritable: Vec<String>,
    /// Ambient.
    pub ambient: Vec<String>,
}

/// Where each namespace comes from. A path is a pinned namespace file (or
/// `/proc/<pid>/ns/<kind>`) to `setns` into; `None` means the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    /// Network namespace.
    pub net: Option<PathBuf>,
    /// IPC namespace.
    pub ipc: Option<PathBuf>,
    /// UTS namespace.
    pub uts: Option<PathBuf>,
    /// PID namespace.
    pub pid: PidNamespace,
}

/// PID namespace choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    /// A new one for this container (its process is PID 1).
    #[default]
    Container,
    /// The pod's shared one, joined through this namespace file.
    Pod(PathBuf),
    /// The host's.
    Host,
}

/// What the monitor records when the container process ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code; 128 + signal number when killed by a signal.
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// When it ended, nanoseconds since the Unix epoch.
    pub finished_at_ns: i64,
    /// When it started (execve), nanoseconds since the Unix epoch; 0 if it never started.
    pub started_at_ns: i64,
    /// Set when `init` failed before the container process ran: why.
    pub init_error: Option<String>,
}
