//! Privileged: `setup_rootfs` for real, in a re-executed test binary that
//! first moves into its own mount namespace, so the host is never touched.
//! The parent checks the host afterwards: nothing escaped, nothing leaked.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crius_sandbox::mounts::{DeviceSpec, MountSpec, RootfsSpec, setup_rootfs};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statvfs::{FsFlags, statvfs};
use testkit::require_root;

/// Set in the child: `<scenario>:<fixture dir>`.
const CHILD_ENV: &str = "CRIUS_MOUNTS_TEST_CHILD";

/// Host mount points under `dir`.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let prefix = dir.display().to_string();
    text.lines().filter_map(|l| l.split(' ').nth(4)).filter(|mp| mp.starts_with(&prefix)).map(str::to_owned).collect()
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, text).expect("write fixture");
}

/// The rootfs (empty dirs and hostile symlinks) and the host side of the
/// mounts.
fn fixture(dir: &Path) {
    for d in ["rootfs/bin", "rootfs/etc", "rootfs/mnt", "vol-rw", "shm"] {
        fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    symlink("/", dir.join("rootfs/mnt/evil")).expect("symlink");
    symlink("../../../../../..", dir.join("rootfs/mnt/up")).expect("symlink");
    write(&dir.join("vol-ro/hello"), "hello");
    fs::create_dir_all(dir.join("vol-ro/sub")).expect("mkdir");
    write(&dir.join("app.conf"), "key=value");
    write(&dir.join("evil-src/marker"), "inside");
    write(&dir.join("pod/hostname"), "testpod\n");
    write(&dir.join("pod/hosts"), "127.0.0.1 localhost\n");
    write(&dir.join("pod/resolv.conf"), "nameserver 10.96.0.10\n");
    symlink(dir.join("vol-rw"), dir.join("vol-rw-link")).expect("symlink");
}

fn spec(scenario: &str, dir: &Path) -> RootfsSpec {
    let mut spec = RootfsSpec::new(dir.join("rootfs"));
    let bind = |source: &str, destination: &str, readonly: bool| MountSpec {
        source: dir.join(source),
        destination: destination.to_owned(),
        readonly,
        ..Default::default()
    };
    spec.mounts = vec![
        MountSpec { recursive_readonly: true, ..bind("vol-ro", "/data/ro", true) },
        bind("vol-rw-link", "/data/rw", false),
        bind("app.conf", "/etc/app.conf", true),
        bind("evil-src", "/mnt/evil/pwned", false),
        bind("vol-rw", "/../../mnt/up/rw2", false),
    ];
    spec.devices = vec![DeviceSpec {
        host_path: "/dev/null".into(),
        container_path: "/dev/custom-null".into(),
        permissions: "rwm".into(),
    }];
    spec.hostname_file = Some(dir.join("pod/hostname"));
    spec.hosts_file = Some(dir.join("pod/hosts"));
    spec.resolv_file = Some(dir.join("pod/resolv.conf"));
    if scenario == "privileged" {
        spec.privileged = true;
        spec.shm = Some(dir.join("shm"));
    } else {
        spec.readonly_rootfs = true;
    }
    spec
}

/// Runs the child half in a re-executed test binary; returns its stdout.
fn run_child(scenario: &str, dir: &Path) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args(["--exact", "mounts_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{scenario}:{}", dir.display()))
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("--- child {scenario} stdout ---\n{stdout}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {scenario} failed: {}", out.status);
    assert!(stdout.contains("ALL OK"), "child {scenario} did not finish");
    stdout
}

fn check_host_after(dir: &Path) {
    assert!(!Path::new("/pwned").exists(), "a mount escaped the rootfs to the host's /pwned");
    assert!(dir.join("rootfs/pwned").is_dir(), "the hostile mount point belongs inside the rootfs");
    assert!(dir.join("rootfs/mnt/up/rw2").symlink_metadata().is_err() && dir.join("rootfs/rw2").is_dir());
    assert_eq!(host_mounts_under(dir), Vec::<String>::new(), "mounts leaked to the host");
}

#[test]
fn mounts_setup_rootfs_unprivileged_container() {
    if !require_root("mounts_setup_rootfs_unprivileged_container") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonicalize");
    fixture(&dir);
    run_child("default", &dir);
    check_host_after(&dir);
    assert_eq!(fs::read_to_string(dir.join("vol-rw/written")).expect("written through the rw bind"), "rw");
    assert!(!dir.join("vol-ro/new").exists());
}

#[test]
fn mounts_setup_rootfs_privileged_container() {
    if !require_root("mounts_setup_rootfs_privileged_container") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonicalize");
    fixture(&dir);
    run_child("privileged", &dir);
    check_host_after(&dir);
    assert_eq!(fs::read_to_string(dir.join("shm/x")).expect("written through the shm bind"), "shm");
    assert!(dir.join("rootfs/newfile").is_file(), "the rootfs stays writable");
}

/// The child half: not a test on its own (ignored, and a no-op without the
/// environment the parent sets).
#[test]
#[ignore = "child half of the mounts_setup_rootfs_* tests"]
fn mounts_child() {
    let Ok(arg) = std::env::var(CHILD_ENV) else { return };
    let Some((scenario, dir)) = arg.split_once(':') else { panic!("bad {CHILD_ENV}") };
    let code = match child(scenario, Path::new(dir)) {
        Ok(0) => {
            println!("ALL OK");
            0
        }
        Ok(n) => {
            println!("{n} checks failed");
            1
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            println!("ERROR {msg}");
            2
        }
    };
    std::process::exit(code);
}

fn errno(res: io::Result<impl Sized>) -> Option<i32> {
    res.err().and_then(|e| e.raw_os_error())
}

fn readonly(path: &str) -> bool {
    statvfs(path).is_ok_and(|s| s.flags().contains(FsFlags::ST_RDONLY))
}

/// Filesystem type of the topmost mount at exactly `path`, if it is a mount point.
fn mount_fstype(path: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/thread-self/mountinfo").ok()?;
    text.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            (head.split(' ').nth(4)? == path).then(|| tail.split(' ').next().map(str::to_owned))?
        })
        .next_back()
}

/// Mount points (inside the container) under `prefix` that are not read-only.
fn writable_mounts_under(prefix: &str) -> Vec<String> {
    let text = fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let mp = fields.nth(4)?;
            let opts = fields.next()?;
            (mp.starts_with(prefix) && !opts.split(',').any(|o| o == "ro")).then(|| mp.to_owned())
        })
        .collect()
}

fn child(scenario: &str, dir: &Path) -> Result<usize, Box<dyn std::error::Error>> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    // Private first, so that the submount below stays in this namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    // A submount in a read-only volume: recursive read-only must reach it.
    mount(Some("tmpfs"), &dir.join("vol-ro/sub"), Some("tmpfs"), MsFlags::empty(), None::<&str>)?;
    if scenario == "privileged" {
        // The rootfs already a mount point, as the caller's overlay would be.
        let rootfs = dir.join("rootfs");
        mount(Some(&rootfs), &rootfs, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    }
    setup_rootfs(&spec(scenario, dir))?;

    let mut failures = 0;
    let mut check = |name: &str, ok: bool| {
        println!("{} {name}", if ok { "OK  " } else { "FAIL" });
        failures += usize::from(!ok);
    };
    let erofs = Some(libc::EROFS);
    let privileged = scenario == "privileged";

    check("cwd is /", std::env::current_dir().is_ok_and(|d| d == Path::new("/")));
    check("host fixture dir is gone from view", !dir.exists());
    check("ro bind readable", fs::read_to_string("/data/ro/hello").is_ok_and(|s| s == "hello"));
    check("ro bind refuses writes", errno(fs::write("/data/ro/new", "x")) == erofs);
    check("ro bind submount is read-only too", errno(fs::write("/data/ro/sub/new", "x")) == erofs);
    check("rw bind (symlinked source) accepts writes", fs::write("/data/rw/written", "rw").is_ok());
    check("'..' in a destination is clamped", Path::new("/rw2/written").is_file());
    check("file bind", fs::read_to_string("/etc/app.conf").is_ok_and(|s| s == "key=value"));
    check("file bind is read-only", errno(fs::OpenOptions::new().write(true).open("/etc/app.conf")) == erofs);
    check("hostile symlink mount lands inside", fs::read_to_string("/pwned/marker").is_ok_and(|s| s == "inside"));
    check("/etc/hostname", fs::read_to_string("/etc/hostname").is_ok_and(|s| s == "testpod\n"));
    check("/etc/resolv.conf", fs::read_to_string("/etc/resolv.conf").is_ok_and(|s| s.contains("10.96.0.10")));
    check("/dev/null writable", fs::write("/dev/null", "x").is_ok());
    check("device mapping writable", fs::write("/dev/custom-null", "x").is_ok());
    let mut zeros = [1u8; 16];
    let zero_ok = fs::File::open("/dev/zero").and_then(|mut f| f.read_exact(&mut zeros)).is_ok();
    check("/dev/zero reads zeros", zero_ok && zeros == [0; 16]);
    check("/dev/pts is a devpts", Path::new("/dev/pts/ptmx").exists());
    check("/dev/ptmx -> pts/ptmx", fs::read_link("/dev/ptmx").is_ok_and(|t| t == Path::new("pts/ptmx")));
    check("/dev/fd -> /proc/self/fd", fs::read_link("/dev/fd").is_ok_and(|t| t == Path::new("/proc/self/fd")));
    check("/dev/mqueue", Path::new("/dev/mqueue").is_dir());
    check("/dev/shm writable", fs::write("/dev/shm/x", "shm").is_ok());
    check("/proc is mounted", Path::new("/proc/self/status").exists());
    check("/sys is mounted", Path::new("/sys/kernel").is_dir());
    check("/sys/fs/cgroup is bound", fs::read_dir("/sys/fs/cgroup").is_ok_and(|mut d| d.next().is_some()));

    if privileged {
        check("rootfs writable", fs::write("/newfile", "x").is_ok());
        check("/sys writable", !readonly("/sys"));
        check("/proc/sys writable mount", !readonly("/proc/sys"));
        check("/proc/keys not masked", fs::metadata("/proc/keys").is_ok_and(|m| m.file_type().is_file()));
        check("/proc/acpi not masked", mount_fstype("/proc/acpi").is_none());
        let host_devs: Vec<PathBuf> = ["/dev/loop-control", "/dev/kmsg", "/dev/mem"]
            .iter()
            .map(|p| PathBuf::from(*p))
            .filter(|p| p.exists())
            .collect();
        check("host devices present", !host_devs.is_empty());
        println!("     (host devices seen: {host_devs:?})");
    } else {
        check("readonly rootfs refuses writes", errno(fs::write("/newfile", "x")) == erofs);
        check(
            "/etc/hosts read-only with a read-only rootfs",
            errno(fs::OpenOptions::new().append(true).open("/etc/hosts")) == erofs,
        );
        // This host's kernel may lack some of them (no /proc/kcore here): check those present.
        let masked_files: Vec<&str> =
            ["/proc/kcore", "/proc/keys", "/proc/timer_list"].into_iter().filter(|p| Path::new(p).exists()).collect();
        check("some masked file present", !masked_files.is_empty());
        for path in masked_files {
            let mut head = Vec::new();
            let read = fs::File::open(path).and_then(|f| f.take(4096).read_to_end(&mut head));
            let is_null = fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device());
            check(&format!("{path} masked (/dev/null, reads empty)"), read.is_ok() && head.is_empty() && is_null);
        }
        if Path::new("/proc/acpi").exists() {
            check("/proc/acpi masked by a read-only tmpfs", mount_fstype("/proc/acpi").as_deref() == Some("tmpfs"));
            check("/proc/acpi read-only", readonly("/proc/acpi"));
        }
        check("/proc/sys read-only", readonly("/proc/sys"));
        // Opening for write fails at open(2) on a read-only mount: nothing is written.
        let hostname = fs::OpenOptions::new().write(true).open("/proc/sys/kernel/hostname");
        check("/proc/sys refuses writes", errno(hostname) == erofs);
        check("/proc/bus read-only", readonly("/proc/bus"));
        check("/sys read-only", readonly("/sys"));
        let writable = writable_mounts_under("/sys/fs/cgroup");
        check("every /sys/fs/cgroup mount read-only", writable.is_empty());
        if !writable.is_empty() {
            println!("     writable: {writable:?}");
        }
        if Path::new("/sys/firmware").exists() {
            check("/sys/firmware masked", fs::read_dir("/sys/firmware").is_ok_and(|mut d| d.next().is_none()));
        }
    }
    io::stdout().flush()?;
    Ok(failures)
}
