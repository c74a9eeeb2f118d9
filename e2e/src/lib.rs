//! Test kit for the black-box tests: start the real `crius` binary on
//! throwaway directories, connect CRI clients to its socket, and wait for
//! things without fixed sleeps.
//!
//! The binary is `$CRIUS_BIN`, or `crius` in the same target directory as the
//! test executable (`cargo build -p crius` first; the test command does).
//!
//! [`registry`] runs a real local registry and pushes test images to it;
//! [`images`] has the helpers of the image service tests; [`hostile`]
//! builds hostile image parts of any size as streams, and
//! [`fake_registry`] serves them (for `examples/hostile_pull_rss.rs`).
#![warn(missing_docs)]

pub mod containers;
pub mod fake_registry;
pub mod hostile;
pub mod images;
pub mod pod_net;
pub mod registry;
pub mod ws;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long crius may take to start answering on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The crius binary under test.
pub fn crius_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CRIUS_BIN") {
        return Ok(PathBuf::from(path));
    }
    // target/<profile>/deps/<test> -> target/<profile>/crius
    let exe = std::env::current_exe().context("locate test executable")?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test executable has no target directory")?;
    let binary = profile_dir.join("crius");
    if !binary.exists() {
        bail!("{} not found: run `cargo build -p crius` first or set CRIUS_BIN", binary.display());
    }
    Ok(binary)
}

/// Directories for one crius: socket, root and run root inside a temp dir.
#[derive(Debug)]
pub struct CriusDirs {
    /// Keeps the directory alive.
    pub temp: tempfile::TempDir,
    /// `--socket`.
    pub socket: PathBuf,
    /// `--root`.
    pub root: PathBuf,
    /// `--run-root`.
    pub run_root: PathBuf,
    /// `--config`, unless a test passes its own: pods get no network, so
    /// tests neither change the host's network nor collide with each other.
    pub config: PathBuf,
}

/// The config every test crius gets unless it passes `--config`.
pub const TEST_CONFIG: &str = "[network]\nmode = \"none\"\n";

impl CriusDirs {
    /// Fresh directories; the socket's directory does not exist yet (crius makes it).
    pub fn new() -> Result<Self> {
        let temp = tempfile::Builder::new().prefix("crius-e2e-").tempdir().context("tempdir")?;
        let run_root = temp.path().join("run");
        let config = temp.path().join("crius.toml");
        std::fs::write(&config, TEST_CONFIG).context("write test config")?;
        Ok(Self { socket: run_root.join("crius.sock"), root: temp.path().join("root"), run_root, config, temp })
    }

    /// The standard flags pointing crius at these directories.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket.display().to_string(),
            "--root".into(),
            self.root.display().to_string(),
            "--run-root".into(),
            self.run_root.display().to_string(),
        ]
    }
}

/// A running crius process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Crius {
    child: Option<Child>,
    /// Its socket.
    pub socket: PathBuf,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Crius {
    /// Starts crius with `dirs` and `extra` flags, and waits until its socket answers `Version`.
    pub async fn start(dirs: &CriusDirs, extra: &[&str]) -> Result<Self> {
        let log = dirs.temp.path().join(format!("crius-{}.log", unique()));
        let mut crius = Self::spawn(dirs, extra, &log)?;
        let socket = dirs.socket.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(channel) = connect(&socket).await
                && RuntimeServiceClient::new(channel).version(cri_api::v1::VersionRequest::default()).await.is_ok()
            {
                return Ok(crius);
            }
            if let Some(status) = crius.try_exit_status()? {
                bail!("crius exited during start with {status}:\n{}", read_log(&log));
            }
            if Instant::now() > deadline {
                bail!("crius did not answer on {} within {START_TIMEOUT:?}:\n{}", socket.display(), read_log(&log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts crius without waiting for it (for tests that expect it to fail).
    pub fn spawn(dirs: &CriusDirs, extra: &[&str], log: &Path) -> Result<Self> {
        let stderr = File::create(log).context("create log file")?;
        let mut command = Command::new(crius_binary()?);
        command.args(dirs.args());
        if !extra.contains(&"--config") {
            command.arg("--config").arg(&dirs.config);
        }
        let child = command
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawn crius")?;
        Ok(Self { child: Some(child), socket: dirs.socket.clone(), log: log.to_path_buf() })
    }

    /// Its pid.
    pub fn pid(&self) -> Pid {
        let id = self.child.as_ref().map_or(0, Child::id);
        Pid::from_raw(i32::try_from(id).unwrap_or(0))
    }

    /// Sends `signal` to crius.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid(), signal).with_context(|| format!("send {signal} to crius"))
    }

    /// Waits up to `timeout` for crius to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("crius still running after {timeout:?}:\n{}", read_log(&self.log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("wait for crius"),
            None => bail!("crius was already reaped"),
        }
    }

    /// Everything crius logged so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// A RuntimeService client on its socket.
    pub async fn runtime(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(RuntimeServiceClient::new(connect(&self.socket).await?))
    }

    /// An ImageService client on its socket.
    pub async fn images(&self) -> Result<ImageServiceClient<Channel>> {
        Ok(ImageServiceClient::new(connect(&self.socket).await?))
    }
}

impl Drop for Crius {
    /// Removes every pod the test left (containers keep running after crius
    /// dies, by design, so a test must not leave any), then kills crius. A
    /// crius that already exited (a test that killed it) is left as it is.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                remove_all_pods(&self.socket);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops and removes every pod on the crius at `socket`, on a thread of its
/// own (a `Drop` may run inside the test's runtime).
fn remove_all_pods(socket: &Path) {
    let socket = socket.to_owned();
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            let work = async {
                let mut rt = RuntimeServiceClient::new(connect(&socket).await.ok()?);
                let pods = rt.list_pod_sandbox(cri_api::v1::ListPodSandboxRequest::default()).await.ok()?;
                for pod in pods.into_inner().items {
                    let id = pod.id;
                    let _ =
                        rt.stop_pod_sandbox(cri_api::v1::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await;
                    let _ = rt.remove_pod_sandbox(cri_api::v1::RemovePodSandboxRequest { pod_sandbox_id: id }).await;
                }
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), work).await;
        });
    });
    let _ = cleanup.join();
}

/// A gRPC channel over the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<Channel> {
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .context("connect to crius socket")?;
    Ok(channel)
}

/// Runs the crius binary to completion with `args` (for `crius config` and start failures).
pub fn run_crius(args: &[&str]) -> Result<std::process::Output> {
    Command::new(crius_binary()?).args(args).stdin(Stdio::null()).output().context("run crius")
}

/// Mount points under `dir` in this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// How many processes have a command line that `matches`.
pub fn count_processes(matches: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| matches(&String::from_utf8_lossy(&c))))
        .count()
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<no log at {}: {e}>", path.display()))
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A pod config with only its metadata: `name` in namespace `e2e`, uid `uid-<name>`.
pub fn pod_config(name: &str) -> cri_api::v1::PodSandboxConfig {
    cri_api::v1::PodSandboxConfig {
        metadata: Some(cri_api::v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        ..cri_api::v1::PodSandboxConfig::default()
    }
}
