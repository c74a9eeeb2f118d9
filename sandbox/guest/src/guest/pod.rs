//! SetupPod and Shutdown: the guest's one pod.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crius_sandbox::backend::{ContainerRuntime, DnsSpec, PodNamespaces, PodRequest, PodRuntime, RunState};
use guest_proto::message::{ErrorCode, ErrorReply, GuestReply, HostsEntry, PodSetup, Reply};

use super::{Guest, PodState, backend_error, blocking, invalid, lock};
use crate::netconf::NetError;

/// The id of the guest's pod (its directory under the run root).
const POD_ID: &str = "guest";
/// How long Shutdown lets each container handle SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Guest {
    /// Configures the pod: hostname, sysctls, resolv.conf, hosts. Sending
    /// the same setup again is a no-op; another one is refused.
    pub(super) async fn setup_pod(self: &Arc<Self>, setup: PodSetup) -> Reply {
        if let Some(pod) = lock(&self.pod).as_ref() {
            return if pod.setup == setup {
                Ok(GuestReply::Ok)
            } else {
                Err(ErrorReply::new(ErrorCode::AlreadyExists, "the pod is already set up, with other settings"))
            };
        }
        if self.kvm_test && !setup.interfaces.is_empty() {
            let why = "kvm-test runs in the pod's network namespace, which the host configures: send no interfaces";
            return Err(ErrorReply::new(ErrorCode::Unsupported, why));
        }
        check_hosts(&setup.hosts_entries)?;
        let all_own = PodNamespaces { net: true, ipc: true, uts: true, pid: true };
        crius_sandbox::ns::pod::check_sysctls(&setup.sysctls, all_own).map_err(|e| invalid(e.to_string()))?;
        let guest = Arc::clone(self);
        let handle = blocking(move || guest.make_pod(&setup).map(|handle| (handle, setup))).await;
        let (handle, setup) = handle?;
        *lock(&self.pod) = Some(PodState { handle, setup });
        Ok(GuestReply::Ok)
    }

    fn make_pod(&self, setup: &PodSetup) -> Result<crius_sandbox::backend::PodHandle, ErrorReply> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| ErrorReply::new(ErrorCode::Internal, format!("{what}: {e}"));
        if !setup.hostname.is_empty() {
            nix::unistd::sethostname(&setup.hostname).map_err(|e| failed("set the hostname", &e))?;
        }
        crate::netconf::configure(&setup.interfaces).map_err(|e| match e {
            NetError::Invalid(_) | NetError::NoSuchMac(_) => invalid(e.to_string()),
            e => failed("configure the network", &crius_sandbox::error_report(&e)),
        })?;
        write_sysctls(&setup.sysctls).map_err(|e| failed("write sysctls", &e))?;
        let request = PodRequest {
            id: POD_ID.to_owned(),
            hostname: setup.hostname.clone(),
            dns: DnsSpec {
                servers: setup.dns.servers.iter().map(ToString::to_string).collect(),
                searches: setup.dns.searches.clone(),
                options: setup.dns.options.clone(),
            },
            // The guest's own network, IPC and UTS namespaces are the pod's; a
            // PID namespace with a pod init is made for the containers that
            // share the pod's (as on the node).
            namespaces: PodNamespaces { net: false, ipc: false, uts: false, pid: true },
            sysctls: BTreeMap::new(),
            cgroup: None,
        };
        let handle = self.backend.plan_pod(&request).map_err(|e| backend_error(&e))?;
        self.backend.run_pod(&handle, &request, &mut |_| Ok(())).map_err(|e| backend_error(&e))?;
        if !setup.hosts_entries.is_empty() {
            let crius_sandbox::backend::PodHandle::Namespaces(pod) = &handle else {
                return Err(failed("plan the pod", &std::io::Error::other("not a namespace pod")));
            };
            if let Err(e) = append_hosts(&pod.paths.hosts, &setup.hosts_entries) {
                let _ = self.backend.remove_pod(&handle);
                return Err(failed("write the hosts file", &e));
            }
        }
        Ok(handle)
    }

    /// Stops and removes every container and the pod: SIGTERM, a grace
    /// period, then SIGKILL. Failures are logged; what could not be removed
    /// is reported in the error.
    pub async fn shutdown(self: &Arc<Self>) -> Result<(), ErrorReply> {
        let mut stops = Vec::new();
        for container in self.containers() {
            let guest = Arc::clone(self);
            stops.push(tokio::task::spawn_blocking(move || {
                // Only a running process can handle SIGTERM: a created one waits for its start.
                let running = matches!(guest.backend.container_state(&container.handle), Ok(RunState::Running));
                let never = || false;
                if !running {
                    return;
                }
                if let Err(e) = guest.backend.stop_gracefully(&container.handle, SHUTDOWN_GRACE, &never) {
                    tracing::debug!(id = %container.id, error = %crius_sandbox::error_report(&e), "graceful stop");
                }
            }));
        }
        for stop in stops {
            let _ = stop.await;
        }
        let mut problems = Vec::new();
        for container in self.containers() {
            if let Err(e) = self.remove_container(&container.id).await {
                problems.push(format!("container {}: {}", container.id, e.message));
            }
        }
        let pod = lock(&self.pod).take();
        if let Some(pod) = pod {
            let guest = Arc::clone(self);
            let removed = blocking(move || guest.backend.remove_pod(&pod.handle).map_err(|e| backend_error(&e))).await;
            if let Err(e) = removed {
                problems.push(format!("pod: {}", e.message));
            }
        }
        remove_empty_dirs(&self.run_root);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ErrorReply::new(ErrorCode::Internal, format!("shutdown left: {}", problems.join("; "))))
        }
    }
}

/// Writes sysctls in the guest's namespaces (checked before).
fn write_sysctls(sysctls: &BTreeMap<String, String>) -> std::io::Result<()> {
    for (key, value) in sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Host names in an /etc/hosts line: no whitespace, no `#`, not empty.
fn check_hosts(entries: &[HostsEntry]) -> Result<(), ErrorReply> {
    for entry in entries {
        if entry.names.is_empty() {
            return Err(invalid(format!("hosts entry for {} has no names", entry.ip)));
        }
        for name in &entry.names {
            let bad = name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_whitespace() || c == '#');
            if bad {
                return Err(invalid(format!("invalid host name {:?}", guest_proto::codec::truncate_utf8(name, 64))));
            }
        }
    }
    Ok(())
}

/// The /etc/hosts lines of `entries`.
pub(super) fn hosts_lines(entries: &[HostsEntry]) -> String {
    entries.iter().map(|e| format!("{}\t{}\n", e.ip, e.names.join(" "))).collect()
}

fn append_hosts(path: &Path, entries: &[HostsEntry]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(hosts_lines(entries).as_bytes())
}

/// Removes the run root's directories that are empty (never anything that
/// may be a mount point with files below it).
fn remove_empty_dirs(run_root: &Path) {
    if let Ok(entries) = std::fs::read_dir(run_root.join("logs")) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for dir in ["logs", "containers", "rootfs", "pods", ""] {
        let _ = std::fs::remove_dir(run_root.join(dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_entries_are_checked_and_written_as_lines() {
        let entry = |names: &[&str]| HostsEntry {
            ip: "10.0.0.7".parse().expect("ip"),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        };
        assert!(check_hosts(&[entry(&["db", "db.local"])]).is_ok());
        for bad in [vec![], vec![""], vec!["a b"], vec!["a\nb"], vec!["x#y"]] {
            let err = check_hosts(&[entry(&bad)]).expect_err("refused");
            assert_eq!(err.code, ErrorCode::InvalidArgument, "{bad:?}");
        }
        assert_eq!(hosts_lines(&[entry(&["db", "db.local"])]), "10.0.0.7\tdb db.local\n");
    }
}
