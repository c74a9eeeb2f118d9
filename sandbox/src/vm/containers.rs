//! The KVM backend's containers and streams: each call becomes a guest
//! protocol request; output comes back as events and is written to the CRI
//! log on the node.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use guest_proto::message::{
    AttachRequest, ContainerCreate, ContainerStatus, ErrorCode, ErrorReply, ExecRequest,
    ExecSyncRequest as GuestExecSync, GuestReply, HostRequest, OutputBatch, Rootfs,
};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::conn::Connection;
use super::logs::GuestLog;
use super::{CONTAINER_VERSION, KvmBackend, Link, VmContainer, VmPod, pod_of, streams};
use crate::backend::{
    Backend, BackendError, BackendKind, BoxFuture, ContainerHandle, ContainerRequest, ContainerRuntime, ContainerUsage,
    Created, DuplexStream, ExecStart, ExecSyncOutput, ExecSyncRequest, ExitInfo, Features, NetworkHook, Outcome,
    PodHandle, PodRequest, PodRuntime, ProcessIo, RunState, Stopped, StreamOptions, StreamRuntime,
};
use crate::cgroups::Resources;

/// A guest's error reply as a backend error.
pub(super) fn guest_error(request: &str, error: ErrorReply) -> BackendError {
    let message = format!("guest agent ({request}): {}", error.message);
    match error.code {
        ErrorCode::StartFailed => BackendError::StartFailed(error.message),
        ErrorCode::InvalidArgument => BackendError::InvalidArgument { field: "container", reason: message },
        ErrorCode::DeadlineExceeded => BackendError::Timeout(message),
        ErrorCode::NotFound | ErrorCode::AlreadyExists | ErrorCode::Unsupported => BackendError::BadState(message),
        ErrorCode::Internal => BackendError::BadState(message),
    }
}

fn container_of(handle: &ContainerHandle) -> Result<&VmContainer, BackendError> {
    match handle {
        ContainerHandle::Vm(c) if c.version <= CONTAINER_VERSION => Ok(c),
        ContainerHandle::Vm(c) => {
            Err(BackendError::NewerVersion { what: "container", found: c.version, supported: CONTAINER_VERSION })
        }
        ContainerHandle::Namespaces(_) => Err(BackendError::WrongBackend { backend: "kvm", found: "namespaces" }),
    }
}

/// What the node keeps of a container's log: where it goes.
#[derive(Debug, Serialize, Deserialize)]
struct LogMeta {
    log_path: PathBuf,
}

fn log_files(pod: &VmPod, id: &str) -> (PathBuf, PathBuf) {
    let dir = pod.state_dir.join("logs");
    (dir.join(format!("{id}.json")), dir.join(format!("{id}.checkpoint")))
}

/// Opens the container's log on the node and subscribes to its output from
/// the checkpoint.
async fn follow(link: &Link, conn: &Connection, pod: &VmPod, id: &str, log_path: PathBuf) -> Result<(), BackendError> {
    let (_, checkpoint) = log_files(pod, id);
    let log = GuestLog::open(&log_path, &checkpoint).map_err(|e| BackendError::failed("open the container log", e))?;
    let from_offset = log.offset();
    link.logs.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), log);
    let request = HostRequest::SubscribeOutput { id: id.to_owned(), from_offset };
    match conn.request(request).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(guest_error("subscribe_output", e)),
        Err(e) => Err(BackendError::failed("subscribe to the container's output", e)),
    }
}

/// After a (re)connection: every container whose log this node keeps
/// follows its output again from its checkpoint.
pub(super) async fn resume_logs(link: &Link, conn: &Connection, pod: &VmPod) {
    let Ok(entries) = std::fs::read_dir(pod.state_dir.join("logs")) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let (Some(id), Some("json")) =
            (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str()))
        else {
            continue;
        };
        let meta = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<LogMeta>(&b).ok());
        let Some(meta) = meta else { continue };
        if let Err(e) = follow(link, conn, pod, id, meta.log_path).await {
            tracing::warn!(container_id = %id, error = %crate::error_report(&e), "container log not resumed");
        }
    }
}

/// Writes a batch of output to the container's log and acknowledges it.
pub(super) async fn write_output(link: &Arc<Link>, conn: &Connection, batch: OutputBatch) {
    let written = {
        let mut logs = link.logs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = logs.get_mut(&batch.id) else { return };
        match log.write(&batch.records) {
            Ok(lost) => {
                if lost > 0 {
                    tracing::warn!(container_id = %batch.id, lost, "guest dropped container output nobody read");
                }
                Some(log.offset())
            }
            Err(e) => {
                tracing::warn!(container_id = %batch.id, error = %crate::error_report(&e), "container log not written");
                None
            }
        }
    };
    if let Some(offset) = written {
        let conn = conn.clone();
        tokio::spawn(async move {
            let _ = conn.request(HostRequest::AckOutput { id: batch.id, offset }).await;
        });
    }
}

impl KvmBackend {
    fn state(&self, container: &VmContainer) -> Result<RunState, BackendError> {
        let request = HostRequest::ContainerState { id: container.id.clone() };
        match self.block(self.call(&container.pod, request)) {
            Ok(GuestReply::State(status)) => Ok(match status {
                ContainerStatus::Created { .. } => RunState::Created,
                ContainerStatus::Running { .. } => RunState::Running,
                ContainerStatus::Exited(exit) => RunState::Exited(ExitInfo {
                    exit_code: exit.exit_code,
                    started_at_ns: i64::try_from(exit.started_at_ns).unwrap_or(0),
                    finished_at_ns: i64::try_from(exit.finished_at_ns).unwrap_or(0),
                    start_error: (exit.reason == "StartError").then_some(exit.message),
                    oom_killed: exit.oom_killed,
                }),
            }),
            Ok(other) => Err(BackendError::BadState(format!("unexpected guest reply {}", other.kind()))),
            Err(_) if !super::launch::guest_alive(&container.pod) => {
                Ok(RunState::Gone("its pod's guest agent is gone".into()))
            }
            Err(e) => Err(e),
        }
    }
}

impl PodRuntime for KvmBackend {
    fn plan_pod(&self, request: &PodRequest) -> Result<PodHandle, BackendError> {
        KvmBackend::plan_pod(self, request)
    }

    fn run_pod(&self, pod: &PodHandle, request: &PodRequest, network: NetworkHook<'_>) -> Result<(), BackendError> {
        KvmBackend::run_pod(self, pod, request, network)
    }

    fn stop_pod(&self, pod: &PodHandle) -> Result<(), BackendError> {
        // The guest keeps running (its containers are stopped) until the
        // pod is removed, so its containers' statuses stay readable.
        pod_of(pod).map(drop)
    }

    fn remove_pod(&self, pod: &PodHandle) -> Result<(), BackendError> {
        KvmBackend::remove_pod(self, pod)
    }

    fn pod_intact(&self, pod: &PodHandle) -> bool {
        KvmBackend::pod_intact(self, pod)
    }
}

impl ContainerRuntime for KvmBackend {
    fn plan_container(&self, pod: &PodHandle, request: &ContainerRequest) -> Result<ContainerHandle, BackendError> {
        Ok(ContainerHandle::Vm(VmContainer {
            version: CONTAINER_VERSION,
            id: request.id.clone(),
            pod: Box::new(pod_of(pod)?.clone()),
            log_path: request.log_path.clone(),
        }))
    }

    fn create_container(
        &self,
        pod: &PodHandle,
        handle: &mut ContainerHandle,
        request: &ContainerRequest,
    ) -> Result<Created, BackendError> {
        let pod = pod_of(pod)?;
        let container = container_of(handle)?;
        let layers = &request.filesystem.rootfs;
        let create = ContainerCreate {
            id: request.id.clone(),
            spec: serde_json::to_value(request).map_err(|e| BackendError::failed("encode the container request", e))?,
            rootfs: Rootfs {
                layers: layers.layers.iter().map(|p| p.display().to_string()).collect(),
                writable: layers.upper.display().to_string(),
            },
            log: request.log_path.is_some(),
        };
        // Who the process runs as, read from the image's layers on the node
        // (the guest resolves it the same way in its own view of them).
        let user = crate::users::resolve_in_layers(&request.process.user, &layers.layers)?;
        self.block(async {
            self.call(pod, HostRequest::CreateContainer(create)).await?;
            if let Some(log_path) = &container.log_path {
                let (meta, _) = log_files(pod, &container.id);
                if let Some(dir) = meta.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| BackendError::failed("create the log state dir", e))?;
                }
                let json = serde_json::to_vec(&LogMeta { log_path: log_path.clone() })
                    .map_err(|e| BackendError::failed("encode log state", e))?;
                std::fs::write(&meta, json).map_err(|e| BackendError::failed("write log state", e))?;
                if let Some(dir) = log_path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| BackendError::failed(format!("create log directory {}", dir.display()), e))?;
                }
                let conn = self.connection(pod).await?;
                follow(&self.link(&pod.id), &conn, pod, &container.id, log_path.clone()).await?;
            }
            Ok::<_, BackendError>(())
        })?;
        Ok(Created { user })
    }

    fn start_container(&self, handle: &ContainerHandle) -> Result<i64, BackendError> {
        let container = container_of(handle)?;
        match self.block(self.call(&container.pod, HostRequest::StartContainer { id: container.id.clone() }))? {
            GuestReply::Started { started_at_ns } => Ok(i64::try_from(started_at_ns).unwrap_or(i64::MAX)),
            other => Err(BackendError::BadState(format!("unexpected guest reply {}", other.kind()))),
        }
    }

    fn signal_container(&self, handle: &ContainerHandle, signal: Signal) -> Result<(), BackendError> {
        let container = container_of(handle)?;
        let request = HostRequest::SignalContainer { id: container.id.clone(), signal: signal as i32 };
        self.block(self.call(&container.pod, request)).map(drop)
    }

    fn stop_gracefully(
        &self,
        handle: &ContainerHandle,
        grace: Duration,
        abandoned: &dyn Fn() -> bool,
    ) -> Result<Stopped, BackendError> {
        let container = container_of(handle)?;
        self.signal_container(handle, Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        loop {
            if matches!(self.state(container)?, RunState::Exited(_) | RunState::Gone(_)) {
                return Ok(Stopped::Exited);
            }
            if abandoned() {
                return Ok(Stopped::Abandoned);
            }
            if Instant::now() >= deadline {
                return Ok(Stopped::StillRunning);
            }
            std::thread::sleep(Duration::from_millis(100).min(grace));
        }
    }

    fn container_state(&self, handle: &ContainerHandle) -> Result<RunState, BackendError> {
        self.state(container_of(handle)?)
    }

    fn remove_container(&self, handle: &ContainerHandle) -> Result<(), BackendError> {
        let container = container_of(handle)?;
        let pod = &container.pod;
        if super::launch::guest_alive(pod) {
            let id = container.id.clone();
            self.block(async {
                let _ = self.call(pod, HostRequest::SignalContainer { id: id.clone(), signal: libc::SIGKILL }).await;
                match self.call(pod, HostRequest::RemoveContainer { id }).await {
                    Err(BackendError::BadState(why)) if why.contains("NotFound") || why.contains("not found") => Ok(()),
                    other => other.map(drop),
                }
            })?;
        }
        self.link(&pod.id).logs.lock().unwrap_or_else(PoisonError::into_inner).remove(&container.id);
        let (meta, checkpoint) = log_files(pod, &container.id);
        for file in [meta, checkpoint] {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(BackendError::failed(format!("remove {}", file.display()), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn reopen_log(&self, handle: &ContainerHandle) -> Result<(), BackendError> {
        let container = container_of(handle)?;
        let link = self.link(&container.pod.id);
        let mut logs = link.logs.lock().unwrap_or_else(PoisonError::into_inner);
        match logs.get_mut(&container.id) {
            Some(log) => log.reopen().map_err(|e| BackendError::failed("reopen the container log", e)),
            None => Ok(()),
        }
    }

    fn update_resources(&self, handle: &ContainerHandle, resources: &Resources) -> Result<(), BackendError> {
        let container = container_of(handle)?;
        let resources = serde_json::to_value(resources).map_err(|e| BackendError::failed("encode resources", e))?;
        let request = HostRequest::UpdateResources { id: container.id.clone(), resources };
        self.block(self.call(&container.pod, request)).map(drop)
    }

    fn container_usage(&self, handle: &ContainerHandle) -> Result<Option<ContainerUsage>, BackendError> {
        let container = container_of(handle)?;
        let request = HostRequest::Stats { ids: vec![container.id.clone()] };
        let GuestReply::Stats(stats) = self.block(self.call(&container.pod, request))? else {
            return Err(BackendError::BadState("unexpected guest reply to stats".into()));
        };
        Ok(stats.containers.into_iter().find(|c| c.id == container.id).map(|c| ContainerUsage {
            cpu_usage_ns: c.cpu.usage_ns,
            memory_usage_bytes: c.memory.usage_bytes,
            memory_working_set_bytes: c.memory.working_set_bytes,
            memory_rss: c.memory.rss_bytes,
            memory_limit: c.memory.available_bytes.map(|a| a.saturating_add(c.memory.working_set_bytes)),
            pids_current: c.pids,
            ..ContainerUsage::default()
        }))
    }
}

impl StreamRuntime for KvmBackend {
    fn exec_sync<'a>(
        &'a self,
        handle: &'a ContainerHandle,
        request: ExecSyncRequest,
    ) -> BoxFuture<'a, Result<ExecSyncOutput, BackendError>> {
        Box::pin(async move {
            let container = container_of(handle)?;
            let timeout_ms = request.timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            let exec = GuestExecSync {
                id: container.id.clone(),
                args: request.args,
                env_extra: Vec::new(),
                timeout_ms,
                max_output: guest_proto::message::MAX_EXEC_SYNC_OUTPUT,
            };
            match self.call(&container.pod, HostRequest::ExecSync(exec)).await? {
                GuestReply::ExecSyncResult(out) => {
                    Ok(ExecSyncOutput { exit_code: out.exit_code, stdout: out.stdout, stderr: out.stderr })
                }
                other => Err(BackendError::BadState(format!("unexpected guest reply {}", other.kind()))),
            }
        })
    }

    fn exec<'a>(
        &'a self,
        handle: &'a ContainerHandle,
        request: ExecStart,
    ) -> BoxFuture<'a, Result<ProcessIo, BackendError>> {
        Box::pin(async move {
            let container = container_of(handle)?;
            let options = request.options;
            // The guest's exec sets TERM for a terminal itself, as on the node.
            let env_extra = Vec::new();
            let io = self.open_session(&container.pod, options).await?;
            let exec = ExecRequest {
                id: container.id.clone(),
                args: request.args,
                env_extra,
                tty: options.tty,
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
                stream: io.stream,
                stderr_stream: io.stderr_stream,
            };
            self.finish_session(&container.pod, io, HostRequest::Exec(exec), true).await
        })
    }

    fn attach<'a>(
        &'a self,
        handle: &'a ContainerHandle,
        options: StreamOptions,
    ) -> BoxFuture<'a, Result<ProcessIo, BackendError>> {
        Box::pin(async move {
            let container = container_of(handle)?;
            let io = self.open_session(&container.pod, options).await?;
            let attach = AttachRequest {
                id: container.id.clone(),
                stdin: options.stdin,
                stdout: options.stdout,
                stderr: options.stderr,
                stream: io.stream,
                stderr_stream: io.stderr_stream,
            };
            self.finish_session(&container.pod, io, HostRequest::Attach(attach), false).await
        })
    }

    fn port_forward<'a>(
        &'a self,
        handle: &'a PodHandle,
        port: u16,
    ) -> BoxFuture<'a, Result<DuplexStream, BackendError>> {
        Box::pin(async move {
            let pod = pod_of(handle)?;
            let conn = self.connection(pod).await?;
            let (stream, inbound) = conn.open_stream().await.map_err(|e| BackendError::failed("open a stream", e))?;
            let pipe = streams::duplex(conn, stream, inbound);
            self.call(pod, HostRequest::PortForward { port, stream }).await?;
            Ok(Box::new(pipe) as DuplexStream)
        })
    }
}

/// The streams of an exec or attach, opened before the request names them.
struct SessionStreams {
    conn: Connection,
    stream: guest_proto::codec::StreamId,
    inbound: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    stderr_stream: Option<guest_proto::codec::StreamId>,
    stderr_inbound: Option<tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>>,
    options: StreamOptions,
}

impl KvmBackend {
    async fn open_session(&self, pod: &VmPod, options: StreamOptions) -> Result<SessionStreams, BackendError> {
        let conn = self.connection(pod).await?;
        let open = |conn: &Connection| {
            let conn = conn.clone();
            async move { conn.open_stream().await.map_err(|e| BackendError::failed("open a stream", e)) }
        };
        let (stream, inbound) = open(&conn).await?;
        let (stderr_stream, stderr_inbound) = if options.stderr && !options.tty {
            let (id, rx) = open(&conn).await?;
            (Some(id), Some(rx))
        } else {
            (None, None)
        };
        Ok(SessionStreams { conn, stream, inbound, stderr_stream, stderr_inbound, options })
    }

    /// Sends the exec or attach request and hands the streams over as a
    /// process: an exec ends with the guest's `ExecExited`, an attach when
    /// the container's output ends.
    async fn finish_session(
        &self,
        pod: &VmPod,
        io: SessionStreams,
        request: HostRequest,
        exec: bool,
    ) -> Result<ProcessIo, BackendError> {
        let SessionStreams { conn, stream, inbound, stderr_stream, stderr_inbound, options } = io;
        let exit = exec.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.link(&pod.id).exec_exits.lock().unwrap_or_else(PoisonError::into_inner).insert(stream, tx);
            rx
        });
        if let Err(e) = self.call(pod, request).await {
            conn.reset_stream(stream);
            if let Some(id) = stderr_stream {
                conn.reset_stream(id);
            }
            return Err(e);
        }
        let (stdout, output_end) = streams::reader_with_end(conn.clone(), stream, inbound);
        let stderr = stderr_stream.zip(stderr_inbound).map(|(id, rx)| streams::reader(conn.clone(), id, rx));
        let stdin = options.stdin.then(|| streams::writer(conn.clone(), stream));
        if !options.stdin {
            conn.close_stream(stream);
        }
        let resize = options.tty.then(|| {
            let conn = conn.clone();
            Box::new(move |cols: u16, rows: u16| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let _ = conn.request(HostRequest::Resize { stream, rows, cols }).await;
                });
            }) as crate::backend::ResizeFn
        });
        let guard = StreamGuard { conn: conn.clone(), streams: [Some(stream), stderr_stream] };
        let wait = Box::pin(async move {
            let _guard = guard;
            match exit {
                Some(exit) => match exit.await {
                    Ok(code) => Outcome::Exited(code),
                    Err(_) => Outcome::Failed("the guest agent connection ended".into()),
                },
                None => {
                    // Attach: the session ends with the container's output.
                    let _ = output_end.await;
                    Outcome::Exited(0)
                }
            }
        });
        Ok(ProcessIo {
            stdin: stdin.map(|s| Box::new(s) as crate::backend::Input),
            stdout: options.stdout.then(|| Box::new(stdout) as crate::backend::Output),
            stderr: stderr.map(|s| Box::new(s) as crate::backend::Output),
            resize,
            wait,
        })
    }
}

/// Resets a session's streams when the session is dropped (the client went
/// away): the guest then ends the exec's process.
struct StreamGuard {
    conn: Connection,
    streams: [Option<guest_proto::codec::StreamId>; 2],
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        for stream in self.streams.iter().flatten() {
            self.conn.reset_stream(*stream);
        }
    }
}

impl Backend for KvmBackend {
    fn kind(&self) -> BackendKind {
        KvmBackend::kind(self)
    }

    fn unavailable(&self) -> Option<String> {
        if let Err(why) = &self.cgroups {
            return Some(format!("no usable cgroup hierarchy: {why}"));
        }
        if self.machine == super::Machine::Kvm {
            return Some("the kvm machine (crius's VMM) is not built into this crius yet".into());
        }
        (!self.guest_binary.is_file()).then(|| {
            format!("the guest agent {} is missing (build it: cargo build -p crius-guest)", self.guest_binary.display())
        })
    }

    fn features(&self) -> Features {
        Features { recursive_read_only_mounts: true, user_namespaces: false, host_namespaces: false }
    }
}
