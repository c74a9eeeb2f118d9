//! Command line: `crius` serves CRI; `crius config` prints the effective
//! config; `crius health` asks a running crius whether it answers.
//! Flags override the config file and keep these exact names, which scripts
//! and the Helm chart rely on.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, LogFormat, LogLevel};

/// crius: a Kubernetes CRI runtime for namespace pods and KVM pods.
#[derive(Debug, Parser)]
#[command(name = "crius", version, about)]
pub struct Cli {
    /// Config file (TOML). Missing at the default path means all defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// CRI unix socket [default: /run/crius/crius.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Persistent state directory [default: /var/lib/crius].
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Runtime state directory [default: /run/crius].
    #[arg(long = "run-root", global = true, value_name = "DIR")]
    pub run_root: Option<PathBuf>,
    /// Log level [default: info].
    #[arg(long = "log-level", global = true, value_enum)]
    pub log_level: Option<LogLevel>,
    /// Log format [default: text].
    #[arg(long = "log-format", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve CRI on the socket (the default).
    Serve,
    /// Print the effective configuration (file plus flags) as TOML.
    Config,
    /// Ask the crius serving the socket for its Version and Status; exit 0
    /// once it answers (whatever its conditions), 1 when it never does.
    Health {
        /// Keep asking for this many seconds before giving up.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Run a virtual machine in the foreground with crius's VMM (KVM checks, demos).
    #[command(subcommand)]
    Vm(VmCommand),
}

/// `crius vm …`: crius's VMM from the command line.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Run a raw guest (`--raw FILE`, then its exit statistics) or boot a
    /// Linux kernel (`--kernel FILE`, by default the installed Debian cloud
    /// kernel), printing the guest's serial output.
    Run(VmRunArgs),
}

/// Arguments of `crius vm run`.
#[derive(Debug, clap::Args)]
pub struct VmRunArgs {
    /// A flat binary to run from its first byte.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    pub raw: Option<PathBuf>,
    /// CPU mode a raw guest starts in.
    #[arg(long, value_enum, default_value = "real")]
    pub mode: RawModeArg,
    /// A Linux kernel (bzImage or ELF vmlinux) to boot; its console prints here
    /// [default: the newest /boot/vmlinuz-*-cloud-amd64].
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// An initramfs for the kernel.
    #[arg(long, value_name = "FILE", conflicts_with = "raw")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (default: crius's serial console and quiet-boot line).
    #[arg(long, value_name = "TEXT", conflicts_with = "raw")]
    pub cmdline: Option<String>,
    /// Stop the guest once its console has printed TEXT.
    #[arg(long, value_name = "TEXT", conflicts_with = "raw")]
    pub until: Option<String>,
    /// Boot even where the host check says the guest cannot run, to see how far it gets.
    #[arg(long, conflicts_with = "raw")]
    pub force: bool,
    /// Guest memory in MiB [default: 16 for a raw guest, 256 for a kernel].
    #[arg(long = "mem", value_name = "MiB")]
    pub mem_mib: Option<u32>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Stop the guest after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

/// `--mode` of a raw guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RawModeArg {
    /// 16-bit real mode.
    Real,
    /// 64-bit long mode, set up by the VMM.
    Long,
}

impl Cli {
    /// The config file, then the flags on top, then validation.
    pub fn effective_config(&self) -> Result<Config, ConfigError> {
        let (path, explicit) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = Config::load(&path, explicit)?;
        if let Some(socket) = &self.socket {
            // Accept the endpoint form crictl and kubelet use, too.
            let text = socket.to_string_lossy();
            config.socket = PathBuf::from(text.strip_prefix("unix://").unwrap_or(&text));
        }
        if let Some(root) = &self.root {
            config.root.clone_from(root);
        }
        if let Some(run_root) = &self.run_root {
            config.run_root.clone_from(run_root);
        }
        if let Some(level) = self.log_level {
            config.log.level = level;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("crius").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("crius.toml");
        std::fs::write(&file, "root = \"/from/file\"\nrun_root = \"/run/file\"\n[log]\nformat = \"json\"\n")
            .expect("write");
        let config = cli(&["--config", file.to_str().expect("utf8"), "--root", "/from/flag", "--log-level", "debug"])
            .effective_config()
            .expect("config");
        assert_eq!(config.root, PathBuf::from("/from/flag"));
        assert_eq!(config.run_root, PathBuf::from("/run/file"));
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, LogLevel::Debug);
    }

    #[test]
    fn socket_flag_accepts_the_unix_endpoint_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.toml");
        let mut parsed = cli(&["config", "--socket", "unix:///tmp/c.sock"]);
        parsed.config = None;
        // No file at the default path on a test machine is fine; use an explicit empty one to be sure.
        std::fs::write(&missing, "").expect("write");
        parsed.config = Some(missing);
        assert_eq!(parsed.effective_config().expect("config").socket, PathBuf::from("/tmp/c.sock"));
        assert!(matches!(parsed.command, Some(Command::Config)));
    }

    #[test]
    fn bad_flag_values_are_refused_by_name() {
        let err = Cli::try_parse_from(["crius", "--log-format", "xml"]).expect_err("bad format");
        let text = err.to_string();
        assert!(text.contains("--log-format") && text.contains("json"), "{text}");
    }

    #[test]
    fn relative_flag_path_fails_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("crius.toml");
        std::fs::write(&file, "").expect("write");
        let err = cli(&["--config", file.to_str().expect("utf8"), "--run-root", "relative"])
            .effective_config()
            .expect_err("relative");
        assert!(err.to_string().contains("run_root"), "{err}");
    }
}
