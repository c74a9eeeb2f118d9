//! The KVM backend's host side: a pod is a guest agent (PID 1 of the pod's
//! VM) that runs the containers; crius drives it over the guest protocol
//! (`guest_proto`) and writes the CRI logs from the output it streams.
//!
//! Two machines carry the guest agent: a VM (`kvm`, with crius's VMM), or,
//! for `kvm-test`, a host process in namespaces of its own (mount, PID, IPC,
//! UTS) joined to the pod's network namespace, reached over a unix socket.
//! Everything above the transport is the same.
//!
//! The pod's network namespace stays on the node, made and connected as for
//! namespace pods (the agent's network hook); the machine runs inside it.
//! Guest agents outlive crius: a restarted crius connects again to each
//! (lazily, on the first call for the pod, or at recovery) and resumes every
//! container's log where its checkpoint says ([`logs`]).

mod conn;
mod containers;
mod launch;
mod logs;
mod streams;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use guest_proto::codec::StreamId;
use guest_proto::message::{DnsConfig, GuestEvent, GuestReply, HostRequest, PodSetup, Reply};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use self::conn::ConnError;
use self::conn::Connection;
use self::logs::GuestLog;
use crate::backend::{BackendError, BackendKind, NetworkHook, PodHandle, PodNamespaces, PodRequest};
use crate::cgroups::CgroupMode;
use crate::ns::backend::NsPod;
use crate::ns::pod::{self, PodSpec};

/// The version of [`VmPod`] this build writes.
const POD_VERSION: u32 = 1;
/// The version of [`VmContainer`] this build writes.
const CONTAINER_VERSION: u32 = 1;
/// How long one request to the guest may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What carries a pod's guest agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Machine {
    /// A host process in namespaces of its own.
    KvmTest,
    /// A VM.
    Kvm,
}

/// A pod whose containers run in a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmPod {
    /// Handle version.
    pub version: u32,
    /// Sandbox id.
    pub id: String,
    /// What carries the guest agent.
    pub machine: Machine,
    /// The pod's directory on the node (`<run_root>/vm/<id>`): the agent's
    /// socket and pid, container log checkpoints.
    pub state_dir: PathBuf,
    /// The pod's network namespace and files on the node.
    pub node: NsPod,
}

impl VmPod {
    fn socket(&self) -> PathBuf {
        self.state_dir.join("guest.sock")
    }
}

/// A container in a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmContainer {
    /// Handle version.
    pub version: u32,
    /// Container id.
    pub id: String,
    /// Its pod.
    pub pod: Box<VmPod>,
    /// Its CRI log on the node.
    pub log_path: Option<PathBuf>,
}

/// Per pod: the connection to its guest and what it feeds.
#[derive(Debug, Default)]
struct Link {
    conn: tokio::sync::Mutex<Option<Connection>>,
    logs: Mutex<HashMap<String, GuestLog>>,
    exec_exits: Mutex<HashMap<StreamId, oneshot::Sender<i32>>>,
}

/// The KVM backend (`kvm` and `kvm-test` handlers).
#[derive(Debug)]
pub struct KvmBackend {
    machine: Machine,
    run_root: PathBuf,
    self_exe: PathBuf,
    guest_binary: PathBuf,
    cgroups: Result<CgroupMode, String>,
    /// The runtime its connections run on (crius's).
    runtime: tokio::runtime::Handle,
    links: Mutex<HashMap<String, Arc<Link>>>,
}

impl KvmBackend {
    /// A backend for `machine`, keeping its runtime state under `run_root`,
    /// running the guest agent `guest_binary`; its connections run on
    /// `runtime`, and its blocking calls must come from blocking threads.
    pub fn new(
        machine: Machine,
        run_root: &Path,
        self_exe: &Path,
        guest_binary: &Path,
        cgroups: Result<CgroupMode, String>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            machine,
            run_root: run_root.to_path_buf(),
            self_exe: self_exe.to_path_buf(),
            guest_binary: guest_binary.to_path_buf(),
            cgroups,
            runtime,
            links: Mutex::default(),
        }
    }

    fn kind(&self) -> BackendKind {
        match self.machine {
            Machine::KvmTest => BackendKind::KvmTest,
            Machine::Kvm => BackendKind::Kvm,
        }
    }

    fn link(&self, pod: &str) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(links.entry(pod.to_owned()).or_default())
    }

    fn forget(&self, pod: &str) {
        self.links.lock().unwrap_or_else(PoisonError::into_inner).remove(pod);
    }

    /// The connection to the pod's guest, made (again) when there is none:
    /// after a restart of crius the logs resume from their checkpoints.
    async fn connection(&self, pod: &VmPod) -> Result<Connection, BackendError> {
        let link = self.link(&pod.id);
        let mut slot = link.conn.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(conn.clone());
        }
        let socket = pod.socket();
        let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
        // The socket and its task live on the backend's runtime, whoever calls.
        let connect = self.runtime.spawn(async move {
            let stream = tokio::net::UnixStream::connect(&socket)
                .await
                .map_err(|e| BackendError::failed(format!("connect to the guest agent at {}", socket.display()), e))?;
            Connection::start(stream, concat!("crius ", env!("CARGO_PKG_VERSION")), events)
                .await
                .map_err(|e| BackendError::failed("guest agent handshake", e))
        });
        let conn = connect.await.map_err(|e| BackendError::failed("connect to the guest agent", e))??;
        tracing::info!(pod_id = %pod.id, guest = %conn.peer_build(), "connected to the guest agent");
        self.runtime.spawn(events::serve(Arc::clone(&link), conn.clone(), receiver));
        *slot = Some(conn.clone());
        drop(slot);
        containers::resume_logs(&link, &conn, pod).await;
        Ok(conn)
    }

    /// Sends `request` to the pod's guest and waits for the reply.
    async fn call(&self, pod: &VmPod, request: HostRequest) -> Result<GuestReply, BackendError> {
        let conn = self.connection(pod).await?;
        let kind = request.kind();
        let reply: Reply = tokio::time::timeout(REQUEST_TIMEOUT, conn.request(request))
            .await
            .map_err(|_| BackendError::Timeout(format!("the guest agent did not answer {kind} in time")))?
            .map_err(|e| BackendError::failed(format!("guest request {kind}"), e))?;
        reply.map_err(|e| containers::guest_error(kind, e))
    }

    /// Runs `work` on the runtime from a blocking thread.
    fn block<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    fn plan_pod(&self, request: &PodRequest) -> Result<PodHandle, BackendError> {
        let namespaces = request.namespaces;
        if !(namespaces.net && namespaces.ipc && namespaces.uts) {
            return Err(BackendError::InvalidArgument {
                field: "config.linux.security_context.namespace_options",
                reason: format!("{} pods cannot share the node's network, PID or IPC namespace", self.kind().name()),
            });
        }
        let node_namespaces = PodNamespaces { net: true, ipc: false, uts: false, pid: false };
        let paths = pod::plan_paths(&self.run_root, &request.id, node_namespaces)
            .map_err(|e| BackendError::failed("plan the pod's paths", e))?;
        Ok(PodHandle::Vm(VmPod {
            version: POD_VERSION,
            id: request.id.clone(),
            machine: self.machine,
            state_dir: self.run_root.join("vm").join(&request.id),
            node: NsPod { version: 1, id: request.id.clone(), paths },
        }))
    }

    fn run_pod(&self, handle: &PodHandle, request: &PodRequest, network: NetworkHook<'_>) -> Result<(), BackendError> {
        let pod = pod_of(handle)?;
        // The node side: a network namespace (and the pod's files), connected
        // to the pod network like a namespace pod's.
        let spec = PodSpec {
            id: request.id.clone(),
            hostname: request.hostname.clone(),
            dns: request.dns.clone(),
            namespaces: PodNamespaces { net: true, ipc: false, uts: false, pid: false },
            sysctls: Default::default(),
        };
        pod::create_pod(&self.run_root, &spec, &self.self_exe)
            .map_err(|e| BackendError::failed("create the pod's network namespace", e))?;
        let netns = pod.node.paths.net.clone().ok_or_else(|| BackendError::BadState("no network namespace".into()))?;
        network(&netns)?;
        launch::start_guest(self, pod, request, &netns)?;
        let setup = PodSetup {
            hostname: request.hostname.clone(),
            dns: DnsConfig {
                servers: request.dns.servers.iter().filter_map(|s| s.parse().ok()).collect(),
                searches: request.dns.searches.clone(),
                options: request.dns.options.clone(),
            },
            hosts_entries: Vec::new(),
            // kvm-test: the guest runs in the pod's network namespace, set up already.
            interfaces: Vec::new(),
            sysctls: request.sysctls.clone(),
        };
        self.block(self.call(pod, HostRequest::SetupPod(setup))).map(drop)
    }

    fn remove_pod(&self, handle: &PodHandle) -> Result<(), BackendError> {
        let pod = pod_of(handle)?;
        if launch::guest_alive(pod) {
            // Best effort: the guest stops its containers; then it is killed.
            let _ = self.block(async {
                tokio::time::timeout(Duration::from_secs(10), self.call(pod, HostRequest::Shutdown)).await
            });
        }
        launch::stop_guest(pod)?;
        self.forget(&pod.id);
        pod::destroy_pod(&self.run_root, &pod.id).map_err(|e| BackendError::failed("remove the pod's namespace", e))?;
        match std::fs::remove_dir_all(&pod.state_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BackendError::failed(format!("remove {}", pod.state_dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    fn pod_intact(&self, handle: &PodHandle) -> bool {
        let Ok(pod) = pod_of(handle) else { return false };
        let intact = launch::guest_alive(pod) && pod.node.paths.net.as_ref().is_some_and(|n| n.exists());
        if intact {
            // Reconnect now: container logs resume without waiting for a call.
            if let Err(e) = self.block(self.connection(pod)) {
                tracing::warn!(pod_id = %pod.id, error = %crate::error_report(&e), "guest agent not reachable");
            }
        }
        intact
    }
}

fn pod_of(handle: &PodHandle) -> Result<&VmPod, BackendError> {
    match handle {
        PodHandle::Vm(pod) if pod.version <= POD_VERSION => Ok(pod),
        PodHandle::Vm(pod) => {
            Err(BackendError::NewerVersion { what: "pod", found: pod.version, supported: POD_VERSION })
        }
        PodHandle::Namespaces(_) => Err(BackendError::WrongBackend { backend: "kvm", found: "namespaces" }),
    }
}

/// What the guest sends unasked: output for the logs, exec exits.
mod events {
    use super::*;

    pub(super) async fn serve(
        link: Arc<Link>,
        conn: Connection,
        mut events: tokio::sync::mpsc::UnboundedReceiver<GuestEvent>,
    ) {
        while let Some(event) = events.recv().await {
            match event {
                GuestEvent::Output(batch) => containers::write_output(&link, &conn, batch).await,
                GuestEvent::ExecExited { stream, exit_code } => {
                    let waiter = link.exec_exits.lock().unwrap_or_else(PoisonError::into_inner).remove(&stream);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(exit_code);
                    }
                }
                GuestEvent::ContainerExited { id, exit } => {
                    tracing::debug!(container_id = %id, exit_code = exit.exit_code, "guest: container exited");
                }
                GuestEvent::Oom { id } => tracing::info!(container_id = %id, "guest: OOM kill"),
                GuestEvent::Log(log) => tracing::info!(guest = ?log, "guest agent"),
            }
        }
    }
}
