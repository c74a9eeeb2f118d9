//! Container requests: create, start, signal, remove, state, ExecSync,
//! stats, resources.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crius_sandbox::backend::{ContainerRequest, ContainerRuntime, RootfsLayers, StreamRuntime};
use crius_sandbox::cgroups::Resources;
use guest_proto::message::{
    ContainerCreate, ContainerInfo, ErrorCode, ErrorReply, ExecSyncOutput, ExecSyncRequest, GuestReply,
    MAX_EXEC_SYNC_OUTPUT, Reply, Rootfs, StatsReply,
};
use guest_proto::output::OutputBuffer;
use nix::sys::signal::Signal;

use super::convert::{container_stats, parse_net_dev, pod_stats};
use super::{
    Container, Guest, Life, OUTPUT_CAPACITY, Output, backend_error, blocking, invalid, lock, now_ns, valid_id,
};

/// Frees a reserved container id when creation ends, however it ends.
struct Reservation<'a> {
    guest: &'a Guest,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.guest.creating).remove(&self.id);
    }
}

impl Guest {
    pub(super) async fn create_container(self: &Arc<Self>, create: ContainerCreate) -> Reply {
        let mut request: ContainerRequest = serde_json::from_value(create.spec).map_err(|e| {
            invalid(format!("container spec: {}", guest_proto::codec::truncate_utf8(&e.to_string(), 512)))
        })?;
        if !valid_id(&create.id) {
            return Err(invalid(format!(
                "invalid container id {:?}",
                guest_proto::codec::truncate_utf8(&create.id, 64)
            )));
        }
        if request.id != create.id {
            return Err(invalid(format!("the spec is for container {:?}, not {:?}", request.id, create.id)));
        }
        check_rootfs(&create.rootfs, &request.filesystem.rootfs)?;
        let pod = self.pod_handle()?;
        let _reservation = self.reserve(&create.id)?;
        let log_file = create.log.then(|| self.run_root.join("logs").join(format!("{}.log", create.id)));
        if let Some(file) = &log_file {
            // Left by an earlier container of this id.
            let _ = std::fs::remove_file(file);
        }
        request.log_path.clone_from(&log_file);
        let (terminal, stdin) = (request.process.terminal, request.process.stdin);
        let guest = Arc::clone(self);
        let handle = blocking(move || {
            let mut handle = guest.backend.plan_container(&pod, &request).map_err(|e| backend_error(&e))?;
            match guest.backend.create_container(&pod, &mut handle, &request) {
                Ok(_) => Ok(handle),
                Err(e) => {
                    // Undo what the runtime made before it failed.
                    if let Err(undo) = guest.backend.remove_container(&handle) {
                        tracing::warn!(id = %request.id, error = %crius_sandbox::error_report(&undo), "undo create");
                    }
                    Err(backend_error(&e))
                }
            }
        })
        .await?;
        let container = Arc::new(Container {
            id: create.id.clone(),
            handle,
            log_file,
            terminal,
            stdin,
            created_at_ns: now_ns(),
            life: Mutex::new(Life::default()),
            output: Mutex::new(Output { buffer: OutputBuffer::new(OUTPUT_CAPACITY), exit: None }),
        });
        lock(&self.containers).insert(create.id.clone(), Arc::clone(&container));
        let watcher = crate::watch::spawn(Arc::clone(self), Arc::clone(&container));
        lock(&container.life).watcher = Some(watcher);
        tracing::info!(id = %create.id, "container created");
        Ok(GuestReply::Ok)
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, ErrorReply> {
        let containers = lock(&self.containers);
        let mut creating = lock(&self.creating);
        if containers.contains_key(id) || !creating.insert(id.to_owned()) {
            return Err(ErrorReply::new(ErrorCode::AlreadyExists, format!("container {id:?} already exists")));
        }
        Ok(Reservation { guest: self, id: id.to_owned() })
    }

    pub(super) async fn start_container(self: &Arc<Self>, id: &str) -> Reply {
        let container = self.container(id)?;
        let (guest, c) = (Arc::clone(self), Arc::clone(&container));
        let started = blocking(move || guest.backend.start_container(&c.handle).map_err(|e| backend_error(&e))).await?;
        let started_at_ns = u64::try_from(started).unwrap_or(0);
        lock(&container.life).started_at_ns = started_at_ns;
        tracing::info!(%id, "container started");
        Ok(GuestReply::Started { started_at_ns })
    }

    pub(super) async fn signal_container(self: &Arc<Self>, id: &str, signal: i32) -> Reply {
        let signal = Signal::try_from(signal).map_err(|_| invalid(format!("invalid signal {signal}")))?;
        let container = self.container(id)?;
        let guest = Arc::clone(self);
        blocking(move || guest.backend.signal_container(&container.handle, signal).map_err(|e| backend_error(&e)))
            .await?;
        Ok(GuestReply::Ok)
    }

    /// Kills and removes a container; removing one that is gone is no error.
    pub(super) async fn remove_container(self: &Arc<Self>, id: &str) -> Reply {
        let Some(container) = lock(&self.containers).get(id).cloned() else { return Ok(GuestReply::Ok) };
        let (guest, c) = (Arc::clone(self), Arc::clone(&container));
        blocking(move || guest.backend.remove_container(&c.handle).map_err(|e| backend_error(&e))).await?;
        if let Some(watcher) = lock(&container.life).watcher.take() {
            watcher.abort();
        }
        lock(&self.containers).remove(id);
        if let Some(file) = &container.log_file {
            let _ = std::fs::remove_file(file);
            let _ = std::fs::remove_file(crate::watch::rotating_path(file));
        }
        self.changed();
        tracing::info!(%id, "container removed");
        Ok(GuestReply::Ok)
    }

    pub(super) async fn container_state(self: &Arc<Self>, id: &str) -> Reply {
        let container = self.container(id)?;
        let guest = Arc::clone(self);
        blocking(move || {
            let state = guest.backend.container_state(&container.handle).map_err(|e| backend_error(&e))?;
            Ok(GuestReply::State(container.status(&state)))
        })
        .await
    }

    pub(super) async fn list_containers(self: &Arc<Self>) -> Reply {
        let guest = Arc::clone(self);
        blocking(move || {
            let mut containers = Vec::new();
            for c in guest.containers() {
                let state = guest.backend.container_state(&c.handle).map_err(|e| backend_error(&e))?;
                containers.push(ContainerInfo { id: c.id.clone(), status: c.status(&state) });
            }
            Ok(GuestReply::Containers { containers })
        })
        .await
    }

    pub(super) async fn exec_sync(self: &Arc<Self>, request: ExecSyncRequest) -> Reply {
        let container = self.container(&request.id)?;
        if !request.env_extra.is_empty() {
            return Err(ErrorReply::new(ErrorCode::Unsupported, "env_extra is not supported for ExecSync"));
        }
        if request.args.is_empty() {
            return Err(invalid("ExecSync needs a command"));
        }
        let timeout = (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms));
        let exec = crius_sandbox::backend::ExecSyncRequest { args: request.args, timeout };
        let output = self.backend.exec_sync(&container.handle, exec).await.map_err(|e| backend_error(&e))?;
        let cap = request.max_output.min(MAX_EXEC_SYNC_OUTPUT) as usize;
        let truncated = output.stdout.len() > cap || output.stderr.len() > cap;
        let keep = |mut bytes: Vec<u8>| {
            bytes.truncate(cap);
            bytes
        };
        Ok(GuestReply::ExecSyncResult(ExecSyncOutput {
            exit_code: output.exit_code,
            stdout: keep(output.stdout),
            stderr: keep(output.stderr),
            truncated,
        }))
    }

    /// Usage of the containers asked for (every one for an empty list) and
    /// of the pod: the sum of all its containers' cgroups (the guest agent
    /// itself is not counted), with the interfaces of the guest's network
    /// namespace.
    pub(super) async fn stats(self: &Arc<Self>, ids: Vec<String>) -> Reply {
        let guest = Arc::clone(self);
        blocking(move || {
            let mut asked = Vec::new();
            let mut all = Vec::new();
            for c in guest.containers() {
                let usage = guest.backend.container_usage(&c.handle).map_err(|e| backend_error(&e))?;
                let Some(usage) = usage else { continue };
                let stats = container_stats(&c.id, &usage);
                if ids.is_empty() || ids.contains(&c.id) {
                    asked.push(stats.clone());
                }
                all.push(stats);
            }
            let network = std::fs::read_to_string("/proc/net/dev").map(|t| parse_net_dev(&t)).unwrap_or_default();
            Ok(GuestReply::Stats(StatsReply {
                timestamp_ns: now_ns(),
                containers: asked,
                pod: pod_stats(&all, network),
            }))
        })
        .await
    }

    pub(super) async fn update_resources(self: &Arc<Self>, id: &str, resources: serde_json::Value) -> Reply {
        let resources: Resources = serde_json::from_value(resources)
            .map_err(|e| invalid(format!("resources: {}", guest_proto::codec::truncate_utf8(&e.to_string(), 512))))?;
        let container = self.container(id)?;
        let guest = Arc::clone(self);
        blocking(move || guest.backend.update_resources(&container.handle, &resources).map_err(|e| backend_error(&e)))
            .await?;
        Ok(GuestReply::Ok)
    }
}

/// The `rootfs` of CreateContainer repeats the spec's layers: when it is
/// given, it must agree with them (the spec's, with its work directory, is
/// what is mounted).
fn check_rootfs(rootfs: &Rootfs, layers: &RootfsLayers) -> Result<(), ErrorReply> {
    if rootfs.layers.is_empty() && rootfs.writable.is_empty() {
        return Ok(());
    }
    let given: Vec<PathBuf> = rootfs.layers.iter().map(PathBuf::from).collect();
    if given != layers.layers || Path::new(&rootfs.writable) != layers.upper {
        return Err(invalid("rootfs does not match the spec's filesystem.rootfs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rootfs_must_repeat_the_specs_layers() {
        let layers = RootfsLayers { layers: vec!["/l/1".into(), "/l/2".into()], upper: "/u".into(), work: "/w".into() };
        let rootfs = |layers: &[&str], writable: &str| Rootfs {
            layers: layers.iter().map(|l| (*l).to_owned()).collect(),
            writable: writable.to_owned(),
        };
        assert!(check_rootfs(&rootfs(&[], ""), &layers).is_ok(), "empty: the spec's");
        assert!(check_rootfs(&rootfs(&["/l/1", "/l/2"], "/u"), &layers).is_ok());
        assert!(check_rootfs(&rootfs(&["/l/2", "/l/1"], "/u"), &layers).is_err());
        assert!(check_rootfs(&rootfs(&["/l/1", "/l/2"], "/x"), &layers).is_err());
    }
}
