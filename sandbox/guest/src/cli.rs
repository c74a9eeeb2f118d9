//! The command line: which role this process plays.
//!
//! ```text
//! crius-guest                                   PID 1 of a VM (no arguments)
//! crius-guest kvm-test --listen <socket> --state <dir> --netns <path> [--hostname <name>]
//! crius-guest internal <pin-ns|pod-init|monitor|init|exec> ...
//! ```
//!
//! and two roles the agent starts itself (hidden):
//!
//! ```text
//! crius-guest pid1 --listen <socket> --state <dir> [--hostname <name>]       kvm-test's PID 1
//! crius-guest serve (--unix <socket> | --vsock <port>) --run-root <dir> [--kvm-test]   the server
//! ```
//!
//! Flags take their value as the next argument or after `=`.

use std::ffi::OsString;
use std::path::PathBuf;

/// The vsock port the guest listens on in a VM.
pub const VSOCK_PORT: u32 = 1024;

/// What the process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of a VM: mounts, then runs the server and reaps orphans.
    VmInit,
    /// `kvm-test`: enters the pod's network namespace and new namespaces,
    /// starts [`Role::KvmTestInit`] as their PID 1, writes its pid, exits.
    KvmTest(KvmTestArgs),
    /// PID 1 of kvm-test's PID namespace: mounts, runs the server, reaps orphans.
    KvmTestInit(KvmTestArgs),
    /// The server: serves the guest protocol and runs the containers.
    Serve(ServeArgs),
    /// `internal ...`: the namespace runtime's re-executions.
    Internal(Vec<OsString>),
}

/// `kvm-test`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmTestArgs {
    /// The unix socket to listen on.
    pub listen: PathBuf,
    /// The agent's state directory (`guest.pid`, `run/`).
    pub state: PathBuf,
    /// The pod's network namespace (entered by the launcher only).
    pub netns: Option<PathBuf>,
    /// The hostname to set in the new UTS namespace.
    pub hostname: Option<String>,
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket path.
    Unix(PathBuf),
    /// An AF_VSOCK port (any CID).
    Vsock(u32),
}

/// `serve`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// Where to listen.
    pub listen: Listen,
    /// The namespace runtime's run root.
    pub run_root: PathBuf,
    /// Whether this is kvm-test (exit on Shutdown) rather than a VM.
    pub kvm_test: bool,
}

/// Arguments that name no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// No arguments, and not PID 1.
    #[error("no command: run as `kvm-test ...`, `internal ...`, or with no arguments as PID 1 of a VM")]
    NotPid1,
    /// An unknown command.
    #[error("unknown command {0:?}")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// A required flag is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// An argument that is not understood.
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
    /// A value that is not valid.
    #[error("invalid value {value:?} for {flag}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
    },
}

/// The role for the arguments after the program name; `pid` is this
/// process's id (1 makes an empty command line a VM's init).
pub fn parse(args: &[OsString], pid: u32) -> Result<Role, CliError> {
    let Some((command, rest)) = args.split_first() else {
        return if pid == 1 { Ok(Role::VmInit) } else { Err(CliError::NotPid1) };
    };
    match command.to_str() {
        Some("internal") => Ok(Role::Internal(rest.to_vec())),
        Some("kvm-test") => {
            let args = kvm_test_args(rest, true)?;
            Ok(Role::KvmTest(args))
        }
        Some("pid1") => Ok(Role::KvmTestInit(kvm_test_args(rest, false)?)),
        Some("serve") => serve_args(rest).map(Role::Serve),
        _ => Err(CliError::Unknown(command.to_string_lossy().into_owned())),
    }
}

/// Flags as `(name, value)` pairs, for the flags in `valued` (which take a
/// value) and `switches`.
fn flags(
    rest: &[OsString],
    valued: &[&'static str],
    switches: &[&'static str],
) -> Result<Vec<(&'static str, Option<OsString>)>, CliError> {
    let mut out = Vec::new();
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_str().ok_or_else(|| CliError::Unexpected(arg.to_string_lossy().into_owned()))?;
        if let Some(flag) = switches.iter().find(|f| **f == text) {
            out.push((*flag, None));
            continue;
        }
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) => (name, Some(OsString::from(value))),
            None => (text, None),
        };
        let flag = valued.iter().find(|f| **f == name).ok_or_else(|| CliError::Unexpected(text.to_owned()))?;
        let value = match inline {
            Some(v) => v,
            None => args.next().cloned().ok_or(CliError::MissingValue(flag))?,
        };
        out.push((*flag, Some(value)));
    }
    Ok(out)
}

fn kvm_test_args(rest: &[OsString], launcher: bool) -> Result<KvmTestArgs, CliError> {
    let valued: &[&str] = if launcher {
        &["--listen", "--state", "--netns", "--hostname"]
    } else {
        &["--listen", "--state", "--hostname"]
    };
    let (mut listen, mut state, mut netns, mut hostname) = (None, None, None, None);
    for (flag, value) in flags(rest, valued, &[])? {
        let value = value.unwrap_or_default();
        match flag {
            "--listen" => listen = Some(PathBuf::from(value)),
            "--state" => state = Some(PathBuf::from(value)),
            "--netns" => netns = Some(PathBuf::from(value)),
            _ => {
                let name = value
                    .into_string()
                    .map_err(|v| CliError::Invalid { flag: "--hostname", value: v.to_string_lossy().into_owned() })?;
                hostname = Some(name);
            }
        }
    }
    let netns = match (launcher, netns) {
        (true, None) => return Err(CliError::Missing("--netns")),
        (_, netns) => netns,
    };
    Ok(KvmTestArgs {
        listen: listen.ok_or(CliError::Missing("--listen"))?,
        state: state.ok_or(CliError::Missing("--state"))?,
        netns,
        hostname,
    })
}

fn serve_args(rest: &[OsString]) -> Result<ServeArgs, CliError> {
    let (mut listen, mut run_root, mut kvm_test) = (None, None, false);
    for (flag, value) in flags(rest, &["--unix", "--vsock", "--run-root"], &["--kvm-test"])? {
        let value = value.unwrap_or_default();
        match flag {
            "--unix" => listen = Some(Listen::Unix(PathBuf::from(value))),
            "--vsock" => {
                let text = value.to_string_lossy().into_owned();
                let port = text.parse().map_err(|_| CliError::Invalid { flag: "--vsock", value: text })?;
                listen = Some(Listen::Vsock(port));
            }
            "--run-root" => run_root = Some(PathBuf::from(value)),
            _ => kvm_test = true,
        }
    }
    Ok(ServeArgs {
        listen: listen.ok_or(CliError::Missing("--unix or --vsock"))?,
        run_root: run_root.ok_or(CliError::Missing("--run-root"))?,
        kvm_test,
    })
}

/// The arguments of `pid1` for the launcher to pass on.
pub fn pid1_args(args: &KvmTestArgs) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["pid1".into(), "--listen".into(), args.listen.clone().into()];
    out.extend(["--state".into(), args.state.clone().into()]);
    if let Some(name) = &args.hostname {
        out.extend(["--hostname".into(), name.into()]);
    }
    out
}

/// The arguments of `serve`.
pub fn serve_command(args: &ServeArgs) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec!["serve".into()];
    match &args.listen {
        Listen::Unix(path) => out.extend(["--unix".into(), path.clone().into()]),
        Listen::Vsock(port) => out.extend(["--vsock".into(), port.to_string().into()]),
    }
    out.extend(["--run-root".into(), args.run_root.clone().into()]);
    if args.kvm_test {
        out.push("--kvm-test".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn an_empty_command_line_is_a_vm_init_only_as_pid_1() {
        assert_eq!(parse(&[], 1), Ok(Role::VmInit));
        assert_eq!(parse(&[], 42), Err(CliError::NotPid1));
    }

    #[test]
    fn kvm_test_takes_its_flags() {
        let role = parse(
            &args(&["kvm-test", "--listen", "/s/g.sock", "--state=/s", "--netns", "/run/netns/p", "--hostname", "web"]),
            7,
        );
        let expected = KvmTestArgs {
            listen: "/s/g.sock".into(),
            state: "/s".into(),
            netns: Some("/run/netns/p".into()),
            hostname: Some("web".into()),
        };
        assert_eq!(role, Ok(Role::KvmTest(expected.clone())));
        let pid1 = pid1_args(&expected);
        assert_eq!(
            parse(&pid1, 1),
            Ok(Role::KvmTestInit(KvmTestArgs { netns: None, ..expected })),
            "the launcher's arguments for PID 1 parse back"
        );
        assert_eq!(
            parse(&args(&["kvm-test", "--listen", "/x", "--state", "/s"]), 7),
            Err(CliError::Missing("--netns"))
        );
        assert_eq!(parse(&args(&["kvm-test", "--listen"]), 7), Err(CliError::MissingValue("--listen")));
        assert_eq!(parse(&args(&["kvm-test", "--bogus", "1"]), 7), Err(CliError::Unexpected("--bogus".into())));
        assert!(parse(&args(&["pid1", "--listen", "/x", "--state", "/s", "--netns", "/n"]), 1).is_err());
    }

    #[test]
    fn serve_round_trips() {
        for listen in [Listen::Unix("/s/g.sock".into()), Listen::Vsock(VSOCK_PORT)] {
            for kvm_test in [true, false] {
                let serve = ServeArgs { listen: listen.clone(), run_root: "/run/crius-guest".into(), kvm_test };
                assert_eq!(parse(&serve_command(&serve), 2), Ok(Role::Serve(serve)));
            }
        }
        assert!(matches!(
            parse(&args(&["serve", "--vsock", "x", "--run-root", "/r"]), 2),
            Err(CliError::Invalid { .. })
        ));
        assert_eq!(parse(&args(&["serve", "--run-root", "/r"]), 2), Err(CliError::Missing("--unix or --vsock")));
    }

    #[test]
    fn internal_passes_the_rest_on() {
        assert_eq!(parse(&args(&["internal", "monitor", "/b"]), 5), Ok(Role::Internal(args(&["monitor", "/b"]))));
        assert_eq!(parse(&args(&["run"]), 5), Err(CliError::Unknown("run".into())));
    }
}
