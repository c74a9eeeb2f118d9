//! The crius configuration: a TOML file whose every key has a default, so
//! that no file is needed, overridden by command-line flags.
//!
//! Unknown keys and bad values are refused when crius starts, naming the key
//! and what is allowed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod handlers;

pub use self::handlers::HandlerConfig;

/// Where crius looks for its config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crius/crius.toml";

/// The effective configuration of one crius process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket that serves CRI (flag `--socket`).
    pub socket: PathBuf,
    /// Persistent state: the state store, images, container layers (flag `--root`).
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot (flag `--run-root`).
    pub run_root: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// The CRI server.
    pub server: ServerConfig,
    /// Container runtime settings.
    pub runtime: RuntimeConfig,
    /// Registries: mirrors, TLS, credentials.
    pub registry: RegistryConfig,
    /// The image store.
    pub images: ImagesConfig,
    /// The pod network.
    pub network: NetworkConfig,
    /// The streaming server (exec, attach, port-forward).
    pub streaming: StreamingConfig,
}

/// `[streaming]`: the server that Exec, Attach and PortForward URLs point at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// Address to listen on; port 0 picks a free port.
    pub address: String,
    /// Seconds a streaming URL stays valid (it is single-use).
    pub token_ttl_secs: u64,
    /// Serve HTTPS with this PEM certificate chain (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self { address: "127.0.0.1:0".into(), token_ttl_secs: 60, tls_cert_file: None, tls_key_file: None }
    }
}

/// `[log]`: logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Least severe level that is printed (flag `--log-level`).
    pub level: LogLevel,
    /// Line format (flag `--log-format`).
    pub format: LogFormat,
}

/// `[server]`: the CRI gRPC server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Permission bits of the CRI socket.
    #[serde(with = "octal_mode")]
    pub socket_mode: u32,
    /// Group id that owns the CRI socket (-1 keeps crius's own group).
    pub socket_gid: i64,
    /// Seconds that in-flight RPCs get to finish after SIGTERM / SIGINT.
    pub shutdown_timeout_secs: u64,
}

/// `[runtime]`: how pods and containers are run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Which cgroup manager crius uses, reported to kubelet by `RuntimeConfig`.
    pub cgroup_driver: CgroupDriver,
    /// RuntimeClass handlers besides the default `""`, by name.
    pub handlers: std::collections::BTreeMap<String, HandlerConfig>,
}

/// `[registry]`: how images are fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// containerd-style `hosts.toml` directory: `<config_path>/<registry>/hosts.toml`
    /// names mirrors, plain-HTTP servers, CA files and `skip_verify`.
    pub config_path: PathBuf,
    /// A docker `config.json` whose `auths` are used when a pull carries no credentials.
    pub auth_file: Option<PathBuf>,
}

/// `[images]`: the image store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    /// A pull that receives no data for this long is cancelled.
    pub pull_progress_timeout_secs: u64,
    /// Largest total of uncompressed bytes one layer may unpack to.
    pub max_layer_unpacked_bytes: u64,
    /// Percent of the image filesystem (bytes and inodes) that pulls leave
    /// free: a download or unpack that would go under it fails (0: no reserve).
    pub min_free_percent: u8,
    /// Images kubelet's garbage collection must never remove (references as pulled).
    pub pinned_images: Vec<String>,
}

/// `[network]`: the pod network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Which network pods get.
    pub mode: NetworkMode,
    /// Bridge of the built-in network (also names crius's nftables table).
    pub bridge: String,
    /// Pod subnets of the built-in network: one, or one IPv4 and one IPv6.
    pub subnets: Vec<String>,
    /// MTU of the bridge and pod interfaces.
    pub mtu: u32,
    /// Masquerade pod traffic that leaves the pod subnets.
    pub masquerade: bool,
    /// The built-in network takes kubelet's pod CIDR (UpdateRuntimeConfig)
    /// in place of `subnets` once kubelet sends one.
    pub use_kubelet_pod_cidr: bool,
    /// CNI mode: directory of network configs.
    pub cni_conf_dir: PathBuf,
    /// CNI mode: directories searched for plugin binaries.
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// Pod network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// CNI when `cni_conf_dir` holds a valid config at start, else the built-in bridge.
    Auto,
    /// crius's built-in bridge, veth and IPAM network.
    Bridge,
    /// Standard CNI plugins, configured in `cni_conf_dir`.
    Cni,
    /// Pods get only a loopback interface; NetworkReady stays false.
    None,
}

impl NetworkConfig {
    /// The subnets, parsed.
    pub fn parsed_subnets(&self) -> Result<Vec<crius_network::ipam::Cidr>, String> {
        self.subnets.iter().map(|s| s.parse().map_err(|e| format!("{e}"))).collect()
    }
}

/// Log severity threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-poll details.
    Trace,
    /// Polling RPCs and internal steps.
    Debug,
    /// Mutating RPCs and lifecycle events.
    Info,
    /// Problems that crius recovers from.
    Warn,
    /// Failures.
    Error,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// cgroup manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// Write cgroupfs directly (works everywhere).
    Cgroupfs,
    /// Ask systemd for scopes and slices (only where systemd is PID 1).
    Systemd,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/crius/crius.sock"),
            root: PathBuf::from("/var/lib/crius"),
            run_root: PathBuf::from("/run/crius"),
            log: LogConfig::default(),
            server: ServerConfig::default(),
            runtime: RuntimeConfig::default(),
            registry: RegistryConfig::default(),
            images: ImagesConfig::default(),
            network: NetworkConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Default for NetworkConfig {
    /// 10.89.0.0/16: clear of the 10.88.0.0/16 that containerd's and podman's
    /// examples use, so both can run on one node.
    fn default() -> Self {
        Self {
            mode: NetworkMode::Auto,
            bridge: "crius0".into(),
            subnets: vec!["10.89.0.0/16".into()],
            mtu: 1500,
            masquerade: true,
            use_kubelet_pod_cidr: true,
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            // Debian's containernetworking-plugins install to /usr/lib/cni.
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { config_path: PathBuf::from("/etc/crius/certs.d"), auth_file: None }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            pull_progress_timeout_secs: 60,
            max_layer_unpacked_bytes: crius_images::unpack::DEFAULT_MAX_BYTES,
            min_free_percent: crius_images::space::DEFAULT_RESERVE_PERCENT,
            pinned_images: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: LogLevel::Info, format: LogFormat::Text }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { socket_mode: 0o660, socket_gid: -1, shutdown_timeout_secs: 30 }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { cgroup_driver: CgroupDriver::Cgroupfs, handlers: std::collections::BTreeMap::new() }
    }
}

impl LogLevel {
    /// The `tracing` filter directive for this level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for CgroupDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cgroupfs => "cgroupfs",
            Self::Systemd => "systemd",
        })
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong kind.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with the key, line and what is allowed.
        message: String,
    },
    /// A value parsed but is not allowed.
    #[error("config key `{key}` = {value}: {allowed}")]
    Invalid {
        /// Dotted key name, as written in the file.
        key: &'static str,
        /// The refused value.
        value: String,
        /// What is allowed instead.
        allowed: String,
    },
}

impl Config {
    /// Reads the config file. A missing file at the default location means
    /// "all defaults"; a missing file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string().trim_end().to_owned() })
    }

    /// Checks the values that parse but cannot work. Run after flags are applied.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [("socket", &self.socket), ("root", &self.root), ("run_root", &self.run_root)] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    value: format!("{:?}", path.display().to_string()),
                    allowed: "an absolute path".into(),
                });
            }
        }
        // sun_path holds 108 bytes including the trailing NUL.
        let socket_len = self.socket.as_os_str().len();
        if socket_len > 107 {
            return Err(ConfigError::Invalid {
                key: "socket",
                value: format!("{:?}", self.socket.display().to_string()),
                allowed: format!("a path of at most 107 bytes (this one has {socket_len})"),
            });
        }
        if self.server.socket_mode > 0o777 {
            return Err(ConfigError::Invalid {
                key: "server.socket_mode",
                value: format!("\"{:o}\"", self.server.socket_mode),
                allowed: "permission bits between \"0\" and \"777\" (octal)".into(),
            });
        }
        if self.server.socket_gid < -1 || self.server.socket_gid > i64::from(u32::MAX - 1) {
            return Err(ConfigError::Invalid {
                key: "server.socket_gid",
                value: self.server.socket_gid.to_string(),
                allowed: "-1 (keep crius's group) or a group id".into(),
            });
        }
        handlers::validate(&self.runtime.handlers)?;
        if self.images.pull_progress_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "images.pull_progress_timeout_secs",
                value: "0".into(),
                allowed: "a number of seconds greater than 0".into(),
            });
        }
        if self.images.max_layer_unpacked_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "images.max_layer_unpacked_bytes",
                value: "0".into(),
                allowed: "a number of bytes greater than 0".into(),
            });
        }
        if self.images.min_free_percent > 99 {
            return Err(ConfigError::Invalid {
                key: "images.min_free_percent",
                value: self.images.min_free_percent.to_string(),
                allowed: "a percentage from 0 (no reserve) to 99".into(),
            });
        }
        if !self.registry.config_path.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "registry.config_path",
                value: format!("{:?}", self.registry.config_path.display().to_string()),
                allowed: "an absolute path".into(),
            });
        }
        if self.streaming.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "streaming.address",
                value: format!("{:?}", self.streaming.address),
                allowed: "an IP address and port, such as \"127.0.0.1:0\" (0: any free port)".into(),
            });
        }
        if self.streaming.tls_cert_file.is_some() != self.streaming.tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "streaming.tls_cert_file",
                value: format!("{:?} / {:?}", self.streaming.tls_cert_file, self.streaming.tls_key_file),
                allowed: "both tls_cert_file and tls_key_file, or neither".into(),
            });
        }
        if self.streaming.token_ttl_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "streaming.token_ttl_secs",
                value: "0".into(),
                allowed: "a number of seconds greater than 0".into(),
            });
        }
        if matches!(self.network.mode, NetworkMode::Bridge | NetworkMode::Auto) {
            let invalid = |allowed: String| ConfigError::Invalid {
                key: "network",
                value: format!(
                    "bridge = {:?}, subnets = {:?}, mtu = {}",
                    self.network.bridge, self.network.subnets, self.network.mtu
                ),
                allowed,
            };
            let subnets = self.network.parsed_subnets().map_err(invalid)?;
            let bridge = crius_network::bridge::BridgeConfig {
                bridge: self.network.bridge.clone(),
                subnets,
                mtu: self.network.mtu,
                masquerade: self.network.masquerade,
                ipam_dir: PathBuf::new(),
                host_ns: None,
            };
            bridge.validate().map_err(|e| invalid(e.to_string()))?;
        }
        if self.runtime.cgroup_driver == CgroupDriver::Systemd && !systemd_is_running() {
            return Err(ConfigError::Invalid {
                key: "runtime.cgroup_driver",
                value: "\"systemd\"".into(),
                allowed: "\"cgroupfs\" (systemd is not running on this host: /run/systemd/system is missing)".into(),
            });
        }
        Ok(())
    }

    /// The effective configuration as TOML, as `crius config` prints it.
    pub fn to_toml(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The test systemd itself documents for "booted with systemd".
fn systemd_is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Socket modes are written as octal strings ("660"), as in `chmod`.
mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.strip_prefix("0o").unwrap_or(&text);
        u32::from_str_radix(digits, 8).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid socket mode {text:?}: expected octal permission bits such as \"660\""
            ))
        })
    }
}

#[cfg(test)]
mod tests;
