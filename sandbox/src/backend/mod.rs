//! The seam between the CRI layer and a runtime: what a backend must do
//! for pods and containers. This file is the one place to read to see it.
//!
//! The CRI layer (the agent) keeps the records, translates CRI into the
//! neutral requests of [`types`], makes the pod cgroup and the pod network,
//! and calls a backend through these traits; it never reaches into a
//! backend's namespaces, bundles or VMs. A backend returns a handle for each
//! pod and container (typed and versioned: [`PodHandle`], [`ContainerHandle`])
//! that the agent stores and passes back. Every step is planned first (the
//! handle, with the paths of what will be made, is recorded before anything
//! is made) and every removal is idempotent, so a crash at any point leaves
//! something the next start can finish or undo.
//!
//! Backends: [`crate::ns::backend::NsBackend`] (namespace pods). The KVM
//! backends come with the guest agent.
//!
//! Lifecycle calls block (the agent runs them on blocking threads); the
//! streaming calls are futures.

mod process;
mod types;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

pub use self::process::{
    BoxFuture, Duplex, DuplexStream, Input, Outcome, Output, ProcessIo, ResizeFn, StreamOptions, WaitFuture,
};
pub use self::types::{
    BackendKind, ContainerHandle, ContainerRequest, ContainerUsage, Created, ExecStart, ExecSyncOutput,
    ExecSyncRequest, ExitInfo, Features, FilesystemRequest, PidMode, PodHandle, PodRequest, ProcessRequest,
    RootfsLayers, RunState, Stopped, UserRequest,
};
use crate::cgroups::Resources;
pub use crate::ns::pod::{DnsSpec, PodNamespaces};
pub use crate::ns::spec::{CapabilitySpec, START_ERROR_EXIT_CODE, UserSpec};

/// Called by [`PodRuntime::run_pod`] once the pod's network namespace
/// exists, to connect it to the pod network (the agent's job); a backend
/// that boots a VM reads the interfaces the hook set up from the namespace.
pub type NetworkHook<'a> = &'a mut dyn FnMut(&Path) -> Result<(), BackendError>;

/// Pods.
pub trait PodRuntime {
    /// The handle of pod `request.id`, with the paths of what
    /// [`PodRuntime::run_pod`] will make; makes nothing.
    fn plan_pod(&self, request: &PodRequest) -> Result<PodHandle, BackendError>;
    /// Makes the pod: its namespaces (the network hook connects the network
    /// namespace), files, and for a VM backend the VM. Undoes what it made
    /// when it fails.
    fn run_pod(&self, pod: &PodHandle, request: &PodRequest, network: NetworkHook<'_>) -> Result<(), BackendError>;
    /// Stops what keeps the pod running beyond its containers (its VM).
    fn stop_pod(&self, pod: &PodHandle) -> Result<(), BackendError>;
    /// Removes everything of the pod; removing what is gone is no error.
    fn remove_pod(&self, pod: &PodHandle) -> Result<(), BackendError>;
    /// Whether the pod is still whole (its namespaces or VM exist), for
    /// recovery after a restart or a reboot.
    fn pod_intact(&self, pod: &PodHandle) -> bool;
}

/// Containers.
pub trait ContainerRuntime {
    /// The handle of container `request.id` in `pod`; makes nothing.
    fn plan_container(&self, pod: &PodHandle, request: &ContainerRequest) -> Result<ContainerHandle, BackendError>;
    /// Makes the container, ready to start; fills in what only exists once
    /// it is made (a process id) in `container`.
    fn create_container(
        &self,
        pod: &PodHandle,
        container: &mut ContainerHandle,
        request: &ContainerRequest,
    ) -> Result<Created, BackendError>;
    /// Starts its process; the start time (ns since the epoch).
    /// [`BackendError::StartFailed`] when the process cannot start (its
    /// program does not exist): the container then exits by itself.
    fn start_container(&self, container: &ContainerHandle) -> Result<i64, BackendError>;
    /// Sends a signal to its process.
    fn signal_container(&self, container: &ContainerHandle, signal: Signal) -> Result<(), BackendError>;
    /// Asks its process to end (SIGTERM, as the backend delivers it best)
    /// and waits up to `grace` for the exit, giving up early once
    /// `abandoned` says the caller no longer waits. Never sends SIGKILL.
    fn stop_gracefully(
        &self,
        container: &ContainerHandle,
        grace: Duration,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<Stopped, BackendError>;
    /// Where it is in its life.
    fn container_state(&self, container: &ContainerHandle) -> Result<RunState, BackendError>;
    /// Kills and removes it and everything it had; idempotent.
    fn remove_container(&self, container: &ContainerHandle) -> Result<(), BackendError>;
    /// Reopens its CRI log (after kubelet rotated it).
    fn reopen_log(&self, container: &ContainerHandle) -> Result<(), BackendError>;
    /// Changes its limits.
    fn update_resources(&self, container: &ContainerHandle, resources: &Resources) -> Result<(), BackendError>;
    /// Its resource usage; `None` when it has none to report (not running).
    fn container_usage(&self, container: &ContainerHandle) -> Result<Option<ContainerUsage>, BackendError>;
}

/// Processes and connections streamed to clients.
pub trait StreamRuntime {
    /// Runs a command in the container and collects its output.
    fn exec_sync<'a>(
        &'a self,
        container: &'a ContainerHandle,
        request: ExecSyncRequest,
    ) -> BoxFuture<'a, Result<ExecSyncOutput, BackendError>>;
    /// Starts a command in the container with streamed stdio.
    fn exec<'a>(
        &'a self,
        container: &'a ContainerHandle,
        request: ExecStart,
    ) -> BoxFuture<'a, Result<ProcessIo, BackendError>>;
    /// Connects to the container's own stdio.
    fn attach<'a>(
        &'a self,
        container: &'a ContainerHandle,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<ProcessIo, BackendError>>;
    /// Connects to `port` on localhost inside the pod.
    fn port_forward<'a>(&'a self, pod: &'a PodHandle, port: u16) -> BoxFuture<'a, Result<DuplexStream, BackendError>>;
}

/// A runtime backend: everything a RuntimeClass handler needs.
pub trait Backend: PodRuntime + ContainerRuntime + StreamRuntime + Send + Sync + std::fmt::Debug {
    /// Which kind it is.
    fn kind(&self) -> BackendKind;
    /// Why this node cannot run pods with it, if it cannot (checked without
    /// starting anything).
    fn unavailable(&self) -> Option<String>;
    /// What it supports.
    fn features(&self) -> Features;
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The request cannot be honoured as given.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The request field (CRI dotted path).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The container's process cannot be started: why.
    #[error("{0}")]
    StartFailed(String),
    /// The container or pod is not in a state that allows the call.
    #[error("{0}")]
    BadState(String),
    /// A command did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The handle belongs to another backend (a record of another handler).
    #[error("a {found} handle was given to the {backend} backend")]
    WrongBackend {
        /// This backend.
        backend: &'static str,
        /// The handle's.
        found: &'static str,
    },
    /// The handle was written by a newer crius.
    #[error("{what} handle version {found} is newer than the {supported} this crius supports")]
    NewerVersion {
        /// Pod or container.
        what: &'static str,
        /// In the record.
        found: u32,
        /// Known here.
        supported: u32,
    },
    /// A step of the backend failed.
    #[error("{step}")]
    Failed {
        /// What was being done.
        step: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BackendError {
    /// A failed step with its cause.
    pub fn failed(step: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed { step: step.into(), source: Box::new(source) }
    }
}
