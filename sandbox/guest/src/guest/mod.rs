//! The guest's pod and containers: what outlives a host connection.
//!
//! One [`Guest`] per agent. It runs the containers with the namespace
//! runtime ([`NsBackend`]) and one pod whose namespaces are the guest's
//! own ([`PodNamespaces`] all false: the VM, or kvm-test's fresh
//! namespaces, *is* the pod). Every container's handle lives here, in
//! memory: the agent does not restart, the host does (and reconnects).
//!
//! Blocking runtime calls run on tokio's blocking threads; the request
//! handlers return [`Reply`]s, never panic on what the host sends.

mod containers;
mod convert;
mod pod;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crius_sandbox::backend::{BackendError, ContainerHandle, PodHandle, RunState};
use crius_sandbox::ns::backend::NsBackend;
use guest_proto::message::{ContainerStatus, ErrorCode, ErrorReply, ExitStatus, PodSetup, Reply};
use guest_proto::output::OutputBuffer;
use tokio::sync::watch;

pub use self::convert::exit_status;

/// Output kept per container until the host acknowledges it; past it the
/// oldest records are dropped and the host sees a gap.
pub const OUTPUT_CAPACITY: usize = 8 << 20;

/// Errors of the guest's own bookkeeping (runtime failures come as
/// [`BackendError`]s and go to the host as error replies).
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A directory of the run root could not be made.
    #[error("create {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The agent's state: the pod and its containers.
#[derive(Debug)]
pub struct Guest {
    backend: NsBackend,
    run_root: PathBuf,
    kvm_test: bool,
    pod: Mutex<Option<PodState>>,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
    /// Ids being created (not yet in `containers`).
    creating: Mutex<HashSet<String>>,
    /// Bumped whenever a container's output or exit changes.
    changes: watch::Sender<u64>,
    /// Bumped on every SIGCHLD the agent gets.
    children: watch::Sender<u64>,
}

#[derive(Debug)]
struct PodState {
    handle: PodHandle,
    setup: PodSetup,
}

/// A container of the pod.
#[derive(Debug)]
pub struct Container {
    /// Container id.
    pub id: String,
    /// Its runtime handle.
    pub handle: ContainerHandle,
    /// Whether its output is captured for the CRI log.
    pub log_file: Option<PathBuf>,
    /// Whether it runs on a terminal.
    pub terminal: bool,
    /// Whether it keeps a stdin open.
    pub stdin: bool,
    /// When it was created, ns since the epoch.
    pub created_at_ns: u64,
    life: Mutex<Life>,
    /// Captured output, then how it ended.
    pub output: Mutex<Output>,
}

#[derive(Debug, Default)]
struct Life {
    started_at_ns: u64,
    watcher: Option<tokio::task::AbortHandle>,
}

/// A container's captured output and, once all of it is read, its end.
#[derive(Debug)]
pub struct Output {
    /// Records not yet acknowledged.
    pub buffer: OutputBuffer,
    /// How the container ended, set after its last output record.
    pub exit: Option<ExitStatus>,
}

impl Container {
    /// When it was started (0: not yet).
    pub fn started_at_ns(&self) -> u64 {
        lock(&self.life).started_at_ns
    }

    /// Its state for the host, from the runtime's.
    pub fn status(&self, state: &RunState) -> ContainerStatus {
        convert::status(state, self.created_at_ns, self.started_at_ns())
    }

    /// Whether it has ended (and its output has all been read).
    pub fn exit(&self) -> Option<ExitStatus> {
        lock(&self.output).exit.clone()
    }
}

impl Guest {
    /// A guest running containers under `run_root`, its helper processes
    /// being `self_exe internal ...`.
    pub fn new(run_root: &Path, self_exe: &Path, kvm_test: bool) -> Result<Self, GuestError> {
        for dir in [run_root.to_path_buf(), run_root.join("logs")] {
            std::fs::create_dir_all(&dir).map_err(|source| GuestError::CreateDir { path: dir.clone(), source })?;
        }
        let cgroups = crius_sandbox::cgroups::detect_host().map_err(|e| crius_sandbox::error_report(&e));
        if let Err(why) = &cgroups {
            tracing::warn!(%why, "no usable cgroup hierarchy: containers cannot have cgroups");
        }
        Ok(Self {
            backend: NsBackend::new(run_root, self_exe, cgroups),
            run_root: run_root.to_path_buf(),
            kvm_test,
            pod: Mutex::new(None),
            containers: Mutex::new(BTreeMap::new()),
            creating: Mutex::new(HashSet::new()),
            changes: watch::Sender::new(0),
            children: watch::Sender::new(0),
        })
    }

    /// The namespace runtime.
    pub fn backend(&self) -> &NsBackend {
        &self.backend
    }

    /// The pod's handle, once SetupPod made it.
    pub fn pod_handle(&self) -> Result<PodHandle, ErrorReply> {
        lock(&self.pod)
            .as_ref()
            .map(|p| p.handle.clone())
            .ok_or_else(|| ErrorReply::new(ErrorCode::InvalidArgument, "the pod is not set up yet (SetupPod)"))
    }

    /// A container by id.
    pub fn container(&self, id: &str) -> Result<Arc<Container>, ErrorReply> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, format!("container {id:?} not found")))
    }

    /// Every container, by id.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// A receiver that changes whenever output or an exit is recorded.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells the connections that output or an exit was recorded.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that changes on every SIGCHLD.
    pub fn subscribe_children(&self) -> watch::Receiver<u64> {
        self.children.subscribe()
    }

    /// Called on SIGCHLD.
    pub fn child_exited(&self) {
        self.children.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Answers the requests that are plain calls on the pod or a container
    /// (the streaming ones are the connection's, see `crate::conn`).
    pub async fn handle(self: &Arc<Self>, request: guest_proto::message::HostRequest) -> Reply {
        use guest_proto::message::HostRequest as R;
        match request {
            R::SetupPod(setup) => self.setup_pod(setup).await,
            R::CreateContainer(create) => self.create_container(create).await,
            R::StartContainer { id } => self.start_container(&id).await,
            R::SignalContainer { id, signal } => self.signal_container(&id, signal).await,
            R::RemoveContainer { id } => self.remove_container(&id).await,
            R::ContainerState { id } => self.container_state(&id).await,
            R::ListContainers => self.list_containers().await,
            R::ExecSync(request) => self.exec_sync(request).await,
            R::Stats { ids } => self.stats(ids).await,
            R::UpdateResources { id, resources } => self.update_resources(&id, resources).await,
            other => Err(ErrorReply::new(
                ErrorCode::Internal,
                format!("{} is handled by the connection, not the guest", other.kind()),
            )),
        }
    }
}

/// Runs a blocking call of the runtime on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ErrorReply> + Send + 'static,
) -> Result<T, ErrorReply> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ErrorReply::new(ErrorCode::Internal, format!("runtime call failed: {e}"))))
}

/// The error reply for a runtime failure. The protocol has no "failed
/// precondition" code: a call in the wrong state is `Internal`, its message
/// says which state.
pub fn backend_error(e: &BackendError) -> ErrorReply {
    let code = match e {
        BackendError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
        BackendError::StartFailed(_) => ErrorCode::StartFailed,
        BackendError::Timeout(_) => ErrorCode::DeadlineExceeded,
        BackendError::BadState(_)
        | BackendError::WrongBackend { .. }
        | BackendError::NewerVersion { .. }
        | BackendError::Failed { .. } => ErrorCode::Internal,
    };
    ErrorReply::new(code, crius_sandbox::error_report(e))
}

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidArgument, message)
}

/// A lock that survives a panicked holder (the data stays consistent: every
/// critical section here is a few assignments).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, ns since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether `id` is safe as a file name: letters, digits, `-`, `_`, `.`,
/// not starting with `.`, at most 128 bytes.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_file_names() {
        for ok in ["abc", "0123456789abcdef", "a-b_c.d"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".x", "a/b", "a b", "ä", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn runtime_errors_map_to_codes() {
        let code = |e: BackendError| backend_error(&e).code;
        assert_eq!(code(BackendError::StartFailed("no such file".into())), ErrorCode::StartFailed);
        assert_eq!(code(BackendError::Timeout("slow".into())), ErrorCode::DeadlineExceeded);
        assert_eq!(code(BackendError::InvalidArgument { field: "x", reason: "y".into() }), ErrorCode::InvalidArgument);
        assert_eq!(code(BackendError::BadState("exited".into())), ErrorCode::Internal);
        let failed = BackendError::failed("mount the rootfs", std::io::Error::other("EBUSY"));
        assert_eq!(backend_error(&failed).message, "mount the rootfs: EBUSY");
    }
}
