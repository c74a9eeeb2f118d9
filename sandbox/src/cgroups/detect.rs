//! Which cgroup version the host runs, from `/proc/self/mountinfo`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::CgroupError;

/// Where cgroup file systems are mounted on a standard host.
pub const CGROUP_MOUNT_ROOT: &str = "/sys/fs/cgroup";

/// cgroup v1 controllers this module knows by name. Named hierarchies
/// (`name=systemd`) carry no controller and are left alone.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// How cgroups are laid out on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v1, or hybrid (v1 controllers plus an empty cgroup2 mount, which
    /// is ignored). Maps each controller to its hierarchy's mount point;
    /// comounted controllers (`cpu,cpuacct`) share one path.
    V1 {
        /// Controller name to mount point.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// The unified hierarchy, mounted at `root`.
    V2 {
        /// The cgroup2 mount point, normally `/sys/fs/cgroup`.
        root: PathBuf,
    },
}

impl CgroupMode {
    /// The distinct hierarchy roots: every v1 mount point once, or the v2 root.
    pub fn hierarchies(&self) -> Vec<&Path> {
        match self {
            CgroupMode::V1 { mounts } => {
                let set: BTreeSet<&Path> = mounts.values().map(PathBuf::as_path).collect();
                set.into_iter().collect()
            }
            CgroupMode::V2 { root } => vec![root.as_path()],
        }
    }

    /// The v1 mount point of `controller`, or the v2 root for any controller.
    pub fn hierarchy_of(&self, controller: &str) -> Option<&Path> {
        match self {
            CgroupMode::V1 { mounts } => mounts.get(controller).map(PathBuf::as_path),
            CgroupMode::V2 { root } => Some(root),
        }
    }
}

/// Reads `/proc/self/mountinfo` and [`detect`]s the mode.
pub fn detect_host() -> Result<CgroupMode, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })?;
    detect(&text)
}

/// Finds the cgroup mode from a mountinfo text: pure v2 when
/// `/sys/fs/cgroup` itself is cgroup2; v1 (or hybrid, treated as v1) when
/// v1 controller hierarchies are mounted; else v2 at another cgroup2 mount.
pub fn detect(mountinfo: &str) -> Result<CgroupMode, CgroupError> {
    let mut mounts = BTreeMap::new();
    let mut unified_at_root = false;
    let mut other_cgroup2 = None;
    for entry in mountinfo.lines().filter_map(parse_line) {
        match entry.fstype {
            "cgroup2" if entry.mount_point == Path::new(CGROUP_MOUNT_ROOT) => unified_at_root = true,
            "cgroup2" => {
                other_cgroup2.get_or_insert(entry.mount_point);
            }
            "cgroup" => {
                for opt in entry.super_options.split(',') {
                    if V1_CONTROLLERS.contains(&opt) {
                        mounts.entry(opt.to_owned()).or_insert_with(|| entry.mount_point.clone());
                    }
                }
            }
            _ => {
                // Something mounted over /sys/fs/cgroup later hides cgroup2 there.
                if entry.mount_point == Path::new(CGROUP_MOUNT_ROOT) {
                    unified_at_root = false;
                }
            }
        }
    }
    if unified_at_root {
        return Ok(CgroupMode::V2 { root: PathBuf::from(CGROUP_MOUNT_ROOT) });
    }
    if !mounts.is_empty() {
        return Ok(CgroupMode::V1 { mounts });
    }
    other_cgroup2.map(|root| CgroupMode::V2 { root }).ok_or(CgroupError::NotMounted)
}

struct MountEntry<'a> {
    mount_point: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

/// `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS`
fn parse_line(line: &str) -> Option<MountEntry<'_>> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 {
        return None;
    }
    Some(MountEntry {
        mount_point: PathBuf::from(unescape(fields[4])),
        fstype: fields.get(sep + 1)?,
        super_options: fields.get(sep + 3).copied().unwrap_or(""),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURE_V2: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
30 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw";

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    const V1_COMOUNT: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid shared:14 - cgroup cgroup rw,net_cls,net_prio
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/hugetlb rw,nosuid shared:16 - cgroup cgroup rw,hugetlb
33 25 0:30 / /sys/fs/cgroup/cpuset rw,nosuid shared:17 - cgroup cgroup rw,cpuset,clone_children";

    #[test]
    fn detects_pure_v2() {
        assert_eq!(detect(PURE_V2).expect("detect"), CgroupMode::V2 { root: PathBuf::from("/sys/fs/cgroup") });
    }

    #[test]
    fn detects_hybrid_as_v1_and_ignores_named_and_unified() {
        let CgroupMode::V1 { mounts } = detect(HYBRID).expect("detect") else { panic!("expected v1") };
        let names: Vec<&str> = mounts.keys().map(String::as_str).collect();
        assert_eq!(names, ["cpu", "cpuacct", "cpuset", "freezer", "memory", "pids"]);
        assert_eq!(mounts["memory"], Path::new("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn detects_v1_with_comounted_cpu_cpuacct() {
        let mode = detect(V1_COMOUNT).expect("detect");
        let CgroupMode::V1 { mounts } = &mode else { panic!("expected v1") };
        assert_eq!(mounts["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(mounts["cpuacct"], mounts["cpu"]);
        assert_eq!(mounts["net_prio"], Path::new("/sys/fs/cgroup/net_cls,net_prio"));
        assert!(mounts.contains_key("hugetlb"));
        assert!(!mounts.contains_key("name=systemd") && !mounts.contains_key("xattr"));
        // cpu,cpuacct and net_cls,net_prio count once each.
        assert_eq!(mode.hierarchies().len(), 5);
    }

    #[test]
    fn empty_or_unrelated_mountinfo_is_not_mounted() {
        assert!(matches!(detect(""), Err(CgroupError::NotMounted)));
        assert!(matches!(detect("garbage line\n1 2 3"), Err(CgroupError::NotMounted)));
    }

    #[test]
    fn cgroup2_elsewhere_without_v1_is_v2_there() {
        let text = "41 31 0:38 / /run/cg\\0402 rw - cgroup2 cgroup2 rw";
        assert_eq!(detect(text).expect("detect"), CgroupMode::V2 { root: PathBuf::from("/run/cg 2") });
    }
}
