//! IP address management for the built-in pod network.
//!
//! Allocations are persisted the way CNI `host-local` does it: one file per
//! allocated address under `<dir>/<range with '/' replaced by '_'>/<ip>`, whose
//! content is the owner id (the pod id). Files are created with `O_EXCL`
//! (`create_new`), so two allocators, in this process or another, never hand out
//! the same address. A `last_reserved` file per range lets allocation continue
//! round-robin after the last address handed out, so a released address is not
//! reused at once.
//!
//! This module only manages addresses; it never touches interfaces or routes.

mod cidr;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use cidr::Cidr;

/// Name of the per-range file holding the last address handed out.
const LAST_RESERVED: &str = "last_reserved";
/// Longest accepted owner id.
const MAX_OWNER_LEN: usize = 128;

/// Errors from IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A CIDR string could not be parsed.
    #[error("invalid cidr {input:?}: {reason}")]
    ParseCidr {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configured range leaves no room for pod addresses.
    #[error("range {range} is too small (ipv4 prefix must be <= 30, ipv6 <= 126)")]
    RangeTooSmall {
        /// The range.
        range: Cidr,
    },
    /// The same range is configured twice.
    #[error("range {range} is configured more than once")]
    DuplicateRange {
        /// The range.
        range: Cidr,
    },
    /// No range is configured.
    #[error("no ip ranges configured")]
    NoRanges,
    /// An owner id is empty, too long or has characters other than `[A-Za-z0-9_-]`.
    #[error("invalid owner id {owner:?}: must be 1-128 characters of [A-Za-z0-9_-]")]
    InvalidOwner {
        /// The owner id given.
        owner: String,
    },
    /// Every usable address of a range is allocated.
    #[error("no free address in range {range}")]
    Exhausted {
        /// The range.
        range: Cidr,
    },
    /// A filesystem operation on the allocation store failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IpamError + use<> {
    let path = path.to_owned();
    move |source| IpamError::Io { op, path, source }
}

/// One address handed to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Allocation {
    /// The pod's address.
    pub ip: IpAddr,
    /// The prefix length of the range it came from.
    pub prefix: u8,
    /// The range's gateway (the bridge address).
    pub gateway: IpAddr,
}

/// The address allocator: a set of ranges and a directory of allocation files.
#[derive(Debug)]
pub struct Ipam {
    ranges: Vec<Range>,
    /// Serialises allocate/release/reconcile within this process; the `O_EXCL`
    /// files protect against other processes.
    lock: Mutex<()>,
}

#[derive(Debug)]
struct Range {
    cidr: Cidr,
    dir: PathBuf,
}

impl Ipam {
    /// Opens (creating if needed) the allocation store under `dir` for `ranges`.
    pub fn open(dir: &Path, ranges: Vec<Cidr>) -> Result<Self, IpamError> {
        if ranges.is_empty() {
            return Err(IpamError::NoRanges);
        }
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(ranges.len());
        for cidr in ranges {
            let max_prefix = if cidr.addr().is_ipv4() { 30 } else { 126 };
            if cidr.prefix() > max_prefix {
                return Err(IpamError::RangeTooSmall { range: cidr });
            }
            if !seen.insert(cidr) {
                return Err(IpamError::DuplicateRange { range: cidr });
            }
            let rdir = dir.join(cidr.dir_name());
            fs::create_dir_all(&rdir).map_err(io_err("create directory", &rdir))?;
            out.push(Range { cidr, dir: rdir });
        }
        Ok(Self { ranges: out, lock: Mutex::new(()) })
    }

    /// The configured ranges, in order.
    pub fn ranges(&self) -> Vec<Cidr> {
        self.ranges.iter().map(|r| r.cidr).collect()
    }

    /// Allocates one address per configured range for `owner`. Idempotent: an
    /// address `owner` already holds in a range is returned again. All or
    /// nothing: if a range is exhausted, the addresses this call allocated are
    /// released before [`IpamError::Exhausted`] is returned.
    pub fn allocate(&self, owner: &str) -> Result<Vec<Allocation>, IpamError> {
        validate_owner(owner)?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(self.ranges.len());
        let mut fresh: Vec<(&Range, IpAddr)> = Vec::new();
        for range in &self.ranges {
            let result = match range.find_owner(owner) {
                Ok(Some(ip)) => Ok(ip),
                Ok(None) => range.allocate_new(owner).inspect(|ip| fresh.push((range, *ip))),
                Err(e) => Err(e),
            };
            match result {
                Ok(ip) => out.push(Allocation { ip, prefix: range.cidr.prefix(), gateway: range.cidr.gateway() }),
                Err(e) => {
                    for (r, ip) in fresh.iter().rev() {
                        if let Err(undo) = r.remove_if_owned(*ip, owner) {
                            tracing::warn!(owner, %ip, error = %undo, "ipam: undo of partial allocation failed");
                        }
                    }
                    return Err(e);
                }
            }
        }
        for a in &out {
            tracing::info!(owner, ip = %a.ip, "ipam: allocated");
        }
        Ok(out)
    }

    /// Releases every address held by `owner`. Releasing an owner that holds
    /// nothing succeeds.
    pub fn release(&self, owner: &str) -> Result<(), IpamError> {
        validate_owner(owner)?;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for range in &self.ranges {
            for (ip, who) in range.entries()? {
                if who == owner && range.remove_if_owned(ip, owner)? {
                    tracing::info!(owner, %ip, "ipam: released");
                }
            }
        }
        Ok(())
    }

    /// Releases every allocation whose owner is not in `live_owners` (left by a
    /// crash between allocation and attach) and returns what was released.
    pub fn reconcile(&self, live_owners: &HashSet<String>) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut released = Vec::new();
        for range in &self.ranges {
            for (ip, who) in range.entries()? {
                if !live_owners.contains(&who) && range.remove_if_owned(ip, &who)? {
                    tracing::info!(owner = %who, %ip, "ipam: released stale allocation");
                    released.push((ip, who));
                }
            }
        }
        Ok(released)
    }

    /// Every current allocation, as (address, owner), ordered by range then address.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let mut out = Vec::new();
        for range in &self.ranges {
            out.extend(range.entries()?);
        }
        Ok(out)
    }
}

/// Owner ids become file contents compared verbatim, so keep them simple.
fn validate_owner(owner: &str) -> Result<(), IpamError> {
    let ok = !owner.is_empty()
        && owner.len() <= MAX_OWNER_LEN
        && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(IpamError::InvalidOwner { owner: owner.to_owned() }) }
}

impl Range {
    /// Lowest and highest offsets handed to pods: skip the network address and
    /// the gateway, and for IPv4 the broadcast address. `Ipam::open` checked the
    /// prefix, so `low <= high`.
    fn bounds(&self) -> (u128, u128) {
        let mask = self.cidr.host_mask();
        let high = if self.cidr.addr().is_ipv4() { mask - 1 } else { mask };
        (2, high)
    }

    /// The allocation files of this range, as (address, owner), sorted by address.
    fn entries(&self) -> Result<Vec<(IpAddr, String)>, IpamError> {
        let rd = fs::read_dir(&self.dir).map_err(io_err("read directory", &self.dir))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
            if !self.cidr.contains(ip) {
                continue;
            }
            let path = entry.path();
            match fs::read_to_string(&path) {
                Ok(owner) => out.push((ip, owner.trim().to_owned())),
                // Released by someone else meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("read", &path)(e)),
            }
        }
        out.sort();
        Ok(out)
    }

    fn find_owner(&self, owner: &str) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.entries()?.into_iter().find(|(_, who)| who == owner).map(|(ip, _)| ip))
    }

    /// Claims the next free address after `last_reserved`, wrapping round.
    fn allocate_new(&self, owner: &str) -> Result<IpAddr, IpamError> {
        let (low, high) = self.bounds();
        let count = high - low + 1;
        let start = self.last_reserved().filter(|o| (low..high).contains(o)).map_or(low, |o| o + 1);
        let mut i: u128 = 0;
        while i < count {
            let ip = self.cidr.nth(low + (start - low + i) % count);
            if self.try_claim(ip, owner)? {
                self.write_last_reserved(ip);
                return Ok(ip);
            }
            i += 1;
        }
        Err(IpamError::Exhausted { range: self.cidr })
    }

    /// Creates the allocation file for `ip` with `O_EXCL`; `false` if taken.
    fn try_claim(&self, ip: IpAddr, owner: &str) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        let written = file.write_all(owner.as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io_err("write", &path)(e));
        }
        self.sync_dir()?;
        Ok(true)
    }

    /// Removes `ip`'s file if its content is still `owner`; `true` if removed.
    fn remove_if_owned(&self, ip: IpAddr, owner: &str) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(who) if who.trim() == owner => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("read", &path)(e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        self.sync_dir()?;
        Ok(true)
    }

    /// Offset of the last address handed out, if recorded and inside the range.
    fn last_reserved(&self) -> Option<u128> {
        let text = fs::read_to_string(self.dir.join(LAST_RESERVED)).ok()?;
        let ip: IpAddr = text.trim().parse().ok()?;
        self.cidr.offset_of(ip)
    }

    /// Records `ip` as the last address handed out (write a temporary file, then
    /// rename, so a reader never sees a torn value). It is only a hint for where
    /// to start next time, so a failure is logged, not returned: the address is
    /// already claimed and must not leak.
    fn write_last_reserved(&self, ip: IpAddr) {
        // Unique per process, thread and address, so concurrent writers in this
        // or another process never share a temporary file.
        let tmp =
            self.dir.join(format!(".{LAST_RESERVED}.{}.{ip}.{:?}", std::process::id(), std::thread::current().id()));
        let path = self.dir.join(LAST_RESERVED);
        if let Err(error) = fs::write(&tmp, ip.to_string()).and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), %error, "ipam: cannot record last reserved address");
        }
    }

    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err("sync directory", &self.dir))
    }
}

#[cfg(test)]
mod tests;
