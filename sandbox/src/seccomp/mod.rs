//! Seccomp: compiles a container's seccomp profile into a BPF program for the
//! native architecture and installs it.
//!
//! Profiles are in the OCI format (runtime-spec `linux.seccomp`). The
//! runtime default profile is such a file too, embedded (`default.json`), and
//! takes the same path as a `localhost/` profile. It uses Docker's
//! `includes`/`excludes` capability conditions, which are honoured for
//! localhost profiles as well.
//!
//! Limits: only the native architecture's ABI is allowed. Calls from other
//! ABIs (i386 `int 0x80`, x32) kill the process, whatever the profile's
//! `architectures` say. `SCMP_ACT_NOTIFY` and `flags` are not supported; the
//! first is an error, the second is ignored.

use std::collections::HashSet;
use std::path::PathBuf;

use seccompiler::{BpfProgram, TargetArch};

mod bpf;
mod plan;
mod profile;
mod table_aarch64;
mod table_x86_64;
#[cfg(test)]
mod tests;

/// The runtime default profile (OCI format, Docker capability conditions).
const DEFAULT_PROFILE: &str = include_str!("default.json");
/// Name of the runtime default profile in messages.
const DEFAULT_ORIGIN: &str = "runtime/default";

/// Which seccomp profile a container runs under.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SeccompProfile {
    /// No filter.
    Unconfined,
    /// crius's built-in default profile.
    RuntimeDefault,
    /// An OCI seccomp profile file on the node.
    Localhost(PathBuf),
}

/// Failures to load, compile or install a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file could not be read.
    #[error("read seccomp profile {path}")]
    Read {
        /// The profile file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The profile is not valid JSON of the expected shape.
    #[error("parse seccomp profile {profile}")]
    Parse {
        /// The profile (file path or `runtime/default`).
        profile: String,
        /// The JSON error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value crius cannot make sense of.
    #[error("seccomp profile {profile}: invalid {field}: {reason}")]
    Malformed {
        /// The profile (file path or `runtime/default`).
        profile: String,
        /// The field, as a path (`syscalls[2].args[0].op`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The profile asks for something crius does not implement.
    #[error("unsupported seccomp feature: {what}")]
    Unsupported {
        /// The feature.
        what: String,
    },
    /// seccompiler rejected the rules.
    #[error("compile seccomp profile {profile}")]
    Compile {
        /// The profile (file path or `runtime/default`).
        profile: String,
        /// The compiler error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The program exceeds the kernel's length limit.
    #[error("seccomp profile {profile} needs {len} bpf instructions, more than the kernel's {max}")]
    TooLarge {
        /// The profile (file path or `runtime/default`).
        profile: String,
        /// Instructions needed.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The kernel refused the filter.
    #[error("install seccomp filter")]
    Apply {
        /// The error from prctl or seccomp.
        #[source]
        source: seccompiler::Error,
    },
}

/// Compiles `profile` for the native architecture.
///
/// `caps_effective` are the capability names the container will hold (any
/// case, with or without `CAP_`); they select the capability-conditional
/// rules. Returns `None` for [`SeccompProfile::Unconfined`]. Syscall names the
/// architecture does not know are skipped (logged at debug).
pub fn compile(profile: &SeccompProfile, caps_effective: &[String]) -> Result<Option<BpfProgram>, SeccompError> {
    match profile {
        SeccompProfile::Unconfined => Ok(None),
        SeccompProfile::RuntimeDefault => {
            compile_json(DEFAULT_PROFILE, DEFAULT_ORIGIN, caps_effective, native_arch()?).map(Some)
        }
        SeccompProfile::Localhost(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| SeccompError::Read { path: path.clone(), source })?;
            compile_json(&text, &path.display().to_string(), caps_effective, native_arch()?).map(Some)
        }
    }
}

/// Installs `program` on the calling thread, setting `no_new_privs` first
/// (seccompiler does), so it works without `CAP_SYS_ADMIN`.
///
/// Call it in the container's single-threaded child as the last step before
/// `execve`, after capabilities are set: the filter may deny the syscalls the
/// set-up itself needs, and `execve` must be allowed by it.
pub fn apply(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Apply { source })
}

/// The architecture crius runs on, if seccomp supports it.
fn native_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(SeccompError::Unsupported { what: format!("seccomp on {other}") }),
    }
}

/// The syscall table of `arch`.
fn table(arch: TargetArch) -> Result<&'static [(&'static str, i64)], SeccompError> {
    match arch {
        TargetArch::x86_64 => Ok(table_x86_64::X86_64),
        TargetArch::aarch64 => Ok(table_aarch64::AARCH64),
        other => Err(SeccompError::Unsupported { what: format!("seccomp on {other:?}") }),
    }
}

/// The `SCMP_ARCH_*` name of `arch`.
fn oci_arch(arch: TargetArch) -> &'static str {
    match arch {
        TargetArch::x86_64 => "SCMP_ARCH_X86_64",
        TargetArch::aarch64 => "SCMP_ARCH_AARCH64",
        TargetArch::riscv64 => "SCMP_ARCH_RISCV64",
    }
}

/// Parses and compiles an OCI profile document for `arch`.
fn compile_json(
    text: &str,
    origin: &str,
    caps_effective: &[String],
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let profile = profile::parse(text).map_err(|source| SeccompError::Parse { profile: origin.to_owned(), source })?;
    let foreign: Vec<&String> =
        profile.architectures.iter().flatten().filter(|a| a.as_str() != oci_arch(arch)).collect();
    if !foreign.is_empty() {
        tracing::debug!(profile = origin, ?foreign, "seccomp: only the native architecture is allowed");
    }
    let caps: HashSet<String> = caps_effective.iter().map(|c| ::caps::to_canonical(c)).collect();
    let plan = plan::build(&profile, origin, &caps, table(arch)?)?;
    if !plan.skipped.is_empty() {
        tracing::debug!(profile = origin, skipped = ?plan.skipped, "seccomp: syscalls unknown on {arch:?} skipped");
    }
    bpf::emit(&plan, arch, origin)
}
