//! Linux capabilities for containers: the default set, CRI add/drop
//! resolution clamped to what crius itself may grant, and applying the result
//! in the container's child process.
//!
//! Resolution follows containerd: start from [`DEFAULT_CAPS`]; `ALL` in add
//! means every capability in crius's bounding set, `ALL` in drop means none;
//! then named adds, then named drops (drop wins). Privileged containers get
//! crius's whole bounding set and ignore add/drop. The result never exceeds
//! crius's bounding set: anything outside it is left out with a warning.

use std::str::FromStr;

pub use ::caps::CapsHashSet;
use ::caps::{CapSet as Kind, Capability};

#[cfg(test)]
mod tests;

/// containerd's default capabilities for a container.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Failures to resolve or apply capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// A capability name no kernel knows.
    #[error("unknown capability {name}")]
    Unknown {
        /// The name as given.
        name: String,
    },
    /// Reading one of crius's own capability sets failed.
    #[error("read {set} capability set")]
    Read {
        /// Which set.
        set: &'static str,
        /// The error from the caps crate.
        #[source]
        source: ::caps::errors::CapsError,
    },
    /// Setting one of the process's capability sets failed.
    #[error("set {set} capability set")]
    Apply {
        /// Which set.
        set: &'static str,
        /// The error from the caps crate.
        #[source]
        source: ::caps::errors::CapsError,
    },
}

/// The capability sets a container process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapSet {
    /// Bounding set: the most the process and its descendants can ever gain.
    pub bounding: CapsHashSet,
    /// Effective set.
    pub effective: CapsHashSet,
    /// Permitted set.
    pub permitted: CapsHashSet,
    /// Inheritable set (the ambient capabilities, else empty).
    pub inheritable: CapsHashSet,
    /// Ambient set (empty unless requested): what a non-root process keeps across exec.
    pub ambient: CapsHashSet,
}

/// Whether this process holds `name` (any spelling [`parse_name`] accepts)
/// in its effective set.
pub fn has_effective(name: &str) -> bool {
    parse_name(name).ok().is_some_and(|cap| ::caps::has_cap(None, Kind::Effective, cap).unwrap_or(false))
}

/// Resolves a container's capabilities against crius's own bounding set.
///
/// Names may come with or without `CAP_`, in any case. `add_ambient` (CRI
/// `add_ambient_capabilities`) are also raised in the other sets.
pub fn effective_set(
    add: &[String],
    drop: &[String],
    privileged: bool,
    add_ambient: &[String],
) -> Result<CapSet, CapsError> {
    let bounding = ::caps::read(None, Kind::Bounding).map_err(|source| CapsError::Read { set: "bounding", source })?;
    effective_set_within(&bounding, add, drop, privileged, add_ambient)
}

/// [`effective_set`] with the bounding set to clamp to given, for tests and
/// for callers that already read it.
pub fn effective_set_within(
    bounding: &CapsHashSet,
    add: &[String],
    drop: &[String],
    privileged: bool,
    add_ambient: &[String],
) -> Result<CapSet, CapsError> {
    let add = parse_list(add)?;
    let drop = parse_list(drop)?;
    let ambient = parse_list(add_ambient)?;
    let mut set: CapsHashSet = if privileged {
        bounding.clone()
    } else {
        let mut set: CapsHashSet = DEFAULT_CAPS.into_iter().collect();
        if add.all {
            set.extend(bounding.iter().copied());
        }
        if drop.all {
            set.clear();
        }
        set.extend(add.named.iter().copied());
        set.retain(|c| !drop.named.contains(c));
        set
    };
    let ambient_requested: CapsHashSet = ambient.named.into_iter().collect();
    let ambient = clamp(bounding, ambient_requested.clone(), &ambient_requested);
    set.extend(ambient.iter().copied());
    let set = clamp(bounding, set, &add.named.into_iter().collect());
    Ok(CapSet { bounding: set.clone(), effective: set.clone(), permitted: set, inheritable: ambient.clone(), ambient })
}

/// Parses one capability name (`net_admin`, `CAP_NET_ADMIN`).
pub fn parse_name(name: &str) -> Result<Capability, CapsError> {
    Capability::from_str(&::caps::to_canonical(name.trim())).map_err(|_| CapsError::Unknown { name: name.to_owned() })
}

impl CapSet {
    /// Sets the calling thread's capabilities to `self`.
    ///
    /// Call it in the container's single-threaded child just before
    /// `execve` (and before the seccomp filter, which may deny `capset`),
    /// while `CAP_SETPCAP` is still permitted: as uid 0, or after `setuid`
    /// with `PR_SET_KEEPCAPS` set by the caller beforehand. Order: raise
    /// effective to the permitted set (`setuid` cleared it), drop the
    /// bounding set to `bounding` (needs `CAP_SETPCAP`), set inheritable,
    /// replace ambient, then shrink effective and permitted.
    ///
    /// After `execve` a uid-0 process gets `bounding` as its permitted and
    /// effective sets; a non-root process keeps only `ambient`.
    pub fn apply(&self) -> Result<(), CapsError> {
        let fail = |set| move |source| CapsError::Apply { set, source };
        let permitted =
            ::caps::read(None, Kind::Permitted).map_err(|source| CapsError::Read { set: "permitted", source })?;
        ::caps::set(None, Kind::Effective, &permitted).map_err(fail("effective"))?;
        let current =
            ::caps::read(None, Kind::Bounding).map_err(|source| CapsError::Read { set: "bounding", source })?;
        for cap in current.difference(&self.bounding) {
            ::caps::drop(None, Kind::Bounding, *cap).map_err(fail("bounding"))?;
        }
        ::caps::set(None, Kind::Inheritable, &self.inheritable).map_err(fail("inheritable"))?;
        ::caps::clear(None, Kind::Ambient).map_err(fail("ambient"))?;
        for cap in &self.ambient {
            ::caps::raise(None, Kind::Ambient, *cap).map_err(fail("ambient"))?;
        }
        ::caps::set(None, Kind::Effective, &self.effective).map_err(fail("effective"))?;
        ::caps::set(None, Kind::Permitted, &self.permitted).map_err(fail("permitted"))?;
        Ok(())
    }
}

/// A parsed add/drop list: `ALL` and the named capabilities.
#[derive(Debug, Default)]
struct NameList {
    all: bool,
    named: Vec<Capability>,
}

fn parse_list(names: &[String]) -> Result<NameList, CapsError> {
    let mut list = NameList::default();
    for name in names {
        if name.trim().eq_ignore_ascii_case("ALL") {
            list.all = true;
        } else {
            list.named.push(parse_name(name)?);
        }
    }
    Ok(list)
}

/// `set` ∩ `bounding`; logs what is left out, at warn when it was asked for
/// explicitly (`requested`), else at debug.
fn clamp(bounding: &CapsHashSet, mut set: CapsHashSet, requested: &CapsHashSet) -> CapsHashSet {
    set.retain(|cap| {
        let keep = bounding.contains(cap);
        if !keep && requested.contains(cap) {
            tracing::warn!(capability = %cap, "capability not in crius's bounding set, not granted");
        } else if !keep {
            tracing::debug!(capability = %cap, "default capability not in crius's bounding set, not granted");
        }
        keep
    });
    set
}
