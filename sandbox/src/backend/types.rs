//! What the CRI layer hands a backend and gets back: requests in neutral
//! terms (no namespace paths, no VM devices) and the handles a backend keeps
//! in the state store for its pods and containers (typed and versioned).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroups::Resources;
use crate::mounts::{DeviceSpec, MountSpec};
use crate::ns::backend::{NsContainer, NsPod};
use crate::ns::pod::{DnsSpec, PodNamespaces};
use crate::ns::spec::{CapabilitySpec, UserSpec};
use crate::seccomp::SeccompProfile;
use crate::vm::{VmContainer, VmPod};

/// The kinds of runtime handler crius knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// Linux namespaces on the host (the default handler).
    Namespaces,
    /// A VM per pod, with the guest agent inside.
    Kvm,
    /// The KVM backend's host side and guest agent, with the VM replaced by
    /// a host process in namespaces of its own (for testing without KVM).
    KvmTest,
}

impl BackendKind {
    /// The name used in the config (`type = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::Kvm => "kvm",
            Self::KvmTest => "kvm-test",
        }
    }
}

/// What a handler can do, as `Status` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Every submount of a read-only mount is read-only too.
    pub recursive_read_only_mounts: bool,
    /// Pods in user namespaces.
    pub user_namespaces: bool,
    /// Pods may share the node's network, PID or IPC namespace.
    pub host_namespaces: bool,
}

/// A pod to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    /// Sandbox id.
    pub id: String,
    /// Hostname; empty keeps the node's (host network).
    pub hostname: String,
    /// DNS for the pod's resolv.conf.
    pub dns: DnsSpec,
    /// Which namespaces the pod has of its own (false: the node's).
    pub namespaces: PodNamespaces,
    /// Namespaced sysctls.
    pub sysctls: BTreeMap<String, String>,
    /// The pod cgroup the CRI layer made, relative to the hierarchy roots.
    pub cgroup: Option<String>,
}

/// The layers of a container's root filesystem, as the image store keeps
/// them: each backend mounts or shares them its own way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsLayers {
    /// Read-only layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The container's writable layer.
    pub upper: PathBuf,
    /// Overlay's work directory (empty, beside `upper`).
    pub work: PathBuf,
}

/// Who the container's process runs as, before names are looked up in the
/// image's `/etc/passwd` and `/etc/group` (which only the backend can read,
/// once it has the root filesystem).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRequest {
    /// CRI `run_as_user`.
    pub run_as_user: Option<i64>,
    /// CRI `run_as_username`.
    pub run_as_username: String,
    /// CRI `run_as_group`.
    pub run_as_group: Option<i64>,
    /// CRI `supplemental_groups`.
    pub supplemental_groups: Vec<i64>,
    /// `SupplementalGroupsPolicy: Strict`: only the listed groups, none
    /// from the image's `/etc/group`.
    pub strict_groups: bool,
    /// The image config's `User` (`name`, `uid`, `uid:gid`, `name:group`).
    pub image_user: String,
}

/// The container's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRequest {
    /// argv (`args[0]` looked up in the container's `PATH` without a `/`).
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Its identity.
    pub user: UserRequest,
    /// A terminal.
    pub terminal: bool,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach ends.
    pub stdin_once: bool,
    /// `no_new_privs`.
    pub no_new_privileges: bool,
    /// Capability sets.
    pub capabilities: CapabilitySpec,
    /// seccomp.
    pub seccomp: SeccompProfile,
    /// AppArmor profile.
    pub apparmor_profile: Option<String>,
    /// rlimits (name, soft, hard).
    pub rlimits: Vec<(String, u64, u64)>,
    /// OOM score adjustment, clamped to what the node allows.
    pub oom_score_adj: Option<i32>,
}

/// The container's view of files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemRequest {
    /// Root filesystem layers.
    pub rootfs: RootfsLayers,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Mounts from the node.
    pub mounts: Vec<MountSpec>,
    /// Devices from the node.
    pub devices: Vec<DeviceSpec>,
    /// Paths to hide.
    pub masked_paths: Vec<String>,
    /// Paths to make read-only.
    pub readonly_paths: Vec<String>,
    /// Privileged: all devices, writable `/sys`, nothing masked.
    pub privileged: bool,
}

/// Whose PID namespace the container is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidMode {
    /// Its own (its process is PID 1).
    #[default]
    Container,
    /// The pod's shared one.
    Pod,
    /// The node's.
    Node,
}

/// A container to create in a pod. It travels to a guest agent as JSON (the
/// opaque `spec` of the guest protocol's `CreateContainer`), with its paths
/// translated to the guest's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRequest {
    /// Container id.
    pub id: String,
    /// Its files.
    pub filesystem: FilesystemRequest,
    /// Its process.
    pub process: ProcessRequest,
    /// Its PID namespace.
    pub pid: PidMode,
    /// Hostname inside the container.
    pub hostname: String,
    /// Its cgroup (relative to the hierarchy roots), as the CRI layer names
    /// it under the pod's; a VM backend may place it its own way.
    pub cgroup: Option<String>,
    /// Its limits.
    pub resources: Option<Resources>,
    /// Where its CRI log goes (the node's path).
    pub log_path: Option<PathBuf>,
}

/// What a created container runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The resolved identity (primary group included in the groups).
    pub user: UserSpec,
}

/// A pod as its backend keeps it: stored in the pod's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum PodHandle {
    /// A namespace pod.
    Namespaces(NsPod),
    /// A pod in a guest (`kvm`, `kvm-test`).
    Vm(VmPod),
}

/// A container as its backend keeps it: stored in the container's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum ContainerHandle {
    /// A container of a namespace pod.
    Namespaces(NsContainer),
    /// A container in a guest.
    Vm(VmContainer),
}

/// How a container's process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// Start time, ns since the epoch (0 if it never started).
    pub started_at_ns: i64,
    /// End time, ns since the epoch.
    pub finished_at_ns: i64,
    /// It could not be started (or its monitor died): why.
    pub start_error: Option<String>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Being set up.
    Creating,
    /// Ready, waiting for StartContainer.
    Created,
    /// Running.
    Running,
    /// Ended.
    Exited(ExitInfo),
    /// Nothing of it is left (the node rebooted): why.
    Gone(String),
}

/// How a graceful stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The process exited.
    Exited,
    /// The grace period ended with the process still running.
    StillRunning,
    /// The caller gave up first; the process keeps running.
    Abandoned,
}

/// ExecSync's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSyncRequest {
    /// argv.
    pub args: Vec<String>,
    /// Killed after this long.
    pub timeout: Option<Duration>,
}

/// ExecSync's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSyncOutput {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// Standard output (bounded).
    pub stdout: Vec<u8>,
    /// Standard error (bounded).
    pub stderr: Vec<u8>,
}

/// A streamed exec's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecStart {
    /// argv.
    pub args: Vec<String>,
    /// Streams and terminal.
    pub options: super::StreamOptions,
}

/// Resource usage of a container.
pub use crate::cgroups::CgroupStats as ContainerUsage;
