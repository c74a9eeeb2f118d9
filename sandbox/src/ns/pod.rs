//! Pod sandboxes without a pause process: the pod's network, IPC and UTS
//! namespaces are pinned by bind-mounting their nsfs files under
//! `<run_root>/pods/<id>/ns/`, its `/dev/shm` is a tmpfs under the pod
//! directory, and its `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`
//! are files there that every container of the pod binds.
//!
//! Namespaces are created by `crius internal pin-ns` (see [`pin_namespaces`]),
//! a short-lived re-execution of crius: it unshares and bind-mounts its own
//! namespace files (it still shares the host's mount namespace), then exits.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

/// Size of a pod's `/dev/shm` tmpfs (containerd's default).
pub const SHM_SIZE: u64 = 64 << 20;

/// Why a pod sandbox could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A filesystem step failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The namespace helper failed.
    #[error("pin pod namespaces in {dir}: {message}")]
    Pin {
        /// The namespace directory.
        dir: PathBuf,
        /// What the helper reported.
        message: String,
    },
    /// The pod id is not a safe directory name.
    #[error("invalid pod id {0:?}")]
    InvalidId(String),
    /// A sysctl is not namespaced, or its namespace is the host's.
    #[error("sysctl {key}: {reason}")]
    Sysctl {
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Which of the pod's namespaces a sysctl lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysctlNamespace {
    Net,
    Ipc,
}

fn sysctl_namespace(key: &str) -> Option<SysctlNamespace> {
    if key.starts_with("net.") {
        Some(SysctlNamespace::Net)
    } else if key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.")
    {
        Some(SysctlNamespace::Ipc)
    } else {
        None
    }
}

/// Refuses sysctls that would change the host: not namespaced, in a namespace
/// the pod shares with the host, or with a key that is not a plain path.
pub fn check_sysctls(sysctls: &BTreeMap<String, String>, ns: PodNamespaces) -> Result<(), PodError> {
    for key in sysctls.keys() {
        let refuse = |reason: &str| PodError::Sysctl { key: key.clone(), reason: reason.to_owned() };
        let plain = !key.is_empty() && key.split(['.', '/']).all(|p| !p.is_empty() && p != "..");
        if !plain {
            return Err(refuse("not a valid sysctl name"));
        }
        match sysctl_namespace(key) {
            None => return Err(refuse("not a namespaced sysctl")),
            Some(SysctlNamespace::Net) if !ns.net => return Err(refuse("the pod uses the host network namespace")),
            Some(SysctlNamespace::Ipc) if !ns.ipc => return Err(refuse("the pod uses the host IPC namespace")),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes sysctls through `/proc/sys` in the calling thread's namespaces.
fn write_sysctls(sysctls: &BTreeMap<String, String>) -> Result<(), PodError> {
    for (key, value) in sysctls {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).map_err(|source| io("write sysctl", &path, source))?;
    }
    Ok(())
}

/// Which namespaces a pod gets of its own (false = the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    /// Network.
    pub net: bool,
    /// IPC (and with it a private `/dev/shm`).
    pub ipc: bool,
    /// UTS (hostname).
    pub uts: bool,
    /// A PID namespace shared by the pod's containers, with a small init
    /// (`crius internal pod-init`) as its PID 1.
    #[serde(default)]
    pub pid: bool,
}

/// DNS settings for the pod's resolv.conf; empty means "copy the host's".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSpec {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Options (`ndots:5`).
    pub options: Vec<String>,
}

/// What the agent asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Sandbox id.
    pub id: String,
    /// Hostname; empty keeps the host's (host network) or uses the pod name.
    pub hostname: String,
    /// DNS.
    pub dns: DnsSpec,
    /// Own namespaces.
    pub namespaces: PodNamespaces,
    /// Namespaced sysctls for the pod (`net.*` needs its own network
    /// namespace; `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`
    /// its own IPC namespace).
    pub sysctls: BTreeMap<String, String>,
}

/// Where a pod's pieces are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPaths {
    /// `<run_root>/pods/<id>`.
    pub dir: PathBuf,
    /// Pinned network namespace, `None` for the host's.
    pub net: Option<PathBuf>,
    /// Pinned IPC namespace.
    pub ipc: Option<PathBuf>,
    /// Pinned UTS namespace.
    pub uts: Option<PathBuf>,
    /// The pod's shared PID namespace (its pod init's), when it has one.
    #[serde(default)]
    pub pid: Option<PathBuf>,
    /// The pod's `/dev/shm` (the host's for host IPC).
    pub shm: PathBuf,
    /// `/etc/hostname` source.
    pub hostname: PathBuf,
    /// `/etc/hosts` source.
    pub hosts: PathBuf,
    /// `/etc/resolv.conf` source.
    pub resolv_conf: PathBuf,
}

/// The directory of pod `id`.
pub fn pod_dir(run_root: &Path, id: &str) -> Result<PathBuf, PodError> {
    let valid = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid { Ok(run_root.join("pods").join(id)) } else { Err(PodError::InvalidId(id.to_owned())) }
}

/// Where [`create_pod`] puts the pieces of pod `id` (nothing is made).
pub fn plan_paths(run_root: &Path, id: &str, namespaces: PodNamespaces) -> Result<PodPaths, PodError> {
    Ok(paths_in(&pod_dir(run_root, id)?, namespaces))
}

fn paths_in(dir: &Path, ns: PodNamespaces) -> PodPaths {
    let pinned = |wanted: bool, kind: &str| wanted.then(|| dir.join("ns").join(kind));
    PodPaths {
        dir: dir.to_path_buf(),
        net: pinned(ns.net, "net"),
        ipc: pinned(ns.ipc, "ipc"),
        uts: pinned(ns.uts, "uts"),
        pid: pinned(ns.pid, "pid"),
        shm: if ns.ipc { dir.join("shm") } else { PathBuf::from("/dev/shm") },
        hostname: dir.join("hostname"),
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
    }
}

/// Creates the pod's namespaces and files. On failure everything made so far
/// is removed again.
pub fn create_pod(run_root: &Path, spec: &PodSpec, self_exe: &Path) -> Result<PodPaths, PodError> {
    let dir = pod_dir(run_root, &spec.id)?;
    check_sysctls(&spec.sysctls, spec.namespaces)?;
    let result = create_inner(&dir, spec, self_exe);
    if result.is_err() {
        let _ = destroy_dir(&dir);
    }
    result
}

fn create_inner(dir: &Path, spec: &PodSpec, self_exe: &Path) -> Result<PodPaths, PodError> {
    let ns_dir = dir.join("ns");
    fs::create_dir_all(&ns_dir).map_err(|source| io("create", &ns_dir, source))?;
    let ns = spec.namespaces;
    let hostname = if spec.hostname.is_empty() { host_hostname() } else { spec.hostname.clone() };
    if ns.net || ns.ipc || ns.uts || ns.pid {
        run_pin_helper(self_exe, &ns_dir, ns, &hostname, &spec.sysctls)?;
    }
    if ns.ipc {
        mount_shm(dir)?;
    }
    let paths = paths_in(dir, ns);
    write(&paths.hostname, format!("{hostname}\n"))?;
    write(&paths.hosts, hosts_file(&hostname))?;
    write(&paths.resolv_conf, resolv_conf(&spec.dns)?)?;
    Ok(paths)
}

/// Runs `crius internal pin-ns` and waits for it.
fn run_pin_helper(
    self_exe: &Path,
    ns_dir: &Path,
    ns: PodNamespaces,
    hostname: &str,
    sysctls: &BTreeMap<String, String>,
) -> Result<(), PodError> {
    let mut command = Command::new(self_exe);
    command.arg("internal").arg("pin-ns").arg(ns_dir);
    for (wanted, flag) in [(ns.net, "--net"), (ns.ipc, "--ipc"), (ns.uts, "--uts"), (ns.pid, "--pid")] {
        if wanted {
            command.arg(flag);
        }
    }
    if ns.uts && !hostname.is_empty() {
        command.arg("--hostname").arg(hostname);
    }
    for (key, value) in sysctls {
        command.arg("--sysctl").arg(format!("{key}={value}"));
    }
    let output =
        command.stdin(Stdio::null()).output().map_err(|source| io("run namespace helper", self_exe, source))?;
    if output.status.success() {
        Ok(())
    } else {
        let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        Err(PodError::Pin { dir: ns_dir.to_path_buf(), message: format!("{} ({})", message, output.status) })
    }
}

/// The body of `crius internal pin-ns <dir> [--net] [--ipc] [--uts]
/// [--hostname NAME]`: unshare the namespaces, bring `lo` up in a new network
/// namespace, set the hostname in a new UTS namespace, and bind-mount them
/// onto `<dir>/<kind>`. Must run in a single-threaded process (a fresh
/// re-execution of crius).
pub fn pin_namespaces(
    dir: &Path,
    ns: PodNamespaces,
    hostname: Option<&str>,
    sysctls: &BTreeMap<String, String>,
) -> Result<(), PodError> {
    check_sysctls(sysctls, ns)?;
    let mut flags = CloneFlags::empty();
    // The PID namespace is unshared last, in start_pod_init.
    for (wanted, flag) in
        [(ns.net, CloneFlags::CLONE_NEWNET), (ns.ipc, CloneFlags::CLONE_NEWIPC), (ns.uts, CloneFlags::CLONE_NEWUTS)]
    {
        if wanted {
            flags |= flag;
        }
    }
    unshare(flags).map_err(|e| io("unshare namespaces", dir, e.into()))?;
    if ns.net {
        super::loopback::set_loopback_up().map_err(|source| io("bring lo up in", dir, source))?;
    }
    if let (true, Some(hostname)) = (ns.uts, hostname.filter(|h| !h.is_empty())) {
        nix::unistd::sethostname(hostname).map_err(|e| io("set hostname in", dir, e.into()))?;
    }
    write_sysctls(sysctls)?;
    if ns.pid {
        start_pod_init(dir)?;
    }
    for (wanted, kind) in [(ns.net, "net"), (ns.ipc, "ipc"), (ns.uts, "uts")] {
        if !wanted {
            continue;
        }
        let target = dir.join(kind);
        fs::File::create(&target).map_err(|source| io("create namespace file", &target, source))?;
        let source = PathBuf::from(format!("/proc/self/ns/{kind}"));
        mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| io("pin namespace", &target, e.into()))?;
    }
    Ok(())
}

/// Removes a pod's namespaces, shm and files. Idempotent.
pub fn destroy_pod(run_root: &Path, id: &str) -> Result<(), PodError> {
    destroy_dir(&pod_dir(run_root, id)?)
}

fn destroy_dir(dir: &Path) -> Result<(), PodError> {
    stop_pod_init(&dir.join("ns"));
    for kind in ["net", "ipc", "uts", "pid"] {
        unmount_if_mounted(&dir.join("ns").join(kind))?;
    }
    unmount_if_mounted(&dir.join("shm"))?;
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("remove", dir, source)),
    }
}

fn unmount_if_mounted(path: &Path) -> Result<(), PodError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        // Not a mount point (EINVAL) or gone (ENOENT): nothing to undo.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("unmount", path, e.into())),
    }
}

fn mount_shm(dir: &Path) -> Result<(), PodError> {
    let shm = dir.join("shm");
    fs::create_dir_all(&shm).map_err(|source| io("create", &shm, source))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let options = format!("mode=1777,size={SHM_SIZE}");
    mount(Some("shm"), &shm, Some("tmpfs"), flags, Some(options.as_str())).map_err(|e| io("mount shm", &shm, e.into()))
}

/// File holding the pod init's pid (in the host's PID namespace).
const POD_INIT_PID: &str = "pod-init.pid";

/// Starts the pod init as PID 1 of a new PID namespace and pins that
/// namespace at `<dir>/pid`. Runs in `pin-ns` (single-threaded): after
/// `unshare(CLONE_NEWPID)` its next child is the new namespace's PID 1.
fn start_pod_init(dir: &Path) -> Result<(), PodError> {
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| io("unshare pid namespace in", dir, e.into()))?;
    let child = Command::new("/proc/self/exe")
        .args(["internal", "pod-init"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| io("start pod init for", dir, source))?;
    let pid = child.id();
    let pid_file = dir.join(POD_INIT_PID);
    fs::write(&pid_file, format!("{pid}\n")).map_err(|source| io("write", &pid_file, source))?;
    let target = dir.join("pid");
    fs::File::create(&target).map_err(|source| io("create namespace file", &target, source))?;
    let source = PathBuf::from(format!("/proc/{pid}/ns/pid"));
    mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| io("pin namespace", &target, e.into()))
}

/// Ends the pod init (and with it every process left in the pod's PID namespace).
fn stop_pod_init(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join(POD_INIT_PID)) else { return };
    let Ok(pid) = text.trim().parse::<i32>() else { return };
    let pid = nix::unistd::Pid::from_raw(pid);
    // Only if it still is our pod init (pids are reused).
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("pod-init") {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The body of `crius internal pod-init`: PID 1 of a pod's shared PID
/// namespace. It reaps orphans and exits on SIGTERM or SIGINT.
pub fn pod_init() -> std::io::Result<()> {
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in [
        nix::sys::signal::Signal::SIGCHLD,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        set.add(signal);
    }
    set.thread_block()?;
    loop {
        match set.wait()? {
            nix::sys::signal::Signal::SIGCHLD => {
                use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            _ => return Ok(()),
        }
    }
}

fn host_hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".to_owned())
}

/// `/etc/hosts` for a pod (the pod's own address is added by kubelet's
/// managed hosts file when it wants one).
pub fn hosts_file(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    )
}

/// `resolv.conf` from the pod's DNS config, or the host's when it is empty.
pub fn resolv_conf(dns: &DnsSpec) -> Result<String, PodError> {
    if dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        let host = Path::new("/etc/resolv.conf");
        return match fs::read_to_string(host) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(io("read", host, source)),
        };
    }
    let mut text = String::new();
    for server in &dns.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.searches.is_empty() {
        text.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        text.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(text)
}

fn write(path: &Path, text: String) -> Result<(), PodError> {
    fs::write(path, text).map_err(|source| io("write", path, source))
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> PodError {
    PodError::Io { operation, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = DnsSpec {
            servers: vec!["10.0.0.10".into(), "8.8.8.8".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).expect("resolv"),
            "nameserver 10.0.0.10\nnameserver 8.8.8.8\nsearch default.svc.cluster.local svc.cluster.local\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let hosts = hosts_file("web-0");
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("127.0.1.1\tweb-0\n"));
    }

    #[test]
    fn only_namespaced_sysctls_of_own_namespaces_are_allowed() {
        let own = PodNamespaces { net: true, ipc: true, uts: true, pid: false };
        let host_net = PodNamespaces { net: false, ipc: true, uts: true, pid: false };
        let one = |k: &str| BTreeMap::from([(k.to_owned(), "1".to_owned())]);
        for ok in ["net.ipv4.ip_forward", "kernel.shm_rmid_forced", "kernel.msgmax", "kernel.sem", "fs.mqueue.msg_max"]
        {
            check_sysctls(&one(ok), own).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["kernel.panic", "vm.swappiness", "net/../../x", "net..x", ""] {
            assert!(check_sysctls(&one(bad), own).is_err(), "{bad} accepted");
        }
        let err = check_sysctls(&one("net.ipv4.ip_forward"), host_net).expect_err("host network");
        assert!(err.to_string().contains("host network"), "{err}");
    }

    #[test]
    fn pod_ids_are_checked() {
        let root = Path::new("/run/crius");
        assert!(pod_dir(root, "abc123").is_ok());
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(129)] {
            assert!(matches!(pod_dir(root, bad), Err(PodError::InvalidId(_))), "{bad}");
        }
    }

    #[test]
    fn a_pod_without_own_namespaces_needs_no_helper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = PodSpec {
            id: "hostpod".into(),
            hostname: String::new(),
            dns: DnsSpec { servers: vec!["1.1.1.1".into()], ..DnsSpec::default() },
            namespaces: PodNamespaces { net: false, ipc: false, uts: false, pid: false },
            sysctls: BTreeMap::new(),
        };
        let paths = create_pod(dir.path(), &spec, Path::new("/nonexistent/crius")).expect("host pod");
        assert_eq!(paths.net, None);
        assert_eq!(paths.shm, Path::new("/dev/shm"));
        assert_eq!(fs::read_to_string(&paths.resolv_conf).expect("resolv"), "nameserver 1.1.1.1\n");
        destroy_pod(dir.path(), "hostpod").expect("destroy");
        destroy_pod(dir.path(), "hostpod").expect("destroy again");
        assert!(!paths.dir.exists());
    }

    #[test]
    fn a_failing_helper_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = PodSpec {
            id: "broken".into(),
            hostname: "h".into(),
            dns: DnsSpec::default(),
            namespaces: PodNamespaces { net: true, ipc: true, uts: true, pid: false },
            sysctls: BTreeMap::new(),
        };
        let err = create_pod(dir.path(), &spec, Path::new("/bin/false")).expect_err("helper fails");
        assert!(matches!(err, PodError::Pin { .. }), "{err}");
        assert!(!dir.path().join("pods/broken").exists());
    }
}
