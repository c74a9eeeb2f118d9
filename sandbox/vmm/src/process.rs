//! One VMM process per VM: `crius internal vmm <dir>`.
//!
//! [`spawn`] writes `<dir>/config.json` and starts the process detached (its
//! own session, no terminal, stdio to `<dir>/vmm.log`), like the container
//! monitor, so a VM outlives the crius that started it. The process checks
//! the host, boots the VM (guest console in `<dir>/console.log`), and serves
//! `<dir>/control.sock`: one JSON request per line, one JSON answer per line:
//!
//! - `{"op":"status"}` → [`Status`] (state, pid, uptime, vsock socket, memory)
//! - `{"op":"shutdown"}` → stops the vCPUs, answers, exits
//!
//! vsock connections go to the vsock device's own socket (named in the
//! status: `CONNECT <port>` there, Firecracker's convention). When the guest
//! powers off or resets, the process writes `<dir>/exit.json` ([`ExitRecord`])
//! and exits.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::{self, HostError};
use crate::vm::{self, Vm, VmConfig, VmError};

/// Config file in the VM directory.
pub const CONFIG_FILE: &str = "config.json";
/// Control socket in the VM directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Guest console log in the VM directory.
pub const CONSOLE_LOG: &str = "console.log";
/// The VMM's own stdout and stderr.
pub const VMM_LOG: &str = "vmm.log";
/// Written when the VM has ended.
pub const EXIT_FILE: &str = "exit.json";

/// What `crius internal vmm` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    /// The VM.
    pub vm: VmConfig,
    /// Boot even when the host check says the guest cannot run.
    #[serde(default)]
    pub force: bool,
}

/// Errors of the VMM process and its clients.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A file in the VM directory.
    #[error("{0}")]
    File(PathBuf, #[source] std::io::Error),
    /// A config or message that does not parse.
    #[error("{0}: invalid JSON")]
    Json(PathBuf, #[source] serde_json::Error),
    /// The host cannot run the guest.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The VM did not start.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The process could not be started.
    #[error("start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// The process exited or never served its socket.
    #[error("the VMM for {dir} did not come up: {why}")]
    NotUp {
        /// The VM directory.
        dir: PathBuf,
        /// What its log says, or the timeout.
        why: String,
    },
    /// Talking to the control socket failed.
    #[error("control socket {0}")]
    Control(PathBuf, #[source] std::io::Error),
}

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// How is the VM?
    Status,
    /// Stop the VM and exit.
    Shutdown,
}

/// The answer to `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// `running`, or `stopping` after a shutdown request.
    pub state: String,
    /// The VMM's pid.
    pub pid: u32,
    /// Milliseconds since the VM started.
    pub uptime_ms: u64,
    /// Where host processes connect for vsock.
    pub vsock_uds: Option<PathBuf>,
    /// Memory of the whole process (proportional set size), KiB.
    pub pss_kib: u64,
    /// Of which guest RAM, KiB.
    pub guest_pss_kib: u64,
    /// The VMM's own memory: `pss_kib - guest_pss_kib`.
    pub vmm_pss_kib: u64,
}

/// `<dir>/exit.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// Why the VM ended, in one line.
    pub reason: String,
    /// Whether the guest powered off by itself (or was shut down on request).
    pub clean: bool,
    /// vCPU exits in all.
    pub exits: u64,
    /// Milliseconds from start to end.
    pub elapsed_ms: u64,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProcessError + '_ {
    move |e| ProcessError::File(path.to_path_buf(), e)
}

/// Starts `exe internal vmm <dir>` detached for `config`; returns its pid
/// once the control socket answers (at most `timeout`).
pub fn spawn(exe: &Path, dir: &Path, config: &VmmConfig, timeout: Duration) -> Result<u32, ProcessError> {
    std::fs::create_dir_all(dir).map_err(file_err(dir))?;
    let config_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_vec_pretty(config).map_err(|e| ProcessError::Json(config_path.clone(), e))?;
    std::fs::write(&config_path, text).map_err(file_err(&config_path))?;
    for stale in [EXIT_FILE, CONTROL_SOCKET] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let log_path = dir.join(VMM_LOG);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(file_err(&log_path))?;
    let log2 = log.try_clone().map_err(file_err(&log_path))?;
    let mut command = Command::new(exe);
    command.args(["internal", "vmm"]).arg(dir).stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: `setsid` is async-signal-safe and touches no memory of the
    // parent; it only detaches the child from crius's session.
    unsafe {
        command.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = command.spawn().map_err(|e| ProcessError::Spawn(exe.to_path_buf(), e))?;
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        if Client::new(dir).status().is_ok() {
            // The VMM is not crius's child to wait for: reap it in the
            // background so it leaves no zombie while this crius lives.
            std::thread::spawn(move || child.wait());
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why = log.lines().last().map_or_else(|| format!("exited with {status}"), str::to_owned);
            return Err(ProcessError::NotUp { dir: dir.to_path_buf(), why });
        }
        if Instant::now() >= deadline {
            return Err(ProcessError::NotUp { dir: dir.to_path_buf(), why: format!("no answer within {timeout:?}") });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Talks to a VMM's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client of the VMM in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { socket: dir.join(CONTROL_SOCKET) }
    }

    fn call<T: for<'de> Deserialize<'de>>(&self, request: &Request) -> Result<T, ProcessError> {
        let err = |e| ProcessError::Control(self.socket.clone(), e);
        let mut stream = UnixStream::connect(&self.socket).map_err(err)?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(err)?;
        let mut line = serde_json::to_string(request).map_err(|e| ProcessError::Json(self.socket.clone(), e))?;
        line.push('\n');
        stream.write_all(line.as_bytes()).map_err(err)?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).map_err(err)?;
        serde_json::from_str(&answer).map_err(|e| ProcessError::Json(self.socket.clone(), e))
    }

    /// The VM's status.
    pub fn status(&self) -> Result<Status, ProcessError> {
        self.call(&Request::Status)
    }

    /// Stops the VM; the process exits after answering.
    pub fn shutdown(&self) -> Result<Status, ProcessError> {
        self.call(&Request::Shutdown)
    }
}

/// The body of `crius internal vmm <dir>`: runs until the VM ends or a
/// shutdown request; returns the exit record it wrote.
pub fn run(dir: &Path) -> Result<ExitRecord, ProcessError> {
    // One malloc arena for all threads: the vCPU and device threads
    // allocate little, and a per-thread arena each would cost resident pages.
    // SAFETY: mallopt only changes allocator tuning; no allocation is live
    // in another thread yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&config_path).map_err(file_err(&config_path))?;
    let mut config: VmmConfig =
        serde_json::from_slice(&text).map_err(|e| ProcessError::Json(config_path.clone(), e))?;
    let kvm = match host::check_linux_guest(&config.vm.kernel) {
        Ok(kvm) => kvm,
        Err(e) if config.force => {
            eprintln!("crius internal vmm: host check: {e} (force: booting anyway)");
            host::open_kvm()?
        }
        Err(e) => return Err(e.into()),
    };
    config.vm.console_log.get_or_insert_with(|| dir.join(CONSOLE_LOG));
    let socket_path = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&socket_path);
    let listener = UnixListener::bind(&socket_path).map_err(file_err(&socket_path))?;
    let mut vm = Vm::start(&kvm, &config.vm)?;
    // Loading the kernel and initramfs went through large buffers that are
    // free now; give that heap back so the VMM's resident set stays small.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    release_clean_file_pages(&smaps);
    let info = Arc::new(Info {
        started: Instant::now().checked_sub(vm.uptime()).unwrap_or_else(Instant::now),
        vsock_uds: vm.vsock_uds().cloned(),
        guest_ram: vm.guest_ram().to_vec(),
        stopping: Mutex::new(false),
    });
    let (shutdown_tx, shutdown_rx) = mpsc::channel::<()>();
    {
        let info = Arc::clone(&info);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(&listener, &info, &shutdown_tx))
            .map_err(|e| ProcessError::Spawn(PathBuf::from("control thread"), e))?;
    }
    // The control thread never touches the VM: it answers from `info`, and
    // a shutdown request reaches this loop through the channel.
    let requested = loop {
        if shutdown_rx.try_recv().is_ok() {
            break true;
        }
        if vm.wait(Some(Duration::from_millis(100))).is_some() {
            break false;
        }
    };
    let record = finish(vm, requested);
    let exit_path = dir.join(EXIT_FILE);
    let text = serde_json::to_vec(&record).map_err(|e| ProcessError::Json(exit_path.clone(), e))?;
    std::fs::write(&exit_path, text).map_err(file_err(&exit_path))?;
    let _ = std::fs::remove_file(&socket_path);
    Ok(record)
}

/// What the control thread knows of the VM.
#[derive(Debug)]
struct Info {
    started: Instant,
    vsock_uds: Option<PathBuf>,
    guest_ram: Vec<(u64, u64)>,
    stopping: Mutex<bool>,
}

fn finish(vm: Vm, requested: bool) -> ExitRecord {
    let kind = vm.kvm_kind();
    let exit = vm.shutdown();
    let clean = requested || exit.reason == crate::vcpu::StopReason::PowerOff;
    let reason = if requested { "shut down on request".to_owned() } else { vm::explain(&exit.reason, kind) };
    ExitRecord { reason, clean, exits: exit.stats.total(), elapsed_ms: exit.elapsed.as_millis() as u64 }
}

fn serve(listener: &UnixListener, info: &Info, shutdown: &mpsc::Sender<()>) {
    for stream in listener.incoming().flatten() {
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let request: Result<Request, _> = serde_json::from_str(&line);
        let answer = match request {
            Ok(Request::Status) => status(info),
            Ok(Request::Shutdown) => {
                *info.stopping.lock().unwrap_or_else(PoisonError::into_inner) = true;
                let _ = shutdown.send(());
                status(info)
            }
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        let mut out = &stream;
        let _ = writeln!(out, "{answer}");
    }
}

fn status(info: &Info) -> serde_json::Value {
    let stopping = *info.stopping.lock().unwrap_or_else(PoisonError::into_inner);
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (pss, guest) = pss_split(&smaps, &info.guest_ram);
    let status = Status {
        state: if stopping { "stopping" } else { "running" }.to_owned(),
        pid: std::process::id(),
        uptime_ms: info.started.elapsed().as_millis() as u64,
        vsock_uds: info.vsock_uds.clone(),
        pss_kib: pss,
        guest_pss_kib: guest,
        vmm_pss_kib: pss - guest,
    };
    serde_json::to_value(status).unwrap_or_default()
}

/// Read-only file mappings (code, constants) that this process never wrote
/// to: start-up touched much of the binary's code, which the running VM no
/// longer needs mapped. Unmapping their pages is safe (they are clean
/// copies of the file: the next use faults them back in from the page
/// cache) and leaves the VMM's resident set to what it really uses.
pub fn clean_file_mappings(smaps: &str) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let mut current: Option<(u64, u64)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first
            .split_once('-')
            .and_then(|(s, e)| Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?)))
        {
            let perms = words.next().unwrap_or_default();
            let path = words.nth(3).unwrap_or_default();
            let file = path.starts_with('/');
            current = (file && perms.as_bytes().get(1) == Some(&b'-')).then_some((start, end - start));
        } else if first == "Anonymous:" {
            // Pages copied on write (relocated data): keep the mapping.
            let kib: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(1);
            if let (Some(mapping), 0) = (current.take(), kib) {
                found.push(mapping);
            }
        }
    }
    found
}

fn release_clean_file_pages(smaps: &str) {
    for (start, len) in clean_file_mappings(smaps) {
        // SAFETY: the range is a read-only, never-written file mapping of
        // this process (from its own smaps): MADV_DONTNEED only drops the
        // page table entries, and any later access maps the same file
        // contents again. No memory the program owns changes.
        unsafe { libc::madvise(start as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
    }
}

/// Sums `Pss:` over all mappings of an smaps text, and over those inside
/// the guest RAM ranges `(start, length)`: (all, guest), in KiB.
pub fn pss_split(smaps: &str, guest: &[(u64, u64)]) -> (u64, u64) {
    let (mut all, mut in_guest, mut current_is_guest) = (0, 0, false);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first
            .split_once('-')
            .and_then(|(s, e)| Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?)))
        {
            current_is_guest = guest.iter().any(|&(g, len)| start >= g && end <= g + len);
        } else if first == "Pss:" {
            let kib: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            all += kib;
            if current_is_guest {
                in_guest += kib;
            }
        }
    }
    (all, in_guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_split_between_guest_ram_and_the_vmm() {
        let smaps = "\
5600000000-5600001000 r-xp 00000000 08:01 1 /usr/bin/crius
Size:                  4 kB
Pss:                 120 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Pss:              262144 kB
Pss_Dirty:        262144 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
Pss:                  32 kB
";
        let (all, guest) = pss_split(smaps, &[(0x7f00_0000_0000, 0x1000_0000)]);
        assert_eq!((all, guest), (262_296, 262_144));
    }

    #[test]
    fn only_read_only_file_mappings_never_written_are_released() {
        let smaps = "\
5600000000-5600001000 r-xp 00000000 08:01 1 /usr/bin/crius
Anonymous:             0 kB
5600001000-5600002000 r--p 00001000 08:01 1 /usr/bin/crius
Anonymous:             4 kB
5600002000-5600003000 rw-p 00002000 08:01 1 /usr/bin/crius
Anonymous:             0 kB
7f0000000000-7f0000001000 r--p 00000000 00:00 0
Anonymous:             0 kB
7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7ffc00000000-7ffc00001000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";
        assert_eq!(clean_file_mappings(smaps), vec![(0x56_0000_0000, 0x1000), (0x7f00_0000_2000, 0x1000)]);
    }

    #[test]
    fn releasing_this_processs_clean_pages_keeps_it_running() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        assert!(!clean_file_mappings(&smaps).is_empty());
        release_clean_file_pages(&smaps);
        // Code and constants come back as they are used.
        assert_eq!(format!("{}", 6 * 7), "42");
    }

    #[test]
    fn requests_are_one_json_object_per_line() {
        assert_eq!(serde_json::to_string(&Request::Status).expect("json"), r#"{"op":"status"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"shutdown"}"#).expect("parse"), Request::Shutdown);
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn a_missing_config_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = run(dir.path()).expect_err("no config");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
