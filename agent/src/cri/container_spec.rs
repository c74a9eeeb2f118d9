//! CRI ContainerConfig + image config + pod → the backend-neutral
//! `ContainerRequest`. Pure translation: names in the image's passwd and
//! group files are looked up by the backend, which has the rootfs.

use std::path::{Path, PathBuf};

use cri_api::v1::security_profile::ProfileType;
use cri_api::v1::{
    ContainerConfig, LinuxContainerSecurityContext, MountPropagation, NamespaceMode, SupplementalGroupsPolicy,
};
use crius_sandbox::backend::{
    CapabilitySpec, ContainerRequest, FilesystemRequest, PidMode, ProcessRequest, RootfsLayers, UserRequest,
};
use crius_sandbox::mounts::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, DeviceSpec, MountSpec, Propagation};

use crius_sandbox::seccomp::SeccompProfile;

use crate::error::AgentError;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parts of an image config a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

impl ImageDefaults {
    /// Reads them from an image config JSON (one without a `config`
    /// section has no defaults); JSON that does not parse is an error.
    pub fn from_config_json(json: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let config = &value["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
        };
        Ok(Self {
            entrypoint: strings(&config["Entrypoint"]),
            cmd: strings(&config["Cmd"]),
            env: strings(&config["Env"]),
            working_dir: config["WorkingDir"].as_str().unwrap_or_default().to_owned(),
            user: config["User"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// Everything besides the CRI config that shapes the request.
#[derive(Debug)]
pub struct SpecInputs<'a> {
    /// Container id.
    pub id: &'a str,
    /// The image's layers and the container's writable layer.
    pub rootfs: RootfsLayers,
    /// The image's defaults.
    pub image: &'a ImageDefaults,
    /// The pod's hostname.
    pub hostname: &'a str,
    /// The pod's namespace modes: network, pid, ipc (CRI values).
    pub pod_modes: [i32; 3],
    /// cgroup path (relative to the hierarchy roots).
    pub cgroup: Option<String>,
    /// Where the CRI log goes.
    pub log_path: Option<PathBuf>,
}

/// Builds the backend's request.
pub fn build(config: &ContainerConfig, inputs: SpecInputs<'_>) -> Result<ContainerRequest, AgentError> {
    let security = config.linux.as_ref().and_then(|l| l.security_context.clone()).unwrap_or_default();
    let privileged = security.privileged;
    let defaults = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
    let chosen = |asked: &[String], default: &[&str]| if asked.is_empty() { defaults(default) } else { asked.to_vec() };
    let filesystem = FilesystemRequest {
        rootfs: inputs.rootfs,
        readonly_rootfs: security.readonly_rootfs,
        mounts: mounts(config)?,
        devices: config
            .devices
            .iter()
            .map(|d| DeviceSpec {
                host_path: PathBuf::from(&d.host_path),
                container_path: d.container_path.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        masked_paths: chosen(&security.masked_paths, DEFAULT_MASKED_PATHS),
        readonly_paths: chosen(&security.readonly_paths, DEFAULT_READONLY_PATHS),
        privileged,
    };
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let process = ProcessRequest {
        args: args(config, inputs.image)?,
        env: env(config, inputs.image, &pod_hostname(inputs.hostname)),
        cwd: cwd(config, inputs.image),
        user: user(&security, inputs.image),
        terminal: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        no_new_privileges: security.no_new_privs,
        capabilities: capabilities(&security)?,
        seccomp: seccomp(&security)?,
        apparmor_profile: None,
        rlimits: Vec::new(),
        oom_score_adj: resources.map(|r| clamp_oom(r.oom_score_adj)),
    };
    Ok(ContainerRequest {
        id: inputs.id.to_owned(),
        filesystem,
        process,
        pid: pid_mode(&security, inputs.pod_modes),
        hostname: inputs.hostname.to_owned(),
        cgroup: inputs.cgroup,
        resources: resources.map(super::resources::cgroup_resources),
        log_path: inputs.log_path,
    })
}

/// kubelet's rules: `command` replaces the entrypoint and drops the image's
/// Cmd; `args` replaces Cmd.
fn args(config: &ContainerConfig, image: &ImageDefaults) -> Result<Vec<String>, AgentError> {
    let args = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else if !config.args.is_empty() {
        image.entrypoint.iter().chain(&config.args).cloned().collect()
    } else {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect::<Vec<_>>()
    };
    if args.is_empty() {
        return Err(AgentError::InvalidArgument {
            field: "config.command",
            reason: "no command given and the image has neither Entrypoint nor Cmd".into(),
        });
    }
    Ok(args)
}

/// The image's environment, then `HOSTNAME` (the pod's hostname, as
/// containerd and CRI-O set it), then CRI's: a later key replaces an
/// earlier one.
fn env(config: &ContainerConfig, image: &ImageDefaults, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let set = |env: &mut Vec<String>, key: &str, entry: String| match env
        .iter_mut()
        .find(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    };
    set(&mut env, "HOSTNAME", format!("HOSTNAME={hostname}"));
    for kv in &config.envs {
        set(&mut env, &kv.key, format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
    }
    env
}

/// The pod's hostname; a pod without one (host network) has the node's.
fn pod_hostname(requested: &str) -> String {
    if !requested.is_empty() {
        return requested.to_owned();
    }
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
}

fn cwd(config: &ContainerConfig, image: &ImageDefaults) -> String {
    [&config.working_dir, &image.working_dir].into_iter().find(|d| !d.is_empty()).cloned().unwrap_or_else(|| "/".into())
}

/// Who the process runs as: CRI's run_as_* first, else the image's User;
/// the backend resolves names in the image's /etc/passwd and /etc/group.
fn user(security: &LinuxContainerSecurityContext, image: &ImageDefaults) -> UserRequest {
    UserRequest {
        run_as_user: security.run_as_user.as_ref().map(|u| u.value),
        run_as_username: security.run_as_username.clone(),
        run_as_group: security.run_as_group.as_ref().map(|g| g.value),
        supplemental_groups: security.supplemental_groups.clone(),
        strict_groups: security.supplemental_groups_policy == SupplementalGroupsPolicy::Strict as i32,
        image_user: image.user.clone(),
    }
}

fn capabilities(security: &LinuxContainerSecurityContext) -> Result<CapabilitySpec, AgentError> {
    let caps = security.capabilities.clone().unwrap_or_default();
    let set = crius_sandbox::caps::effective_set(
        &caps.add_capabilities,
        &caps.drop_capabilities,
        security.privileged,
        &caps.add_ambient_capabilities,
    )
    .map_err(|e| AgentError::InvalidArgument {
        field: "config.linux.security_context.capabilities",
        reason: e.to_string(),
    })?;
    let names = |set: &crius_sandbox::caps::CapsHashSet| {
        let mut names: Vec<String> = set.iter().map(ToString::to_string).collect();
        names.sort();
        names
    };
    Ok(CapabilitySpec {
        bounding: names(&set.bounding),
        effective: names(&set.effective),
        permitted: names(&set.permitted),
        inheritable: names(&set.inheritable),
        ambient: names(&set.ambient),
    })
}

/// `seccomp` (CRI 1.20+) wins over the legacy `seccomp_profile_path`, which
/// older kubelets still send.
#[allow(deprecated)]
fn seccomp(security: &LinuxContainerSecurityContext) -> Result<SeccompProfile, AgentError> {
    let invalid =
        |reason: String| AgentError::InvalidArgument { field: "config.linux.security_context.seccomp", reason };
    if security.privileged {
        return Ok(SeccompProfile::Unconfined);
    }
    if let Some(profile) = &security.seccomp {
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(SeccompProfile::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(SeccompProfile::Unconfined),
            Ok(ProfileType::Localhost) => {
                let path = PathBuf::from(&profile.localhost_ref);
                if path.is_absolute() {
                    Ok(SeccompProfile::Localhost(path))
                } else {
                    Err(invalid(format!("localhost profile {path:?} is not an absolute path")))
                }
            }
            Err(_) => Err(invalid(format!("unknown profile type {}", profile.profile_type))),
        };
    }
    match security.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok(SeccompProfile::Unconfined),
        "runtime/default" | "docker/default" => Ok(SeccompProfile::RuntimeDefault),
        other => match other.strip_prefix("localhost/") {
            Some(path) if path.starts_with('/') => Ok(SeccompProfile::Localhost(PathBuf::from(path))),
            _ => Err(invalid(format!("unsupported seccomp profile {other:?}"))),
        },
    }
}

/// Checks the request's mounts and devices before anything is made: host
/// paths must be absolute (a relative one would be resolved against crius's
/// own working directory).
pub fn check_mounts(config: &ContainerConfig) -> Result<(), AgentError> {
    mounts(config)?;
    for device in &config.devices {
        for (field, path) in
            [("config.devices.host_path", &device.host_path), ("config.devices.container_path", &device.container_path)]
        {
            if !Path::new(path).is_absolute() {
                return Err(AgentError::InvalidArgument { field, reason: format!("{path:?} is not an absolute path") });
            }
        }
    }
    Ok(())
}

fn mounts(config: &ContainerConfig) -> Result<Vec<MountSpec>, AgentError> {
    config
        .mounts
        .iter()
        .map(|m| {
            if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
                return Err(AgentError::Unsupported { what: "image volume mounts".into() });
            }
            if m.container_path.is_empty() || m.host_path.is_empty() {
                return Err(AgentError::InvalidArgument {
                    field: "config.mounts",
                    reason: "container_path and host_path are required".into(),
                });
            }
            if !Path::new(&m.host_path).is_absolute() {
                return Err(AgentError::InvalidArgument {
                    field: "config.mounts.host_path",
                    reason: format!("{:?} is not an absolute path", m.host_path),
                });
            }
            let propagation = match MountPropagation::try_from(m.propagation) {
                Ok(MountPropagation::PropagationHostToContainer) => Propagation::RSlave,
                Ok(MountPropagation::PropagationBidirectional) => Propagation::RShared,
                _ => Propagation::Private,
            };
            if m.recursive_read_only {
                // As kubelet's API validation and containerd require: a
                // recursive read-only mount is read-only and private.
                let reason = if !m.readonly {
                    Some("recursive_read_only needs readonly")
                } else if propagation != Propagation::Private {
                    Some("recursive_read_only needs PROPAGATION_PRIVATE (submounts arriving later could not be read-only)")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(AgentError::InvalidArgument {
                        field: "config.mounts",
                        reason: format!("{}: {reason}", m.container_path),
                    });
                }
            }
            Ok(MountSpec {
                source: PathBuf::from(&m.host_path),
                destination: m.container_path.clone(),
                readonly: m.readonly || m.recursive_read_only,
                recursive_readonly: m.recursive_read_only,
                propagation,
                selinux_relabel: m.selinux_relabel,
            })
        })
        .collect()
}

/// The container's PID namespace: its own setting, else the pod's.
fn pid_mode(security: &LinuxContainerSecurityContext, pod_modes: [i32; 3]) -> PidMode {
    let mode = security.namespace_options.as_ref().map_or(pod_modes[1], |o| o.pid);
    if mode == NamespaceMode::Node as i32 {
        PidMode::Node
    } else if mode == NamespaceMode::Pod as i32 {
        PidMode::Pod
    } else {
        PidMode::Container
    }
}

/// Raises an OOM score adjustment to what this process may set: without
/// CAP_SYS_RESOURCE a value below crius's own is refused by the kernel.
fn clamp_oom(wanted: i64) -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let has_resource = caps_has_sys_resource();
    let floor = if has_resource { -1000 } else { own };
    i32::try_from(wanted.clamp(floor, 1000)).unwrap_or(0)
}

fn caps_has_sys_resource() -> bool {
    crius_sandbox::caps::has_effective("CAP_SYS_RESOURCE")
}

#[cfg(test)]
mod tests;
