//! The OCI seccomp profile format (runtime-spec `linux.seccomp`) as found in
//! profile files, plus Docker's `includes`/`excludes` capability conditions.
//!
//! Only the shape is checked here. Actions, operators and argument indices are
//! kept as written and validated by [`super::plan`], so that its errors can name
//! the offending field (`syscalls[3].action`). Fields crius does not use
//! (`archMap`, `listenerPath`, `minKernel`, ...) are accepted and ignored.

use serde::Deserialize;

/// A whole profile file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Profile {
    /// Action for every syscall no rule matches (`SCMP_ACT_*`).
    pub(super) default_action: String,
    /// errno for a default action of `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default)]
    pub(super) default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*` names; only the native one is compiled.
    #[serde(default)]
    pub(super) architectures: Option<Vec<String>>,
    /// `SECCOMP_FILTER_FLAG_*` names; not applied by crius.
    #[serde(default)]
    pub(super) flags: Option<Vec<String>>,
    /// The rules, in file order.
    #[serde(default)]
    pub(super) syscalls: Option<Vec<Syscall>>,
}

/// One `syscalls[]` entry: an action for a list of syscalls, optionally
/// conditioned on their arguments.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Syscall {
    /// Syscall names.
    #[serde(default)]
    pub(super) names: Option<Vec<String>>,
    /// Single syscall name (old Docker profiles).
    #[serde(default)]
    pub(super) name: Option<String>,
    /// `SCMP_ACT_*`.
    pub(super) action: String,
    /// errno for `SCMP_ACT_ERRNO`, message number for `SCMP_ACT_TRACE`.
    #[serde(default)]
    pub(super) errno_ret: Option<u32>,
    /// Argument conditions.
    #[serde(default)]
    pub(super) args: Option<Vec<Arg>>,
    /// Docker extension: the entry applies only if the container holds all of these caps.
    #[serde(default)]
    pub(super) includes: Option<CapFilter>,
    /// Docker extension: the entry is skipped if the container holds any of these caps.
    #[serde(default)]
    pub(super) excludes: Option<CapFilter>,
}

/// The capability part of Docker's `includes`/`excludes` (other keys ignored).
#[derive(Debug, Default, Deserialize)]
pub(super) struct CapFilter {
    /// Capability names (`CAP_SYS_ADMIN`).
    #[serde(default)]
    pub(super) caps: Option<Vec<String>>,
}

/// One argument condition.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Arg {
    /// Argument index, 0 to 5.
    pub(super) index: u32,
    /// Comparison operand, or the mask for `SCMP_CMP_MASKED_EQ`.
    pub(super) value: u64,
    /// The datum for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub(super) value_two: u64,
    /// `SCMP_CMP_*`.
    pub(super) op: String,
}

/// Parses a profile document.
pub(super) fn parse(text: &str) -> Result<Profile, serde_json::Error> {
    serde_json::from_str(text)
}
