//! The namespace backend: pods are pinned namespaces on the node, containers
//! are monitor + init processes with an overlay rootfs mounted on the node
//! (see `sandbox/DESIGN.md`). It implements the seam of [`crate::backend`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::container::{self as runtime, ContainerError, State};
use super::pod::{self, PodPaths, PodSpec};
use super::spec::{ContainerSpec, INIT_PID_FILE, NamespaceSpec, PidNamespace, ProcessSpec};
use crate::backend::{
    Backend, BackendError, BackendKind, BoxFuture, ContainerHandle, ContainerRequest, ContainerRuntime, ContainerUsage,
    Created, DuplexStream, ExecStart, ExecSyncOutput, ExecSyncRequest, ExitInfo, Features, NetworkHook, PidMode,
    PodHandle, PodRequest, PodRuntime, ProcessIo, RunState, Stopped, StreamOptions, StreamRuntime,
};
use crate::cgroups::{Cgroup, CgroupMode, Resources};
use crate::mounts::RootfsSpec;
use crate::mounts::overlay::{OverlayMount, unmount_rootfs};

/// The version of [`NsPod`] this build writes.
const POD_VERSION: u32 = 1;
/// The version of [`NsContainer`] this build writes.
const CONTAINER_VERSION: u32 = 1;

/// How long CreateContainer waits for the container's init to be ready.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a container may take to go after SIGKILL when it is removed.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// A namespace pod: where its pinned namespaces and files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsPod {
    /// Handle version.
    pub version: u32,
    /// Sandbox id.
    pub id: String,
    /// Namespaces and files.
    pub paths: PodPaths,
}

/// A container of a namespace pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsContainer {
    /// Handle version.
    pub version: u32,
    /// Container id.
    pub id: String,
    /// Its bundle (`<run_root>/containers/<id>`).
    pub bundle: PathBuf,
    /// Where its overlay rootfs is mounted.
    pub rootfs: PathBuf,
    /// Its cgroup, relative to the hierarchy roots.
    pub cgroup: Option<String>,
    /// Its monitor (a child of this crius until reaped; 0 before creation).
    pub monitor_pid: i32,
}

/// The namespace backend.
#[derive(Debug)]
pub struct NsBackend {
    run_root: PathBuf,
    self_exe: PathBuf,
    cgroups: Result<CgroupMode, String>,
}

impl NsBackend {
    /// A backend keeping its runtime state under `run_root`, running
    /// `self_exe internal ...` for its helper processes.
    pub fn new(run_root: &Path, self_exe: &Path, cgroups: Result<CgroupMode, String>) -> Self {
        Self { run_root: run_root.to_path_buf(), self_exe: self_exe.to_path_buf(), cgroups }
    }

    fn cgroups(&self) -> Result<&CgroupMode, BackendError> {
        self.cgroups.as_ref().map_err(|why| BackendError::BadState(format!("no usable cgroup hierarchy: {why}")))
    }
}

fn pod_of(handle: &PodHandle) -> Result<&NsPod, BackendError> {
    let PodHandle::Namespaces(pod) = handle else {
        return Err(BackendError::WrongBackend { backend: "namespaces", found: "vm" });
    };
    if pod.version > POD_VERSION {
        return Err(BackendError::NewerVersion { what: "pod", found: pod.version, supported: POD_VERSION });
    }
    Ok(pod)
}

fn container_of(handle: &ContainerHandle) -> Result<&NsContainer, BackendError> {
    let ContainerHandle::Namespaces(container) = handle else {
        return Err(BackendError::WrongBackend { backend: "namespaces", found: "vm" });
    };
    if container.version > CONTAINER_VERSION {
        return Err(BackendError::NewerVersion {
            what: "container",
            found: container.version,
            supported: CONTAINER_VERSION,
        });
    }
    Ok(container)
}

fn failed(step: impl Into<String>) -> impl FnOnce(ContainerError) -> BackendError {
    let step = step.into();
    move |e| match e {
        ContainerError::StartFailed(why) => BackendError::StartFailed(why),
        ContainerError::BadState { .. } => BackendError::BadState(crate::error_report(&e)),
        e => BackendError::failed(step, e),
    }
}

impl PodRuntime for NsBackend {
    fn plan_pod(&self, request: &PodRequest) -> Result<PodHandle, BackendError> {
        pod::check_sysctls(&request.sysctls, request.namespaces)
            .map_err(|e| BackendError::InvalidArgument { field: "config.linux.sysctls", reason: e.to_string() })?;
        let paths = pod::plan_paths(&self.run_root, &request.id, request.namespaces)
            .map_err(|e| BackendError::failed("plan the pod's paths", e))?;
        Ok(PodHandle::Namespaces(NsPod { version: POD_VERSION, id: request.id.clone(), paths }))
    }

    fn run_pod(&self, handle: &PodHandle, request: &PodRequest, network: NetworkHook<'_>) -> Result<(), BackendError> {
        let planned = pod_of(handle)?;
        let spec = PodSpec {
            id: request.id.clone(),
            hostname: request.hostname.clone(),
            dns: request.dns.clone(),
            namespaces: request.namespaces,
            sysctls: request.sysctls.clone(),
        };
        let paths = pod::create_pod(&self.run_root, &spec, &self.self_exe)
            .map_err(|e| BackendError::failed("create the pod's namespaces", e))?;
        debug_assert_eq!(paths, planned.paths, "pod paths differ from the plan");
        if let Some(netns) = paths.net.as_deref()
            && let Err(e) = network(netns)
        {
            let _ = pod::destroy_pod(&self.run_root, &request.id);
            return Err(e);
        }
        Ok(())
    }

    fn stop_pod(&self, handle: &PodHandle) -> Result<(), BackendError> {
        pod_of(handle).map(drop)
    }

    fn remove_pod(&self, handle: &PodHandle) -> Result<(), BackendError> {
        let pod = pod_of(handle)?;
        pod::destroy_pod(&self.run_root, &pod.id).map_err(|e| BackendError::failed("remove the pod's namespaces", e))
    }

    fn pod_intact(&self, handle: &PodHandle) -> bool {
        pod_of(handle).is_ok_and(|pod| {
            let paths = &pod.paths;
            [&paths.net, &paths.ipc, &paths.uts].into_iter().flatten().all(|f| f.exists())
        })
    }
}

impl ContainerRuntime for NsBackend {
    fn plan_container(&self, _pod: &PodHandle, request: &ContainerRequest) -> Result<ContainerHandle, BackendError> {
        Ok(ContainerHandle::Namespaces(NsContainer {
            version: CONTAINER_VERSION,
            id: request.id.clone(),
            bundle: self.run_root.join("containers").join(&request.id),
            rootfs: self.run_root.join("rootfs").join(&request.id),
            cgroup: request.cgroup.clone(),
            monitor_pid: 0,
        }))
    }

    fn create_container(
        &self,
        pod: &PodHandle,
        handle: &mut ContainerHandle,
        request: &ContainerRequest,
    ) -> Result<Created, BackendError> {
        let pod = pod_of(pod)?;
        let ContainerHandle::Namespaces(container) = handle else {
            return Err(BackendError::WrongBackend { backend: "namespaces", found: "vm" });
        };
        let layers = &request.filesystem.rootfs;
        std::fs::create_dir_all(&container.rootfs)
            .map_err(|e| BackendError::failed(format!("create {}", container.rootfs.display()), e))?;
        OverlayMount::writable(&layers.layers, &layers.upper, &layers.work)
            .mount(&container.rootfs)
            .map_err(|e| BackendError::failed("mount the rootfs", e))?;
        if let Some(dir) = request.log_path.as_deref().and_then(Path::parent) {
            std::fs::create_dir_all(dir)
                .map_err(|e| BackendError::failed(format!("create log directory {}", dir.display()), e))?;
        }
        if let Some(path) = &container.cgroup {
            let cgroup = Cgroup::create(self.cgroups()?, path).map_err(|e| BackendError::failed("create cgroup", e))?;
            if let Some(resources) = &request.resources {
                cgroup.apply(resources).map_err(|e| BackendError::failed("apply limits", e))?;
            }
        }
        let user = crate::users::resolve(&request.process.user, &container.rootfs)?;
        let spec = container_spec(pod, container, request, user.clone());
        let created = runtime::create(&container.bundle, &spec, &self.self_exe, CREATE_TIMEOUT)
            .map_err(failed("start the container's monitor"))?;
        container.monitor_pid = created.monitor_pid;
        Ok(Created { user })
    }

    fn start_container(&self, handle: &ContainerHandle) -> Result<i64, BackendError> {
        runtime::start(&container_of(handle)?.bundle).map_err(failed("start the container"))
    }

    fn signal_container(&self, handle: &ContainerHandle, signal: Signal) -> Result<(), BackendError> {
        runtime::kill(&container_of(handle)?.bundle, signal).map_err(failed(format!("send {signal}")))
    }

    /// A process that is PID 1 of its namespace drops a signal it has no
    /// handler for; right after start, a shell may not have exec'd the
    /// program that installs one yet. So while the process has no SIGTERM
    /// handler the signal is sent again once the handler appears (a process
    /// that had one gets exactly one SIGTERM).
    fn stop_gracefully(
        &self,
        handle: &ContainerHandle,
        grace: Duration,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<Stopped, BackendError> {
        let bundle = &container_of(handle)?.bundle;
        let init = runtime::read_pid_file(&bundle.join(INIT_PID_FILE)).ok().map(|r| r.pid);
        let handled = || init.is_some_and(catches_sigterm);
        let mut delivered = handled();
        runtime::kill(bundle, Signal::SIGTERM).map_err(failed("send SIGTERM"))?;
        let deadline = Instant::now() + grace;
        loop {
            if wait_exited(bundle, Duration::from_millis(100).min(grace)) {
                return Ok(Stopped::Exited);
            }
            if abandoned() {
                return Ok(Stopped::Abandoned);
            }
            if !delivered && handled() {
                delivered = true;
                runtime::kill(bundle, Signal::SIGTERM).map_err(failed("send SIGTERM"))?;
            }
            if Instant::now() >= deadline {
                return Ok(Stopped::StillRunning);
            }
        }
    }

    fn container_state(&self, handle: &ContainerHandle) -> Result<RunState, BackendError> {
        let container = container_of(handle)?;
        if container.monitor_pid > 0 {
            runtime::reap(container.monitor_pid);
        }
        Ok(match runtime::state(&container.bundle) {
            Ok(State::Creating { .. }) => RunState::Creating,
            Ok(State::Created { .. }) => RunState::Created,
            Ok(State::Running { .. }) => RunState::Running,
            Ok(State::Exited(exit)) => {
                let oom_killed = exit.exit_code != 0 && exit.init_error.is_none() && self.oom_killed(container);
                RunState::Exited(ExitInfo {
                    exit_code: exit.exit_code,
                    started_at_ns: exit.started_at_ns,
                    finished_at_ns: exit.finished_at_ns,
                    start_error: exit.init_error,
                    oom_killed,
                })
            }
            Err(ContainerError::NotFound(bundle)) => {
                RunState::Gone(format!("its bundle {} is gone (was the node rebooted?)", bundle.display()))
            }
            Err(e) => return Err(BackendError::failed("read the container's state", e)),
        })
    }

    fn remove_container(&self, handle: &ContainerHandle) -> Result<(), BackendError> {
        let container = container_of(handle)?;
        if container.bundle.exists() {
            let _ = runtime::kill(&container.bundle, Signal::SIGKILL);
            wait_exited(&container.bundle, KILL_WAIT);
            runtime::delete(&container.bundle).map_err(failed("remove the bundle"))?;
        }
        if container.monitor_pid > 0 {
            runtime::reap(container.monitor_pid);
        }
        if let Some(path) = &container.cgroup {
            // Whatever the container process left running (its own children) goes too.
            let cgroup = Cgroup::open(self.cgroups()?, path).map_err(|e| BackendError::failed("open cgroup", e))?;
            if cgroup.exists() {
                cgroup.kill_all(Signal::SIGKILL).map_err(|e| BackendError::failed("kill the cgroup's processes", e))?;
                cgroup.delete().map_err(|e| BackendError::failed("remove cgroup", e))?;
            }
        }
        unmount_rootfs(&container.rootfs).map_err(|e| BackendError::failed("unmount the rootfs", e))?;
        match std::fs::remove_dir(&container.rootfs) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BackendError::failed(format!("remove {}", container.rootfs.display()), e))
            }
            _ => Ok(()),
        }
    }

    fn reopen_log(&self, handle: &ContainerHandle) -> Result<(), BackendError> {
        runtime::reopen_log(&container_of(handle)?.bundle, Duration::from_secs(5)).map_err(failed("reopen the log"))
    }

    fn update_resources(&self, handle: &ContainerHandle, resources: &Resources) -> Result<(), BackendError> {
        let container = container_of(handle)?;
        let path = container.cgroup.as_deref().ok_or_else(|| BackendError::BadState("it has no cgroup".into()))?;
        Cgroup::open(self.cgroups()?, path)
            .and_then(|cgroup| cgroup.apply(resources))
            .map_err(|e| BackendError::failed("apply limits", e))
    }

    fn container_usage(&self, handle: &ContainerHandle) -> Result<Option<ContainerUsage>, BackendError> {
        let container = container_of(handle)?;
        let (Ok(mode), Some(path)) = (self.cgroups.as_ref(), container.cgroup.as_deref()) else { return Ok(None) };
        let cgroup = Cgroup::open(mode, path).map_err(|e| BackendError::failed("open cgroup", e))?;
        if !cgroup.exists() {
            return Ok(None);
        }
        cgroup.stats().map(Some).map_err(|e| BackendError::failed("read cgroup statistics", e))
    }
}

impl NsBackend {
    fn oom_killed(&self, container: &NsContainer) -> bool {
        let (Ok(mode), Some(path)) = (self.cgroups.as_ref(), container.cgroup.as_deref()) else { return false };
        Cgroup::open(mode, path).and_then(|c| c.oom_killed()).unwrap_or(false)
    }
}

impl StreamRuntime for NsBackend {
    fn exec_sync<'a>(
        &'a self,
        handle: &'a ContainerHandle,
        request: ExecSyncRequest,
    ) -> BoxFuture<'a, Result<ExecSyncOutput, BackendError>> {
        Box::pin(async move {
            let container = container_of(handle)?;
            super::streams::exec_sync(&self.self_exe, &container.bundle, request).await
        })
    }

    fn exec<'a>(
        &'a self,
        handle: &'a ContainerHandle,
        request: ExecStart,
    ) -> BoxFuture<'a, Result<ProcessIo, BackendError>> {
        Box::pin(async move {
            let container = container_of(handle)?;
            super::streams::exec(&self.self_exe, &container.bundle, request).await
        })
    }

    fn attach<'a>(
        &'a self,
        handle: &'a ContainerHandle,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<ProcessIo, BackendError>> {
        Box::pin(async move { super::streams::attach(&container_of(handle)?.bundle, options).await })
    }

    fn port_forward<'a>(
        &'a self,
        handle: &'a PodHandle,
        port: u16,
    ) -> BoxFuture<'a, Result<DuplexStream, BackendError>> {
        Box::pin(async move {
            let netns = pod_of(handle)?.paths.net.clone();
            let stream = super::streams::connect_in(netns, port).await?;
            Ok(Box::new(stream) as DuplexStream)
        })
    }
}

impl Backend for NsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Namespaces
    }

    fn unavailable(&self) -> Option<String> {
        self.cgroups.as_ref().err().map(|why| format!("no usable cgroup hierarchy: {why}"))
    }

    fn features(&self) -> Features {
        // Recursive read-only mounts: every submount is remounted read-only
        // (crate::mounts). User namespaces are not implemented yet.
        Features { recursive_read_only_mounts: true, user_namespaces: false, host_namespaces: true }
    }
}

/// The bundle's `config.json`: the request, resolved against the pod's
/// namespaces and files and the mounted rootfs.
fn container_spec(
    pod: &NsPod,
    container: &NsContainer,
    request: &ContainerRequest,
    user: super::spec::UserSpec,
) -> ContainerSpec {
    let fs = &request.filesystem;
    let paths = &pod.paths;
    let mut rootfs = RootfsSpec::new(container.rootfs.clone());
    rootfs.readonly_rootfs = fs.readonly_rootfs;
    rootfs.privileged = fs.privileged;
    rootfs.masked_paths.clone_from(&fs.masked_paths);
    rootfs.readonly_paths.clone_from(&fs.readonly_paths);
    rootfs.mounts.clone_from(&fs.mounts);
    rootfs.devices.clone_from(&fs.devices);
    rootfs.shm = Some(paths.shm.clone());
    rootfs.hostname_file = Some(paths.hostname.clone());
    rootfs.hosts_file = Some(paths.hosts.clone());
    rootfs.resolv_file = Some(paths.resolv_conf.clone());
    let p = &request.process;
    let pid = match (request.pid, &paths.pid) {
        (PidMode::Node, _) => PidNamespace::Host,
        (PidMode::Pod, Some(path)) => PidNamespace::Pod(path.clone()),
        _ => PidNamespace::Container,
    };
    ContainerSpec {
        id: request.id.clone(),
        rootfs,
        process: ProcessSpec {
            args: p.args.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            user,
            terminal: p.terminal,
            stdin: p.stdin,
            stdin_once: p.stdin_once,
            no_new_privileges: p.no_new_privileges,
            capabilities: p.capabilities.clone(),
            seccomp: p.seccomp.clone(),
            apparmor_profile: p.apparmor_profile.clone(),
            rlimits: p.rlimits.clone(),
            oom_score_adj: p.oom_score_adj,
        },
        namespaces: NamespaceSpec { net: paths.net.clone(), ipc: paths.ipc.clone(), uts: paths.uts.clone(), pid },
        hostname: paths.uts.is_some().then(|| request.hostname.clone()).filter(|h| !h.is_empty()),
        cgroup: container.cgroup.clone(),
        sysctls: Default::default(),
        log_path: request.log_path.clone(),
    }
}

/// Whether `pid` has a handler for SIGTERM (bit 15 of SigCgt).
fn catches_sigterm(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// Polls until the bundle reports an exit (true) or `timeout` passes.
pub fn wait_exited(bundle: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match runtime::state(bundle) {
            Ok(State::Exited(_)) | Err(_) => return true,
            Ok(_) if Instant::now() >= deadline => return false,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
