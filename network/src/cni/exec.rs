//! Running one CNI plugin binary: the CNI_* environment, the config on
//! stdin, the result or the error object on stdout, and a time limit.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::NetError;

/// How long a plugin may run before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest plugin output read.
const MAX_OUTPUT: u64 = 1 << 20;

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
        }
    }
}

/// What every plugin of one pod is told.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// Directories searched for plugin binaries (also `CNI_PATH`).
    pub bin_dirs: &'a [PathBuf],
    /// `CNI_CONTAINERID`: the pod id.
    pub container_id: &'a str,
    /// `CNI_NETNS`; may be empty on DEL when the namespace is gone.
    pub netns: &'a str,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
}

/// Finds a plugin binary in the bin dirs.
pub fn find_plugin(bin_dirs: &[PathBuf], kind: &str) -> Option<PathBuf> {
    bin_dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file())
}

fn plugin_err(kind: &str, command: CniCommand, message: String) -> NetError {
    NetError::Cni { plugin: kind.to_owned(), command: command.as_str(), message }
}

/// Runs plugin `kind` with `config` on stdin; returns its parsed stdout
/// (`Value::Null` when it printed nothing, as DEL and CHECK may).
pub fn run(inv: &Invocation<'_>, kind: &str, command: CniCommand, config: &Value) -> Result<Value, NetError> {
    let err = |message: String| plugin_err(kind, command, message);
    let binary = find_plugin(inv.bin_dirs, kind).ok_or_else(|| {
        let dirs: Vec<String> = inv.bin_dirs.iter().map(|d| d.display().to_string()).collect();
        err(format!("plugin binary not found in {}", dirs.join(", ")))
    })?;
    let cni_path = std::env::join_paths(inv.bin_dirs).map_err(|e| err(format!("CNI_PATH: {e}")))?;
    let mut child = Command::new(&binary)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("start {}: {e}", binary.display())))?;
    let input = serde_json::to_vec(config).map_err(|e| err(format!("encode config: {e}")))?;
    let readers = [child.stdout.take().map(capture), child.stderr.take().map(capture)];
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its config is judged by its exit.
        let _ = stdin.write_all(&input);
    }
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("did not finish within {PLUGIN_TIMEOUT:?}; killed")));
            }
            Err(e) => return Err(err(format!("wait: {e}"))),
        }
    };
    let [stdout, stderr] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    if !status.success() {
        return Err(err(error_message(&stdout, &stderr, status)));
    }
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&stdout).map_err(|e| err(format!("result is not JSON: {e}")))
}

fn capture(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut pipe).take(MAX_OUTPUT).read_to_end(&mut out);
        // Drain the rest so the plugin never blocks on a full pipe.
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        out
    })
}

/// The plugin's CNI error object (`code`, `msg`, `details`), else its stderr.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(stdout) {
        let msg = value.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = value.get("details").and_then(Value::as_str).unwrap_or_default();
        let code = value.get("code").and_then(Value::as_u64).unwrap_or_default();
        if !msg.is_empty() {
            return if details.is_empty() {
                format!("{msg} (code {code})")
            } else {
                format!("{msg}: {details} (code {code})")
            };
        }
    }
    let stderr = String::from_utf8_lossy(stderr);
    format!("exited with {status}: {}", stderr.trim())
}

/// `CNI_ARGS` as kubelet's runtimes pass them.
pub fn kubernetes_args(pod_id: &str, name: &str, namespace: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={pod_id};K8S_POD_UID={uid}"
    )
}
