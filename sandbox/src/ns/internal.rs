//! The `internal` re-executions every binary that hosts the namespace
//! runtime must serve (`crius internal ...`, `crius-guest internal ...`):
//! the processes [`crate::ns::backend::NsBackend`] starts with its
//! `self_exe`. The arguments are exactly what this crate passes when it
//! spawns them, so this small parser needs no argument library:
//!
//! ```text
//! internal pin-ns <dir> [--net] [--ipc] [--uts] [--pid] [--hostname NAME] [--sysctl KEY=VALUE]...
//! internal pod-init
//! internal monitor <bundle>
//! internal init <bundle>
//! internal exec <bundle> <request.json>
//! ```
//!
//! (`--hostname=NAME` and `--sysctl=KEY=VALUE` are accepted too.)

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;

use super::pod::PodNamespaces;

/// One internal process and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Internal {
    /// Create namespaces and pin them onto `<dir>/{net,ipc,uts,pid}`.
    PinNs {
        /// Directory for the namespace files.
        dir: PathBuf,
        /// Which namespaces to create.
        namespaces: PodNamespaces,
        /// Hostname to set in a new UTS namespace.
        hostname: Option<String>,
        /// Sysctls to write in the new namespaces.
        sysctls: BTreeMap<String, String>,
    },
    /// PID 1 of a pod's shared PID namespace.
    PodInit,
    /// A container's monitor.
    Monitor {
        /// The container's bundle.
        bundle: PathBuf,
    },
    /// A container's init.
    Init {
        /// The container's bundle.
        bundle: PathBuf,
    },
    /// A command inside a running container.
    Exec {
        /// The container's bundle.
        bundle: PathBuf,
        /// The request file (`crate::ns::exec::ExecRequest` as JSON).
        request: PathBuf,
    },
}

/// Arguments that name no internal process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InternalArgsError {
    /// No process named.
    #[error("missing the internal command (pin-ns, pod-init, monitor, init, exec)")]
    Missing,
    /// An unknown process.
    #[error("unknown internal command {0:?}")]
    Unknown(String),
    /// A required argument is missing.
    #[error("{command}: missing {what}")]
    MissingArgument {
        /// The command.
        command: &'static str,
        /// The argument.
        what: &'static str,
    },
    /// An argument the command does not take.
    #[error("{command}: unexpected argument {argument:?}")]
    Unexpected {
        /// The command.
        command: &'static str,
        /// The argument, lossily.
        argument: String,
    },
    /// A flag value that is not UTF-8 or not `KEY=VALUE`.
    #[error("{command}: invalid value for {flag}: {value:?}")]
    InvalidValue {
        /// The command.
        command: &'static str,
        /// The flag.
        flag: &'static str,
        /// The value, lossily.
        value: String,
    },
}

impl Internal {
    /// Parses the arguments that follow `internal`.
    pub fn parse(args: &[OsString]) -> Result<Self, InternalArgsError> {
        let (command, rest) = args.split_first().ok_or(InternalArgsError::Missing)?;
        match command.to_str() {
            Some("pin-ns") => parse_pin_ns(rest),
            Some("pod-init") => {
                no_more("pod-init", rest)?;
                Ok(Internal::PodInit)
            }
            Some("monitor") => {
                let [bundle] = positional::<1>("monitor", rest, ["bundle"])?;
                Ok(Internal::Monitor { bundle })
            }
            Some("init") => {
                let [bundle] = positional::<1>("init", rest, ["bundle"])?;
                Ok(Internal::Init { bundle })
            }
            Some("exec") => {
                let [bundle, request] = positional::<2>("exec", rest, ["bundle", "request file"])?;
                Ok(Internal::Exec { bundle, request })
            }
            _ => Err(InternalArgsError::Unknown(command.to_string_lossy().into_owned())),
        }
    }
}

fn no_more(command: &'static str, rest: &[OsString]) -> Result<(), InternalArgsError> {
    match rest.first() {
        Some(extra) => Err(InternalArgsError::Unexpected { command, argument: extra.to_string_lossy().into_owned() }),
        None => Ok(()),
    }
}

fn positional<const N: usize>(
    command: &'static str,
    rest: &[OsString],
    names: [&'static str; N],
) -> Result<[PathBuf; N], InternalArgsError> {
    if rest.len() > N {
        no_more(command, &rest[N..])?;
    }
    let mut out: [PathBuf; N] = std::array::from_fn(|_| PathBuf::new());
    for (i, slot) in out.iter_mut().enumerate() {
        let arg = rest.get(i).ok_or(InternalArgsError::MissingArgument { command, what: names[i] })?;
        *slot = PathBuf::from(arg);
    }
    Ok(out)
}

fn parse_pin_ns(rest: &[OsString]) -> Result<Internal, InternalArgsError> {
    const COMMAND: &str = "pin-ns";
    let mut dir = None;
    let mut namespaces = PodNamespaces { net: false, ipc: false, uts: false, pid: false };
    let (mut hostname, mut sysctls) = (None, BTreeMap::new());
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_str();
        // `--flag VALUE` or `--flag=VALUE`.
        let mut value = |flag: &'static str| -> Result<String, InternalArgsError> {
            let inline = text.and_then(|t| t.strip_prefix(flag)).and_then(|t| t.strip_prefix('='));
            let raw: &OsStr = match inline {
                Some(v) => OsStr::new(v),
                None => args.next().ok_or(InternalArgsError::MissingArgument { command: COMMAND, what: flag })?,
            };
            raw.to_str().map(str::to_owned).ok_or_else(|| InternalArgsError::InvalidValue {
                command: COMMAND,
                flag,
                value: raw.to_string_lossy().into_owned(),
            })
        };
        match text {
            Some("--net") => namespaces.net = true,
            Some("--ipc") => namespaces.ipc = true,
            Some("--uts") => namespaces.uts = true,
            Some("--pid") => namespaces.pid = true,
            Some(t) if t == "--hostname" || t.starts_with("--hostname=") => hostname = Some(value("--hostname")?),
            Some(t) if t == "--sysctl" || t.starts_with("--sysctl=") => {
                let kv = value("--sysctl")?;
                let (key, val) = kv.split_once('=').ok_or_else(|| InternalArgsError::InvalidValue {
                    command: COMMAND,
                    flag: "--sysctl",
                    value: kv.clone(),
                })?;
                sysctls.insert(key.to_owned(), val.to_owned());
            }
            Some(t) if t.starts_with('-') => {
                return Err(InternalArgsError::Unexpected { command: COMMAND, argument: t.to_owned() });
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(arg)),
            _ => {
                return Err(InternalArgsError::Unexpected {
                    command: COMMAND,
                    argument: arg.to_string_lossy().into_owned(),
                });
            }
        }
    }
    let dir = dir.ok_or(InternalArgsError::MissingArgument { command: COMMAND, what: "namespace directory" })?;
    Ok(Internal::PinNs { dir, namespaces, hostname, sysctls })
}

/// Runs the internal process the arguments after `internal` name, and
/// returns its exit code. Errors are printed to stderr, prefixed with
/// `program internal`. Most commands only return on failure: they exec or
/// exit themselves.
pub fn run(program: &str, args: &[OsString]) -> ExitCode {
    let internal = match Internal::parse(args) {
        Ok(internal) => internal,
        Err(e) => {
            eprintln!("{program} internal: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &internal {
        Internal::PodInit => super::pod::pod_init().map_err(|e| e.to_string()),
        Internal::PinNs { dir, namespaces, hostname, sysctls } => {
            super::pod::pin_namespaces(dir, *namespaces, hostname.as_deref(), sysctls)
                .map_err(|e| crate::error_report(&e))
        }
        Internal::Monitor { bundle } => {
            let exe = PathBuf::from("/proc/self/exe");
            Err(crate::error_report(&super::monitor::run(bundle, &exe)))
        }
        Internal::Init { bundle } => Err(crate::error_report(&super::init::run(bundle))),
        Internal::Exec { bundle, request } => {
            use super::exec;
            let failure = match exec::ExecRequest::load(request) {
                Ok(request) => exec::run(bundle, &request),
                Err(e) => e,
            };
            eprintln!("{program} internal exec: {}", failure.report());
            return ExitCode::from(u8::try_from(failure.exit_code()).unwrap_or(255));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{program} internal: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_command_parses_as_this_crate_spawns_it() {
        let none = PodNamespaces { net: false, ipc: false, uts: false, pid: false };
        assert_eq!(
            Internal::parse(&args(&["pin-ns", "/r/ns", "--net", "--uts", "--hostname", "web", "--sysctl", "a.b=1"])),
            Ok(Internal::PinNs {
                dir: "/r/ns".into(),
                namespaces: PodNamespaces { net: true, uts: true, ..none },
                hostname: Some("web".into()),
                sysctls: BTreeMap::from([("a.b".into(), "1".into())]),
            })
        );
        assert_eq!(
            Internal::parse(&args(&["pin-ns", "--pid", "--ipc", "--hostname=h", "--sysctl=k=v=w", "/d"])),
            Ok(Internal::PinNs {
                dir: "/d".into(),
                namespaces: PodNamespaces { ipc: true, pid: true, ..none },
                hostname: Some("h".into()),
                sysctls: BTreeMap::from([("k".into(), "v=w".into())]),
            })
        );
        assert_eq!(Internal::parse(&args(&["pod-init"])), Ok(Internal::PodInit));
        assert_eq!(Internal::parse(&args(&["monitor", "/b"])), Ok(Internal::Monitor { bundle: "/b".into() }));
        assert_eq!(Internal::parse(&args(&["init", "/b"])), Ok(Internal::Init { bundle: "/b".into() }));
        assert_eq!(
            Internal::parse(&args(&["exec", "/b", "/b/exec-1.json"])),
            Ok(Internal::Exec { bundle: "/b".into(), request: "/b/exec-1.json".into() })
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        use InternalArgsError::*;
        assert_eq!(Internal::parse(&[]), Err(Missing));
        assert_eq!(Internal::parse(&args(&["serve"])), Err(Unknown("serve".into())));
        assert!(matches!(Internal::parse(&args(&["monitor"])), Err(MissingArgument { what: "bundle", .. })));
        assert!(matches!(Internal::parse(&args(&["exec", "/b"])), Err(MissingArgument { .. })));
        assert!(matches!(Internal::parse(&args(&["init", "/b", "x"])), Err(Unexpected { .. })));
        assert!(matches!(Internal::parse(&args(&["pod-init", "x"])), Err(Unexpected { .. })));
        assert!(matches!(Internal::parse(&args(&["pin-ns"])), Err(MissingArgument { .. })));
        assert!(matches!(Internal::parse(&args(&["pin-ns", "/d", "/e"])), Err(Unexpected { .. })));
        assert!(matches!(Internal::parse(&args(&["pin-ns", "/d", "--user"])), Err(Unexpected { .. })));
        assert!(matches!(Internal::parse(&args(&["pin-ns", "/d", "--hostname"])), Err(MissingArgument { .. })));
        assert!(matches!(Internal::parse(&args(&["pin-ns", "/d", "--sysctl", "novalue"])), Err(InvalidValue { .. })));
    }
}
