//! For the kvm-test agent tests: the agent started as crius starts it, in a
//! scratch network namespace, a one-layer busybox rootfs, and a small host:
//! a `guest_proto` session over a blocking unix socket.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::VecDeque;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crius_sandbox::backend::{
    CapabilitySpec, ContainerRequest, FilesystemRequest, PidMode, ProcessRequest, RootfsLayers, UserRequest,
};
use crius_sandbox::cgroups::{Cgroup, DEFAULT_PARENT, detect_host};
use crius_sandbox::seccomp::SeccompProfile;
use guest_proto::codec::{Decoder, StreamId};
use guest_proto::message::{ContainerCreate, ContainerStatus, GuestReply, HostRequest, OutputRecord, Reply, Rootfs};
use guest_proto::session::{Session, SessionConfig, SessionEvent, Side};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How long anything may take.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The busybox applets the containers use.
const APPLETS: &[&str] =
    &["sh", "cat", "echo", "sleep", "nc", "hostname", "grep", "touch", "ls", "true", "seq", "stty"];

/// The agent, started as crius starts it, and what the test made for it.
pub struct Agent {
    _tmp: tempfile::TempDir,
    /// The scratch directory (canonical).
    pub dir: PathBuf,
    /// The agent's socket.
    pub socket: PathBuf,
    /// The agent's state directory.
    pub state: PathBuf,
    /// The host pid of the agent (PID 1 of its namespace).
    pub pid: Pid,
    /// The parent of the containers' cgroups.
    pub cgroup_parent: String,
    netns: Child,
    exited: Option<i32>,
}

impl Agent {
    /// Starts `crius-guest kvm-test` in a fresh network namespace; returns
    /// once it listens.
    pub fn start(name: &str) -> Agent {
        // The agent's PID 1 is re-parented to this process, which reaps it.
        nix::sys::prctl::set_child_subreaper(true).expect("subreaper");
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical");
        let netns =
            Command::new("unshare").args(["--net", "sleep", "600"]).stdin(Stdio::null()).spawn().expect("unshare");
        let own = fs::read_link("/proc/self/ns/net").expect("own netns");
        let ns_path = PathBuf::from(format!("/proc/{}/ns/net", netns.id()));
        assert!(wait_until(|| fs::read_link(&ns_path).is_ok_and(|ns| ns != own)), "no scratch netns");
        let (socket, state) = (dir.join("guest.sock"), dir.join("state"));
        let log = fs::File::create(dir.join("guest.log")).expect("log file");
        let status = Command::new(guest_binary())
            .arg("kvm-test")
            .arg("--listen")
            .arg(&socket)
            .arg("--state")
            .arg(&state)
            .arg("--netns")
            .arg(&ns_path)
            .args(["--hostname", "guest-test"])
            .env("CRIUS_GUEST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .expect("run the launcher");
        let cgroup_parent = format!("{DEFAULT_PARENT}/guest-test-{}-{name}", std::process::id());
        let text = fs::read_to_string(state.join("guest.pid")).unwrap_or_default();
        let pid = Pid::from_raw(text.trim().parse().unwrap_or(0));
        let agent = Agent { _tmp: tmp, dir, socket, state, pid, cgroup_parent, netns, exited: None };
        assert!(status.success() && pid.as_raw() > 0, "launcher: {status}; log:\n{}", agent.log());
        let mode = fs::metadata(&agent.socket).expect("socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket is the host's only");
        agent
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("guest.log")).unwrap_or_default()
    }

    /// The scratch network namespace.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.netns.id()))
    }

    /// A busybox layer: `/bin/busybox` and applet links, `/tmp`.
    pub fn layer(&self) -> PathBuf {
        let layer = self.dir.join("layer");
        if layer.exists() {
            return layer;
        }
        fs::create_dir_all(layer.join("bin")).expect("mkdir bin");
        fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            symlink("/bin/busybox", layer.join("bin").join(applet)).expect("applet link");
        }
        for dir in ["tmp", "etc"] {
            fs::create_dir(layer.join(dir)).expect("mkdir");
        }
        fs::set_permissions(layer.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
        layer
    }

    /// The cgroup of container `id`, relative to the hierarchy roots.
    pub fn cgroup(&self, id: &str) -> String {
        format!("{}/{id}", self.cgroup_parent)
    }

    /// A container running `args` on the busybox layer, in its own cgroup.
    pub fn container(&self, id: &str, args: &[&str]) -> ContainerRequest {
        let layer = self.layer();
        let (upper, work) = (self.dir.join(id).join("upper"), self.dir.join(id).join("work"));
        for dir in [&upper, &work] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        ContainerRequest {
            id: id.into(),
            filesystem: FilesystemRequest {
                rootfs: RootfsLayers { layers: vec![layer], upper, work },
                readonly_rootfs: false,
                mounts: Vec::new(),
                devices: Vec::new(),
                masked_paths: Vec::new(),
                readonly_paths: Vec::new(),
                privileged: false,
            },
            process: ProcessRequest {
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: UserRequest::default(),
                terminal: false,
                stdin: false,
                stdin_once: false,
                no_new_privileges: true,
                capabilities: CapabilitySpec::default(),
                seccomp: SeccompProfile::RuntimeDefault,
                apparmor_profile: None,
                rlimits: Vec::new(),
                oom_score_adj: None,
            },
            pid: PidMode::Container,
            hostname: "guest-test".into(),
            cgroup: Some(self.cgroup(id)),
            resources: None,
            // The host's path: the guest writes its own file instead.
            log_path: Some("/nonexistent/host/ctr.log".into()),
        }
    }

    /// Waits for the agent to exit; its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let mut code = None;
        let exited = wait_until(|| match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => {
                code = Some(c);
                true
            }
            Ok(WaitStatus::Signaled(_, s, _)) => {
                code = Some(128 + s as i32);
                true
            }
            _ => false,
        });
        assert!(exited, "the agent did not exit; log:\n{}", self.log());
        self.exited = code;
        code.unwrap_or(-1)
    }

    /// Processes in the scratch network namespace other than its holder.
    pub fn processes_in_netns(&self) -> Vec<i32> {
        let ns = fs::read_link(self.netns()).expect("netns");
        let holder = i32::try_from(self.netns.id()).expect("pid");
        fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != holder && fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n == ns))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.exited.is_none() && self.pid.as_raw() > 0 {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = wait_until(|| !matches!(waitpid(self.pid, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive)));
        }
        let _ = self.netns.kill();
        let _ = self.netns.wait();
        if let Ok(mode) = detect_host() {
            for rel in ["c1", "c2", "c3"].map(|id| self.cgroup(id)).into_iter().chain([self.cgroup_parent.clone()]) {
                if let Ok(cgroup) = Cgroup::open(&mode, &rel) {
                    let _ = cgroup.delete();
                }
            }
        }
    }
}

/// The agent binary: this package's, or the one `CRIUS_GUEST_BIN` names
/// (the static musl build, say).
pub fn guest_binary() -> PathBuf {
    std::env::var_os("CRIUS_GUEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crius-guest")), PathBuf::from)
}

/// Polls `cond` every 10 ms until it holds or [`TIMEOUT`] passes.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The host end of a connection: a session over a blocking socket. Data
/// received is consumed (credited back) at once.
pub struct Host {
    sock: UnixStream,
    /// The session.
    pub session: Session,
    decoder: Decoder,
    pending: VecDeque<SessionEvent>,
}

impl Host {
    /// Connects and completes the handshake.
    pub fn connect(path: &Path) -> Host {
        let sock = UnixStream::connect(path).expect("connect to the agent");
        let session = Session::new(Side::Host, SessionConfig::new("test-host"));
        let mut host = Host { sock, session, decoder: Decoder::new(), pending: VecDeque::new() };
        host.flush();
        host.wait_event("the handshake", |e| matches!(e, SessionEvent::Ready { .. }));
        host
    }

    /// Writes what the session queued.
    pub fn flush(&mut self) {
        let mut buf = BytesMut::new();
        self.session.write_transmit(&mut buf, usize::MAX).expect("encode");
        if !buf.is_empty() {
            self.sock.write_all(&buf).expect("write to the agent");
        }
    }

    /// Handles what arrives within `wait`; false once the agent closed.
    fn read_some(&mut self, wait: Duration) -> bool {
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = vec![0u8; 64 << 10];
        let n = match self.sock.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return true,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("read from the agent: {e}"),
        };
        let mut chunk = &buf[..n];
        while let Some(frame) = self.decoder.decode(&mut chunk).expect("a frame") {
            if let Some(event) = self.session.handle_frame(frame).expect("a valid frame") {
                if let SessionEvent::Data { stream, data } = &event {
                    self.session.consumed(*stream, data.len()).expect("consume");
                }
                self.pending.push_back(event);
            }
        }
        self.flush();
        true
    }

    /// Takes the first event `pred` accepts, waiting up to [`TIMEOUT`].
    pub fn wait_event(&mut self, what: &str, pred: impl Fn(&SessionEvent) -> bool) -> SessionEvent {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.pending.iter().position(&pred) {
                return self.pending.remove(i).expect("present");
            }
            assert!(Instant::now() < deadline, "no {what} within {TIMEOUT:?}; pending: {:?}", self.pending);
            if !self.read_some(Duration::from_millis(50)) {
                assert!(self.pending.iter().any(&pred), "the agent closed the connection before {what}");
            }
        }
    }

    /// Whether the agent closes the connection within [`TIMEOUT`].
    pub fn wait_closed(&mut self) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if !self.read_some(Duration::from_millis(50)) {
                return true;
            }
        }
        false
    }

    /// Sends a request and waits for its answer.
    pub fn request(&mut self, request: &HostRequest) -> Reply {
        let id = self.session.send_request(request).expect("send a request");
        self.flush();
        match self.wait_event(request.kind(), |e| matches!(e, SessionEvent::Response { id: i, .. } if *i == id)) {
            SessionEvent::Response { reply, .. } => reply,
            other => panic!("{other:?}"),
        }
    }

    /// A request that must succeed.
    pub fn ok(&mut self, request: &HostRequest) -> GuestReply {
        self.request(request).unwrap_or_else(|e| panic!("{} failed: {e}", request.kind()))
    }

    /// Output records of container `id` until `done` holds for the text of
    /// all of them.
    pub fn output_until(&mut self, id: &str, done: impl Fn(&str) -> bool) -> Vec<OutputRecord> {
        let mut records: Vec<OutputRecord> = Vec::new();
        loop {
            let text: String = records.iter().map(|r| String::from_utf8_lossy(&r.data)).collect();
            if done(&text) {
                return records;
            }
            let event = self.wait_event(
                "output",
                |e| matches!(e, SessionEvent::Event(guest_proto::message::GuestEvent::Output(b)) if b.id == id),
            );
            if let SessionEvent::Event(guest_proto::message::GuestEvent::Output(batch)) = event {
                records.extend(batch.records);
            }
        }
    }

    /// Everything the agent sends on `stream` until it closes it.
    pub fn read_stream(&mut self, stream: StreamId) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let event = self.wait_event("stream data", |e| match e {
                SessionEvent::Data { stream: s, .. } | SessionEvent::Finished(s) => *s == stream,
                SessionEvent::StreamReset { stream: s, .. } => *s == stream,
                _ => false,
            });
            match event {
                SessionEvent::Data { data: d, .. } => data.extend_from_slice(&d),
                SessionEvent::Finished(_) => return data,
                other => panic!("stream {stream}: {other:?}"),
            }
        }
    }
}

/// Whether the agent tests can run here: root, busybox-static, unshare.
pub fn can_run(test: &str) -> bool {
    testkit::require_root(test)
        && testkit::require_tool(test, "/bin/busybox", "busybox-static")
        && testkit::require_tool(test, "unshare", "util-linux")
}

/// CreateContainer of `agent.container(id, args)`.
pub fn create(agent: &Agent, id: &str, args: &[&str], log: bool) -> HostRequest {
    create_request(&agent.container(id, args), log)
}

/// CreateContainer of `request`.
pub fn create_request(request: &ContainerRequest, log: bool) -> HostRequest {
    HostRequest::CreateContainer(ContainerCreate {
        id: request.id.clone(),
        spec: serde_json::to_value(request).expect("spec JSON"),
        rootfs: Rootfs { layers: Vec::new(), writable: String::new() },
        log,
    })
}

/// A container's state.
pub fn state(host: &mut Host, id: &str) -> ContainerStatus {
    match host.ok(&HostRequest::ContainerState { id: id.into() }) {
        GuestReply::State(status) => status,
        other => panic!("{other:?}"),
    }
}

/// A minimal pod.
pub fn setup_pod(host: &mut Host) {
    host.ok(&HostRequest::SetupPod(guest_proto::message::PodSetup {
        hostname: "guest-test".into(),
        ..Default::default()
    }));
}
