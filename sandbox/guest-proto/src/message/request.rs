//! Host → guest requests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::net::{Cidr, MacAddr};
use crate::codec::StreamId;

/// A request from the host; the guest answers each with one [`super::Reply`].
///
/// Stream ids in requests name streams the host opened (Open frame) before
/// sending the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostRequest {
    /// Configure the pod: hostname, DNS, /etc/hosts, interfaces, sysctls.
    /// → `Ok`.
    SetupPod(PodSetup),
    /// Create a container (not started). → `Ok`; `AlreadyExists`.
    CreateContainer(ContainerCreate),
    /// Start a created container. → `Started`; `StartFailed` with the reason.
    StartContainer {
        /// Container id.
        id: String,
    },
    /// Send a signal to a container's init process. → `Ok`.
    SignalContainer {
        /// Container id.
        id: String,
        /// Signal number.
        signal: i32,
    },
    /// Remove a container that is not running. → `Ok`.
    RemoveContainer {
        /// Container id.
        id: String,
    },
    /// The state of one container. → `State`.
    ContainerState {
        /// Container id.
        id: String,
    },
    /// Every container the guest knows and its state (host restart recovery).
    /// → `Containers`.
    ListContainers,
    /// Run a command in a container and collect its output. → `ExecSyncResult`.
    ExecSync(ExecSyncRequest),
    /// Run a command in a container with its stdio on streams. → `Ok` once the
    /// process runs; its end comes as the event `ExecExited`.
    Exec(ExecRequest),
    /// Attach streams to a container's stdio. → `Ok`.
    Attach(AttachRequest),
    /// Resize the terminal of an exec or attach (named by its `stream`). → `Ok`.
    Resize {
        /// The exec's or attach's main stream.
        stream: StreamId,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Dial `localhost:port` inside the pod and splice it to `stream`. → `Ok`
    /// once connected; on failure an error reply, and the guest resets the stream.
    PortForward {
        /// TCP port.
        port: u16,
        /// The stream to splice.
        stream: StreamId,
    },
    /// Resource usage of containers (all when `ids` is empty) and of the pod.
    /// → `Stats`.
    Stats {
        /// Container ids.
        ids: Vec<String>,
    },
    /// Change a container's resources (OCI `LinuxResources` JSON). → `Ok`.
    UpdateResources {
        /// Container id.
        id: String,
        /// OCI `LinuxResources`, decoded by the guest.
        resources: serde_json::Value,
    },
    /// Stream the container's output as `Output` events, from `from_offset` on
    /// (see [`super::OutputRecord`] for the offset contract). → `Subscribed`.
    SubscribeOutput {
        /// Container id.
        id: String,
        /// First output byte wanted: the end of the last record the host wrote.
        from_offset: u64,
    },
    /// The host has durably written all output before `offset`; the guest may
    /// drop it. → `Ok`.
    AckOutput {
        /// Container id.
        id: String,
        /// End of the last record written.
        offset: u64,
    },
    /// Stop every container and power the VM off. → `Ok`, then the guest ends
    /// the session.
    Shutdown,
}

impl HostRequest {
    /// Every `type` tag, in declaration order.
    pub const KINDS: &'static [&'static str] = &[
        "setup_pod",
        "create_container",
        "start_container",
        "signal_container",
        "remove_container",
        "container_state",
        "list_containers",
        "exec_sync",
        "exec",
        "attach",
        "resize",
        "port_forward",
        "stats",
        "update_resources",
        "subscribe_output",
        "ack_output",
        "shutdown",
    ];

    /// The `type` tag, for logs and spans.
    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.index()]
    }

    /// The protocol version that introduced this request.
    pub fn since(&self) -> u16 {
        match self {
            // Version 1: the initial set.
            HostRequest::SetupPod(_)
            | HostRequest::CreateContainer(_)
            | HostRequest::StartContainer { .. }
            | HostRequest::SignalContainer { .. }
            | HostRequest::RemoveContainer { .. }
            | HostRequest::ContainerState { .. }
            | HostRequest::ListContainers
            | HostRequest::ExecSync(_)
            | HostRequest::Exec(_)
            | HostRequest::Attach(_)
            | HostRequest::Resize { .. }
            | HostRequest::PortForward { .. }
            | HostRequest::Stats { .. }
            | HostRequest::UpdateResources { .. }
            | HostRequest::SubscribeOutput { .. }
            | HostRequest::AckOutput { .. }
            | HostRequest::Shutdown => 1,
        }
    }

    fn index(&self) -> usize {
        match self {
            HostRequest::SetupPod(_) => 0,
            HostRequest::CreateContainer(_) => 1,
            HostRequest::StartContainer { .. } => 2,
            HostRequest::SignalContainer { .. } => 3,
            HostRequest::RemoveContainer { .. } => 4,
            HostRequest::ContainerState { .. } => 5,
            HostRequest::ListContainers => 6,
            HostRequest::ExecSync(_) => 7,
            HostRequest::Exec(_) => 8,
            HostRequest::Attach(_) => 9,
            HostRequest::Resize { .. } => 10,
            HostRequest::PortForward { .. } => 11,
            HostRequest::Stats { .. } => 12,
            HostRequest::UpdateResources { .. } => 13,
            HostRequest::SubscribeOutput { .. } => 14,
            HostRequest::AckOutput { .. } => 15,
            HostRequest::Shutdown => 16,
        }
    }
}

/// The pod's network identity and kernel settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSetup {
    /// Hostname (UTS).
    pub hostname: String,
    /// resolv.conf contents.
    pub dns: DnsConfig,
    /// Extra /etc/hosts lines.
    pub hosts_entries: Vec<HostsEntry>,
    /// Network interfaces, by the name the guest sees.
    pub interfaces: Vec<InterfaceConfig>,
    /// Namespaced sysctls (`net.ipv4.ip_forward` = `1`).
    pub sysctls: BTreeMap<String, String>,
}

/// resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Nameservers.
    pub servers: Vec<IpAddr>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Options (`ndots:5`).
    pub options: Vec<String>,
}

/// One /etc/hosts line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostsEntry {
    /// Address.
    pub ip: IpAddr,
    /// Host names for it.
    pub names: Vec<String>,
}

/// A guest network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    /// Name to give it (`eth0`).
    pub name: String,
    /// MAC address of the virtio-net device it is (how the guest finds it).
    pub mac: MacAddr,
    /// MTU.
    pub mtu: u32,
    /// Addresses with prefix length.
    pub addresses: Vec<Cidr>,
    /// Routes through it.
    pub routes: Vec<RouteConfig>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    /// Destination (`0.0.0.0/0` for the default route).
    pub dest: Cidr,
    /// Next hop; `None` for an on-link route.
    pub gateway: Option<IpAddr>,
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCreate {
    /// Container id.
    pub id: String,
    /// The container spec; opaque here, the guest decodes it into its own type.
    pub spec: serde_json::Value,
    /// Its root filesystem.
    pub rootfs: Rootfs,
    /// Whether to capture its output for the CRI log (`SubscribeOutput`).
    pub log: bool,
}

/// A container's root filesystem, as guest paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// Read-only layers, lowest first.
    pub layers: Vec<String>,
    /// The writable upper directory.
    pub writable: String,
}

/// A command to run to completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSyncRequest {
    /// Container id.
    pub id: String,
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    pub env_extra: Vec<String>,
    /// Kill the command after this many milliseconds (0: no limit); the reply
    /// is then `DeadlineExceeded`.
    pub timeout_ms: u64,
    /// Most bytes kept of stdout, and of stderr; capped to
    /// [`super::MAX_EXEC_SYNC_OUTPUT`]. The rest is read and dropped.
    pub max_output: u32,
}

/// A command to run with its stdio on streams.
///
/// `stream` carries stdin host → guest and stdout guest → host (with `tty`,
/// the terminal both ways); without `tty`, stderr goes on `stderr_stream`,
/// which must be given when `stderr` is set. The guest half-closes its side
/// of both streams once the process's output is drained, then sends
/// `ExecExited`: frames keep their order, so the host has all output first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Container id.
    pub id: String,
    /// Command and arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries added to the container's environment.
    pub env_extra: Vec<String>,
    /// Run on a terminal.
    pub tty: bool,
    /// Connect stdin.
    pub stdin: bool,
    /// Connect stdout.
    pub stdout: bool,
    /// Connect stderr.
    pub stderr: bool,
    /// The main stream; it names the exec in `Resize` and `ExecExited`.
    pub stream: StreamId,
    /// The stderr stream (no tty).
    pub stderr_stream: Option<StreamId>,
}

/// Streams to attach to a running container's stdio (same stream roles as
/// [`ExecRequest`]; the terminal setting is the container's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Container id.
    pub id: String,
    /// Connect stdin.
    pub stdin: bool,
    /// Connect stdout.
    pub stdout: bool,
    /// Connect stderr.
    pub stderr: bool,
    /// The main stream; it names the attach in `Resize`.
    pub stream: StreamId,
    /// The stderr stream (container without a terminal).
    pub stderr_stream: Option<StreamId>,
}
