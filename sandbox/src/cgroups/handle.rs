//! [`Cgroup`]: one pod or container cgroup, in every v1 hierarchy or in the
//! v2 tree.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::detect::{CGROUP_MOUNT_ROOT, CgroupMode};
use super::plan::{FileWrite, V1State, V2State, plan_v1, plan_v2};
use super::stats::{self, CgroupStats};
use super::{CgroupError, Resources, fsutil, validate_rel_path};

/// v2 controllers crius enables in the ancestors' `cgroup.subtree_control`
/// when the root offers them.
const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "hugetlb", "io", "memory", "pids"];

/// How many retries in all, and how far apart, `delete` spends on a cgroup still
/// busy because its last processes are exiting.
const REMOVE_ATTEMPTS: u32 = 50;
const REMOVE_INTERVAL: Duration = Duration::from_millis(10);

/// How long `kill_all` waits for a freeze to settle before signalling anyway.
const FREEZE_POLLS: u32 = 100;
const FREEZE_INTERVAL: Duration = Duration::from_millis(10);

/// A cgroup at a relative path below the hierarchy root(s), for example
/// `crius/pod-<id>/<container id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    mode: CgroupMode,
    rel: String,
}

/// A freezer and how to drive it (v1 `freezer.state`, v2 `cgroup.freeze`).
struct Freezer {
    file: PathBuf,
    freeze: &'static str,
    thaw: &'static str,
    /// The file that reports the state and what it says once frozen.
    check: PathBuf,
    frozen: fn(&str) -> bool,
}

impl Cgroup {
    /// Makes the cgroup (and missing ancestors) in every v1 controller
    /// hierarchy, or in the v2 tree with the needed controllers enabled in
    /// each ancestor. An existing cgroup is reused. On v1 each level's
    /// empty `cpuset.cpus`/`cpuset.mems` is copied from its parent, top
    /// down, or no task could join it.
    pub fn create(mode: &CgroupMode, rel_path: &str) -> Result<Cgroup, CgroupError> {
        let cg = Cgroup::open(mode, rel_path)?;
        let mut made = Vec::new();
        let result = match mode {
            CgroupMode::V1 { .. } => cg.create_v1(&mut made),
            CgroupMode::V2 { root } => cg.create_v2(root, &mut made),
        };
        if let Err(e) = result {
            // Undo only the leaves this call made; ancestors may be shared.
            for dir in made.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
        tracing::debug!(cgroup = %cg.rel, "cgroup created");
        Ok(cg)
    }

    /// A handle for a cgroup that may already exist; nothing is touched.
    pub fn open(mode: &CgroupMode, rel_path: &str) -> Result<Cgroup, CgroupError> {
        validate_rel_path(rel_path)?;
        Ok(Cgroup { mode: mode.clone(), rel: rel_path.to_owned() })
    }

    /// The path relative to the hierarchy root(s).
    pub fn rel_path(&self) -> &str {
        &self.rel
    }

    /// The mode this handle works in.
    pub fn mode(&self) -> &CgroupMode {
        &self.mode
    }

    /// The cgroup's directory: the v2 directory, or on v1 the one in the
    /// memory hierarchy (else the first mounted hierarchy).
    pub fn path(&self) -> PathBuf {
        let root = match &self.mode {
            CgroupMode::V2 { root } => root.as_path(),
            CgroupMode::V1 { mounts } => {
                mounts.get("memory").or_else(|| mounts.values().next()).map_or(Path::new(CGROUP_MOUNT_ROOT), |p| p)
            }
        };
        root.join(&self.rel)
    }

    /// The cgroup's directory for `controller` (v1: in its hierarchy, `None`
    /// when not mounted; v2: the one directory).
    pub fn controller_path(&self, controller: &str) -> Option<PathBuf> {
        self.mode.hierarchy_of(controller).map(|root| root.join(&self.rel))
    }

    /// The cgroup's directory in every hierarchy.
    fn dirs(&self) -> Vec<PathBuf> {
        self.mode.hierarchies().into_iter().map(|root| root.join(&self.rel)).collect()
    }

    /// Whether the cgroup's directory exists.
    pub fn exists(&self) -> bool {
        self.path().is_dir()
    }

    fn create_v1(&self, made: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        let cpuset_root = self.mode.hierarchy_of("cpuset");
        for root in self.mode.hierarchies() {
            let mut dir = root.to_path_buf();
            let last = self.rel.split('/').count() - 1;
            for (i, component) in self.rel.split('/').enumerate() {
                let parent = dir.clone();
                dir.push(component);
                if mkdir(&dir)? && i == last {
                    made.push(dir.clone());
                }
                if Some(root) == cpuset_root {
                    inherit_cpuset(&parent, &dir)?;
                }
            }
        }
        Ok(())
    }

    fn create_v2(&self, root: &Path, made: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        let offered = fsutil::read(&root.join("cgroup.controllers"))?;
        let wanted: BTreeSet<&str> = offered.split_whitespace().filter(|c| V2_CONTROLLERS.contains(c)).collect();
        let mut dir = root.to_path_buf();
        let last = self.rel.split('/').count() - 1;
        for (i, component) in self.rel.split('/').enumerate() {
            enable_controllers(&dir, &wanted)?;
            dir.push(component);
            if mkdir(&dir)? && i == last {
                made.push(dir.clone());
            }
        }
        Ok(())
    }

    /// Writes the limits in `res` (unset values are left alone).
    pub fn apply(&self, res: &Resources) -> Result<(), CgroupError> {
        let (plan, available) = match &self.mode {
            CgroupMode::V1 { mounts } => {
                let memory = self.controller_path("memory");
                let memsw = memory.as_ref().is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
                let current_memory_limit = match &memory {
                    Some(d) if res.memory_limit_bytes != 0 => {
                        let path = d.join("memory.limit_in_bytes");
                        let text = fsutil::read(&path)?;
                        // The kernel reads back "-1" as a huge number; accept both.
                        if text.trim() == "-1" {
                            u64::MAX
                        } else {
                            fsutil::parse_u64_or_max(&path, &text)?.unwrap_or(u64::MAX)
                        }
                    }
                    _ => u64::MAX,
                };
                (plan_v1(res, V1State { memsw, current_memory_limit })?, mounts.keys().cloned().collect())
            }
            CgroupMode::V2 { .. } => {
                let dir = self.path();
                let controllers = fsutil::read(&dir.join("cgroup.controllers"))?;
                let controllers: BTreeSet<String> = controllers.split_whitespace().map(str::to_owned).collect();
                let state = V2State { controllers, swap: dir.join("memory.swap.max").exists() };
                (plan_v2(res, &state)?, state.controllers)
            }
        };
        self.execute(&plan, &available)
    }

    /// Runs a plan; `available` holds the controllers that can take writes.
    fn execute(&self, plan: &[FileWrite], available: &BTreeSet<String>) -> Result<(), CgroupError> {
        let mut retry = Vec::new();
        for step in plan {
            let Some(dir) = self.dir_for(step.controller, available)? else { continue };
            let path = dir.join(&step.file);
            match fsutil::write_io(&path, &step.value) {
                Ok(()) => {}
                Err(e) if step.retry_last_on_einval && e.raw_os_error() == Some(libc::EINVAL) => {
                    retry.push((path, &step.value));
                }
                Err(source) => return Err(CgroupError::Write { path, value: step.value.clone(), source }),
            }
        }
        for (path, value) in retry {
            fsutil::write(&path, value)?;
        }
        Ok(())
    }

    /// Where a planned write for `controller` goes; `None` skips it (huge
    /// page limits where hugetlb is missing: the kubelet always sends them).
    /// Raw v2 keys (controller "") always go to the cgroup directory.
    fn dir_for(&self, controller: &str, available: &BTreeSet<String>) -> Result<Option<PathBuf>, CgroupError> {
        if controller.is_empty() || available.contains(controller) {
            return Ok(Some(self.controller_path(controller).unwrap_or_else(|| self.path())));
        }
        if controller == "hugetlb" {
            tracing::debug!(cgroup = %self.rel, "hugetlb controller not mounted; huge page limits skipped");
            return Ok(None);
        }
        Err(CgroupError::ControllerMissing { controller: controller.to_owned(), path: self.path() })
    }

    /// Moves process `pid` (all its threads) into the cgroup, in every
    /// hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        if pid <= 0 {
            // 0 would move the caller itself.
            return Err(CgroupError::InvalidResource {
                field: "pid".into(),
                value: pid.to_string(),
                reason: "must be positive",
            });
        }
        let value = pid.to_string();
        for dir in self.dirs() {
            fsutil::write(&dir.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    /// The processes in this cgroup itself (not its children), sorted, from
    /// `cgroup.procs` of every hierarchy.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = BTreeSet::new();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            all.extend(fsutil::parse_pids(&path, &fsutil::read(&path)?)?);
        }
        Ok(all.into_iter().collect())
    }

    /// Current usage counters.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let path = self.path();
        if !path.is_dir() {
            return Err(CgroupError::Read { path, source: io::ErrorKind::NotFound.into() });
        }
        match &self.mode {
            CgroupMode::V1 { .. } => stats::read_v1(
                self.controller_path("cpuacct").as_deref(),
                self.controller_path("memory").as_deref(),
                self.controller_path("pids").as_deref(),
            ),
            CgroupMode::V2 { .. } => stats::read_v2(&path),
        }
    }

    /// Whether the OOM killer has killed a task of this cgroup.
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        let kills = match &self.mode {
            CgroupMode::V1 { .. } => match self.controller_path("memory") {
                Some(dir) => stats::oom_kills_v1(&dir)?,
                None => 0,
            },
            CgroupMode::V2 { .. } => stats::oom_kills_v2(&self.path())?,
        };
        Ok(kills > 0)
    }

    /// Sends `signal` to every process in the cgroup and its descendants.
    /// v2 SIGKILL uses `cgroup.kill` where the kernel has it; otherwise the
    /// cgroup is frozen (when a freezer exists) so that nothing forks past
    /// the signal, every pid is signalled, and the cgroup is thawed.
    pub fn kill_all(&self, signal: Signal) -> Result<(), CgroupError> {
        let freezer = match &self.mode {
            CgroupMode::V2 { .. } => {
                let dir = self.path();
                let kill_file = dir.join("cgroup.kill");
                if signal == Signal::SIGKILL && kill_file.exists() {
                    return fsutil::write(&kill_file, "1");
                }
                Some(Freezer {
                    file: dir.join("cgroup.freeze"),
                    freeze: "1",
                    thaw: "0",
                    check: dir.join("cgroup.events"),
                    frozen: |events| events.lines().any(|l| l.trim() == "frozen 1"),
                })
            }
            CgroupMode::V1 { .. } => self.controller_path("freezer").map(|dir| Freezer {
                file: dir.join("freezer.state"),
                freeze: "FROZEN",
                thaw: "THAWED",
                check: dir.join("freezer.state"),
                frozen: |state| state.trim() == "FROZEN",
            }),
        };
        let Some(freezer) = freezer.filter(|f| f.file.exists()) else { return self.signal_subtree(signal) };
        fsutil::write(&freezer.file, freezer.freeze)?;
        let mut settled = false;
        for _ in 0..FREEZE_POLLS {
            if fsutil::read(&freezer.check).is_ok_and(|s| (freezer.frozen)(&s)) {
                settled = true;
                break;
            }
            std::thread::sleep(FREEZE_INTERVAL);
        }
        if !settled {
            tracing::debug!(cgroup = %self.rel, "freeze did not settle; signalling anyway");
        }
        let signalled = self.signal_subtree(signal);
        let thawed = fsutil::write(&freezer.file, freezer.thaw);
        signalled.and(thawed)
    }

    fn signal_subtree(&self, signal: Signal) -> Result<(), CgroupError> {
        let mut pids = BTreeSet::new();
        for dir in self.dirs() {
            subtree_pids(&dir, &mut pids)?;
        }
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let mut first_err = None;
        for pid in pids.into_iter().filter(|p| *p > 0 && *p != me) {
            match kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    first_err.get_or_insert(CgroupError::Signal { pid, signal, source });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Removes the cgroup's directory in every hierarchy (not its
    /// ancestors). A cgroup that is already gone is fine; one still busy is
    /// retried briefly while its last processes exit.
    pub fn delete(&self) -> Result<(), CgroupError> {
        let mut first_err = None;
        // One retry budget for all hierarchies, so a busy cgroup fails in
        // REMOVE_ATTEMPTS * REMOVE_INTERVAL, not that per hierarchy.
        let mut retries_left = REMOVE_ATTEMPTS;
        for dir in self.dirs() {
            if let Err(e) = remove_with_retry(&dir, &mut retries_left) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                tracing::debug!(cgroup = %self.rel, "cgroup deleted");
                Ok(())
            }
        }
    }
}

/// Makes one directory; `false` when it already existed.
fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create { path: dir.to_owned(), source }),
    }
}

fn remove_with_retry(dir: &Path, retries_left: &mut u32) -> Result<(), CgroupError> {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && *retries_left > 0 => {
                *retries_left -= 1;
                std::thread::sleep(REMOVE_INTERVAL);
            }
            Err(source) => return Err(CgroupError::Remove { path: dir.to_owned(), source }),
        }
    }
}

/// v1 cpuset: a new cgroup starts with empty `cpuset.cpus`/`cpuset.mems`
/// (unless `cgroup.clone_children`); copy the parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = dir.join(file);
        if !fsutil::read(&path)?.trim().is_empty() {
            continue;
        }
        let from_parent = fsutil::read(&parent.join(file))?;
        let value = from_parent.trim();
        if !value.is_empty() {
            fsutil::write(&path, value)?;
        }
    }
    Ok(())
}

/// v2: enables in `dir`'s `cgroup.subtree_control` those of `wanted` that
/// are not enabled yet; writes nothing when all are.
fn enable_controllers(dir: &Path, wanted: &BTreeSet<&str>) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.subtree_control");
    let current = fsutil::read(&path)?;
    let enabled: BTreeSet<&str> = current.split_whitespace().map(|c| c.trim_start_matches('+')).collect();
    let missing: Vec<String> = wanted.difference(&enabled).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    fsutil::write(&path, &missing.join(" "))
}

/// Collects the pids of `dir` and every cgroup below it. A cgroup that
/// vanishes meanwhile is skipped.
fn subtree_pids(dir: &Path, out: &mut BTreeSet<i32>) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    if let Some(text) = fsutil::read_optional(&procs)? {
        out.extend(fsutil::parse_pids(&procs, &text)?);
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CgroupError::Read { path: dir.to_owned(), source }),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            subtree_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}
