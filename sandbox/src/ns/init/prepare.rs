//! What `init` checks and computes from the spec before touching the
//! system: capability sets, rlimits, sysctl paths, argv and environment, the
//! seccomp program (a `Localhost` profile is read here, on the host, before
//! `pivot_root` hides it). Pure apart from reading that profile.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use ::caps::CapsHashSet;
use nix::sys::resource::Resource;
use seccompiler::BpfProgram;

use super::InitError;
use crate::caps::{CapSet, parse_name};
use crate::ns::spec::{CapabilitySpec, ContainerSpec, NamespaceSpec};

/// `PATH` searched when the container's environment has none.
pub(super) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The spec, checked and turned into what the system calls take.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Capability sets to apply.
    pub(crate) caps: CapSet,
    /// Resource limits, in spec order.
    pub(crate) rlimits: Vec<Rlimit>,
    /// Sysctls, in key order.
    pub(super) sysctls: Vec<Sysctl>,
    /// argv for `execve`.
    pub(super) argv: Vec<CString>,
    /// envp for `execve`.
    pub(super) envp: Vec<CString>,
    /// The compiled seccomp filter; `None` when unconfined.
    pub(crate) seccomp: Option<BpfProgram>,
}

/// One resource limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rlimit {
    /// The name as given.
    pub(super) name: String,
    /// The resource.
    pub(super) resource: Resource,
    /// Soft limit.
    pub(super) soft: u64,
    /// Hard limit.
    pub(super) hard: u64,
}

/// One namespaced sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sysctl {
    /// The key as given.
    pub(super) key: String,
    /// The file under `/proc/sys`.
    pub(super) path: PathBuf,
    /// The value to write.
    pub(super) value: String,
}

/// Checks `spec` and computes everything `init` applies later.
pub(crate) fn prepare(spec: &ContainerSpec) -> Result<Prepared, InitError> {
    let process = &spec.process;
    if process.args.is_empty() {
        return Err(invalid("process.args", "empty"));
    }
    if !process.cwd.starts_with('/') {
        return Err(invalid("process.cwd", format!("{:?} is not absolute", process.cwd)));
    }
    if let Some(adj) = process.oom_score_adj.filter(|adj| !(-1000..=1000).contains(adj)) {
        return Err(invalid("process.oom_score_adj", format!("{adj} is not within -1000..=1000")));
    }
    let rlimits = process
        .rlimits
        .iter()
        .enumerate()
        .map(|(i, (name, soft, hard))| rlimit(i, name, *soft, *hard))
        .collect::<Result<_, _>>()?;
    let sysctls = spec.sysctls.iter().map(|(k, v)| sysctl(k, v, &spec.namespaces)).collect::<Result<_, _>>()?;
    let seccomp = crate::seccomp::compile(&process.seccomp, &process.capabilities.effective)
        .map_err(|source| InitError::Seccomp { source })?;
    Ok(Prepared {
        caps: cap_set(&process.capabilities)?,
        rlimits,
        sysctls,
        argv: c_strings("process.args", &process.args)?,
        envp: c_strings("process.env", &process.env)?,
        seccomp,
    })
}

fn invalid(field: &str, reason: impl Into<String>) -> InitError {
    InitError::InvalidSpec { field: field.to_owned(), reason: reason.into() }
}

fn c_strings(field: &str, items: &[String]) -> Result<Vec<CString>, InitError> {
    items
        .iter()
        .enumerate()
        .map(|(i, s)| CString::new(s.as_bytes()).map_err(|_| invalid(&format!("{field}[{i}]"), "contains a NUL byte")))
        .collect()
}

fn cap_set(spec: &CapabilitySpec) -> Result<CapSet, InitError> {
    let set = |names: &[String]| -> Result<CapsHashSet, InitError> {
        names.iter().map(|n| parse_name(n).map_err(|source| InitError::Caps { source })).collect()
    };
    Ok(CapSet {
        bounding: set(&spec.bounding)?,
        effective: set(&spec.effective)?,
        permitted: set(&spec.permitted)?,
        inheritable: set(&spec.inheritable)?,
        ambient: set(&spec.ambient)?,
    })
}

/// Parses one `(name, soft, hard)` rlimit entry.
fn rlimit(index: usize, name: &str, soft: u64, hard: u64) -> Result<Rlimit, InitError> {
    let field = format!("process.rlimits[{index}]");
    let resource = resource(name).ok_or_else(|| invalid(&field, format!("unknown rlimit {name:?}")))?;
    if soft > hard {
        return Err(invalid(&field, format!("{name}: soft limit {soft} above hard limit {hard}")));
    }
    Ok(Rlimit { name: name.to_owned(), resource, soft, hard })
}

/// The resource of an `RLIMIT_NOFILE`-style name (any case, prefix optional).
fn resource(name: &str) -> Option<Resource> {
    let upper = name.trim().to_ascii_uppercase();
    Some(match upper.strip_prefix("RLIMIT_").unwrap_or(&upper) {
        "AS" => Resource::RLIMIT_AS,
        "CORE" => Resource::RLIMIT_CORE,
        "CPU" => Resource::RLIMIT_CPU,
        "DATA" => Resource::RLIMIT_DATA,
        "FSIZE" => Resource::RLIMIT_FSIZE,
        "LOCKS" => Resource::RLIMIT_LOCKS,
        "MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "NICE" => Resource::RLIMIT_NICE,
        "NOFILE" => Resource::RLIMIT_NOFILE,
        "NPROC" => Resource::RLIMIT_NPROC,
        "RSS" => Resource::RLIMIT_RSS,
        "RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RTTIME" => Resource::RLIMIT_RTTIME,
        "SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Checks a sysctl: namespaced, in a namespace of the container's own (not
/// the host's), a well-formed key. Keys use sysctl(8)'s syntax: `.`
/// separates components, `/` stands for a dot inside one
/// (`net.ipv4.conf.eth0/100.rp_filter`).
pub(super) fn sysctl(key: &str, value: &str, ns: &NamespaceSpec) -> Result<Sysctl, InitError> {
    let fail = |reason: &str| InitError::Sysctl { key: key.to_owned(), reason: reason.to_owned() };
    let path: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect();
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(fail("malformed key"));
    }
    let ipc = key == "kernel.sem"
        || key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key.starts_with("fs.mqueue.");
    if key.starts_with("net.") {
        if ns.net.is_none() {
            return Err(fail("not allowed in the host's network namespace"));
        }
    } else if ipc {
        if ns.ipc.is_none() {
            return Err(fail("not allowed in the host's IPC namespace"));
        }
    } else {
        return Err(fail(
            "not a namespaced sysctl (allowed: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)",
        ));
    }
    Ok(Sysctl { key: key.to_owned(), path: PathBuf::from(path), value: value.to_owned() })
}

/// Finds `name` (no `/` in it) in the `PATH` of `env` (else
/// [`DEFAULT_PATH`]): the first candidate `is_executable` accepts. An
/// empty `PATH` entry means the working directory.
pub(super) fn search_path(
    name: &str,
    env: &[String],
    is_executable: impl Fn(&Path) -> bool,
) -> Result<PathBuf, InitError> {
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| InitError::NotInPath { name: name.to_owned(), path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(net: bool, ipc: bool) -> NamespaceSpec {
        NamespaceSpec {
            net: net.then(|| "/run/ns/net".into()),
            ipc: ipc.then(|| "/run/ns/ipc".into()),
            ..Default::default()
        }
    }

    #[test]
    fn sysctl_paths_and_namespaces() {
        let all = ns(true, true);
        let ok = |k: &str| sysctl(k, "1", &all).map(|s| s.path).expect(k);
        assert_eq!(ok("net.ipv4.ip_forward"), Path::new("net/ipv4/ip_forward"));
        assert_eq!(ok("net.ipv4.conf.eth0/100.rp_filter"), Path::new("net/ipv4/conf/eth0.100/rp_filter"));
        assert_eq!(ok("kernel.shmmax"), Path::new("kernel/shmmax"));
        assert_eq!(ok("kernel.msgmnb"), Path::new("kernel/msgmnb"));
        assert_eq!(ok("kernel.sem"), Path::new("kernel/sem"));
        assert_eq!(ok("fs.mqueue.msg_max"), Path::new("fs/mqueue/msg_max"));
        for bad in ["vm.swappiness", "kernel.hostname", "kernel.semx", "fs.file-max", "net..x", "net./../x", "net."] {
            let err = sysctl(bad, "1", &all).expect_err(bad);
            assert!(matches!(&err, InitError::Sysctl { key, .. } if key == bad), "{err}");
        }
        assert!(sysctl("net.ipv4.ip_forward", "1", &ns(false, true)).is_err());
        assert!(sysctl("kernel.shmmax", "1", &ns(true, false)).is_err());
    }

    #[test]
    fn rlimit_names() {
        assert_eq!(resource("RLIMIT_NOFILE"), Some(Resource::RLIMIT_NOFILE));
        assert_eq!(resource("nproc"), Some(Resource::RLIMIT_NPROC));
        assert_eq!(resource("RLIMIT_BOGUS"), None);
        assert!(rlimit(0, "RLIMIT_NOFILE", 10, 5).is_err());
        assert_eq!(rlimit(0, "RLIMIT_CORE", 0, u64::MAX).map(|r| r.hard).ok(), Some(u64::MAX));
    }

    #[test]
    fn path_search() {
        let env = vec!["FOO=1".to_owned(), "PATH=/a::/b".to_owned()];
        let found = search_path("sh", &env, |p| p == Path::new("/b/sh")).expect("found");
        assert_eq!(found, Path::new("/b/sh"));
        assert_eq!(search_path("sh", &env, |p| p == Path::new("./sh")).ok(), Some(PathBuf::from("./sh")));
        let default = search_path("ls", &[], |p| p == Path::new("/usr/bin/ls")).expect("default PATH");
        assert_eq!(default, Path::new("/usr/bin/ls"));
        let err = search_path("nope", &env, |_| false).expect_err("missing");
        assert_eq!(err.to_string(), "exec nope: executable file not found in PATH /a::/b");
    }
}
