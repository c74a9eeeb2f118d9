//! Guest → host replies to requests.

use serde::{Deserialize, Serialize};

use super::base64;
use super::event::ExitStatus;

/// A successful answer to a [`super::HostRequest`]; which variant answers
/// which request is written on the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestReply {
    /// Done, nothing to report.
    Ok,
    /// The container's process runs.
    Started {
        /// When it started, ns since the Unix epoch (guest clock).
        started_at_ns: u64,
    },
    /// A container's state.
    State(ContainerStatus),
    /// Every container the guest knows.
    Containers {
        /// The containers.
        containers: Vec<ContainerInfo>,
    },
    /// The result of an ExecSync.
    ExecSyncResult(ExecSyncOutput),
    /// Resource usage.
    Stats(StatsReply),
    /// Output events follow from `from_offset` on: the requested offset, or
    /// later if the guest no longer holds the output before it (lost output:
    /// the host may note the gap in the log).
    Subscribed {
        /// The offset of the first record that will be sent.
        from_offset: u64,
    },
}

impl GuestReply {
    /// The `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestReply::Ok => "ok",
            GuestReply::Started { .. } => "started",
            GuestReply::State(_) => "state",
            GuestReply::Containers { .. } => "containers",
            GuestReply::ExecSyncResult(_) => "exec_sync_result",
            GuestReply::Stats(_) => "stats",
            GuestReply::Subscribed { .. } => "subscribed",
        }
    }

    /// The protocol version that introduced this reply.
    pub fn since(&self) -> u16 {
        match self {
            // Version 1: the initial set.
            GuestReply::Ok
            | GuestReply::Started { .. }
            | GuestReply::State(_)
            | GuestReply::Containers { .. }
            | GuestReply::ExecSyncResult(_)
            | GuestReply::Stats(_)
            | GuestReply::Subscribed { .. } => 1,
        }
    }
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Created, not started.
    Created {
        /// When it was created, ns since the Unix epoch (guest clock).
        created_at_ns: u64,
    },
    /// Its process runs.
    Running {
        /// When it started, ns since the Unix epoch.
        started_at_ns: u64,
    },
    /// Its process has ended.
    Exited(ExitStatus),
}

/// A container and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Its state.
    pub status: ContainerStatus,
}

/// What an ExecSync command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSyncOutput {
    /// Exit code (128 + n when killed by signal n).
    pub exit_code: i32,
    /// Its stdout, at most `max_output` bytes (base64 in JSON).
    #[serde(with = "base64")]
    pub stdout: Vec<u8>,
    /// Its stderr, at most `max_output` bytes (base64 in JSON).
    #[serde(with = "base64")]
    pub stderr: Vec<u8>,
    /// Whether output beyond `max_output` was dropped.
    #[serde(default)]
    pub truncated: bool,
}

/// Resource usage of containers and of the whole pod (the VM).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// When the numbers were read, ns since the Unix epoch (guest clock).
    pub timestamp_ns: u64,
    /// Per container asked for (those that exist).
    pub containers: Vec<ContainerStats>,
    /// The pod as a whole.
    pub pod: PodStats,
}

/// One container's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// Container id.
    pub id: String,
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Number of processes and threads.
    pub pids: u64,
}

/// The pod's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStats {
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Number of processes and threads.
    pub pids: u64,
    /// Per interface.
    pub network: Vec<InterfaceStats>,
}

/// CPU usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Cumulative CPU time, ns.
    pub usage_ns: u64,
}

/// Memory usage (cgroup v2 names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Usage less inactive file pages.
    pub working_set_bytes: u64,
    /// Total usage.
    pub usage_bytes: u64,
    /// Anonymous memory.
    pub rss_bytes: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// Memory left before the limit, if there is one.
    pub available_bytes: Option<u64>,
}

/// One interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStats {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
}
