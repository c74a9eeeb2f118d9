use std::io::Write;
use std::path::Path;
use std::process::Command;

use seccompiler::{SeccompAction, TargetArch, sock_filter};

use super::*;

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

fn default_caps() -> Vec<String> {
    ["CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP"]
        .into_iter()
        .chain(["NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"])
        .map(String::from)
        .collect()
}

fn with_cap(cap: &str) -> Vec<String> {
    let mut caps = default_caps();
    caps.push(cap.to_owned());
    caps
}

fn nr(arch: TargetArch, name: &str) -> u32 {
    let n = plan::lookup(table(arch).expect("table"), name).unwrap_or_else(|| panic!("no syscall {name}"));
    u32::try_from(n).expect("small")
}

/// A classic-BPF interpreter for the opcodes seccompiler and `bpf.rs` emit,
/// run over a `struct seccomp_data`; returns the filter's verdict.
fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let load = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            8 | 12 => 0,
            16..=63 => {
                let arg = args[((off - 16) / 8) as usize];
                if off.is_multiple_of(8) { arg as u32 } else { (arg >> 32) as u32 }
            }
            _ => panic!("load outside seccomp_data: {off}"),
        }
    };
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let i = prog.get(pc).unwrap_or_else(|| panic!("pc {pc} ran off the program"));
        pc += 1;
        let cond = |c: bool| usize::from(if c { i.jt } else { i.jf });
        match i.code {
            0x20 => a = load(i.k),
            0x54 => a &= i.k,
            0x05 => pc += i.k as usize,
            0x15 => pc += cond(a == i.k),
            0x25 => pc += cond(a > i.k),
            0x35 => pc += cond(a >= i.k),
            0x06 => return i.k,
            code => panic!("unexpected opcode {code:#x} at {}", pc - 1),
        }
    }
}

fn ret(action: SeccompAction) -> u32 {
    u32::from(action)
}

fn default_program(arch: TargetArch, caps: &[String]) -> BpfProgram {
    compile_json(DEFAULT_PROFILE, DEFAULT_ORIGIN, caps, arch).expect("default profile compiles")
}

#[test]
fn default_profile_compiles_on_both_arches() {
    for arch in [TargetArch::x86_64, TargetArch::aarch64] {
        let prog = default_program(arch, &default_caps());
        assert!(prog.len() > 300 && prog.len() <= bpf::MAX_INSNS, "{arch:?}: {} insns", prog.len());
    }
    let native = compile(&SeccompProfile::RuntimeDefault, &default_caps()).expect("compile").expect("program");
    assert!(!native.is_empty());
    assert!(compile(&SeccompProfile::Unconfined, &default_caps()).expect("unconfined").is_none());
}

#[test]
fn default_profile_names_exist_on_some_arch() {
    let parsed = profile::parse(DEFAULT_PROFILE).expect("parse");
    for name in parsed.syscalls.iter().flatten().flat_map(|s| s.names.iter().flatten()) {
        let known = [TargetArch::x86_64, TargetArch::aarch64]
            .into_iter()
            .any(|arch| plan::lookup(table(arch).expect("table"), name).is_some());
        assert!(known, "{name} is in no syscall table (typo?)");
    }
}

#[test]
fn default_profile_verdicts_x86_64() {
    let x = TargetArch::x86_64;
    let prog = default_program(x, &default_caps());
    let v = |name: &str, args: [u64; 6]| run(&prog, AUDIT_ARCH_X86_64, nr(x, name), args);
    let allow = ret(SeccompAction::Allow);
    let eperm = ret(SeccompAction::Errno(EPERM));
    for name in ["getpid", "read", "write", "openat", "mkdir", "execve", "exit_group", "ptrace", "chroot"] {
        assert_eq!(v(name, [0; 6]), allow, "{name}");
    }
    for name in ["unshare", "mount", "setns", "bpf", "keyctl", "add_key", "reboot", "init_module", "acct"] {
        assert_eq!(v(name, [0; 6]), eperm, "{name}");
    }
    for name in ["kexec_load", "userfaultfd", "io_uring_setup", "clock_settime", "open_by_handle_at"] {
        assert_eq!(v(name, [0; 6]), eperm, "{name}");
    }
    let clone_newns = u64::from(libc::CLONE_NEWNS as u32);
    let clone_thread = (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_THREAD) as u64;
    assert_eq!(v("clone", [clone_thread, 0, 0, 0, 0, 0]), allow);
    assert_eq!(v("clone", [clone_newns | 17, 0, 0, 0, 0, 0]), eperm);
    assert_eq!(v("clone", [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]), eperm);
    assert_eq!(v("clone3", [0; 6]), ret(SeccompAction::Errno(ENOSYS)));
    assert_eq!(v("personality", [0; 6]), allow);
    assert_eq!(v("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), allow);
    assert_eq!(v("personality", [0x0040_0000, 0, 0, 0, 0, 0]), eperm);
    assert_eq!(v("socket", [libc::AF_INET as u64, 0, 0, 0, 0, 0]), allow);
    assert_eq!(v("socket", [libc::AF_VSOCK as u64, 0, 0, 0, 0, 0]), eperm);
    // Other ABIs are killed.
    let kill = ret(SeccompAction::KillProcess);
    assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 0x4000_0000 | nr(x, "getpid"), [0; 6]), kill);
    assert_eq!(run(&prog, AUDIT_ARCH_I386, 20, [0; 6]), kill);
    assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 1023, [0; 6]), eperm);
}

#[test]
fn default_profile_cap_conditional_rules() {
    let x = TargetArch::x86_64;
    let allow = ret(SeccompAction::Allow);
    let eperm = ret(SeccompAction::Errno(EPERM));
    let admin = default_program(x, &with_cap("cap_sys_admin"));
    let v = |prog: &BpfProgram, name: &str, a0: u64| run(prog, AUDIT_ARCH_X86_64, nr(x, name), [a0, 0, 0, 0, 0, 0]);
    assert_eq!(v(&admin, "unshare", libc::CLONE_NEWNS as u64), allow);
    assert_eq!(v(&admin, "mount", 0), allow);
    assert_eq!(v(&admin, "clone", libc::CLONE_NEWNS as u64), allow);
    assert_eq!(v(&admin, "clone3", 0), allow);
    let cases = [
        ("SYS_PTRACE", "kcmp"),
        ("SYS_MODULE", "init_module"),
        ("SYS_BOOT", "reboot"),
        ("SYS_TIME", "clock_settime"),
        ("SYS_PACCT", "acct"),
        ("SYS_NICE", "mbind"),
        ("SYS_RAWIO", "iopl"),
        ("SYSLOG", "syslog"),
        ("BPF", "bpf"),
        ("DAC_READ_SEARCH", "open_by_handle_at"),
    ];
    let plain = default_program(x, &default_caps());
    for (cap, name) in cases {
        assert_eq!(v(&plain, name, 0), eperm, "{name} without {cap}");
        assert_eq!(v(&default_program(x, &with_cap(cap)), name, 0), allow, "{name} with {cap}");
    }
    // Without CAP_SYS_CHROOT chroot is denied.
    let no_chroot: Vec<String> = default_caps().into_iter().filter(|c| c != "SYS_CHROOT").collect();
    assert_eq!(v(&default_program(x, &no_chroot), "chroot", 0), eperm);
}

#[test]
fn default_profile_verdicts_aarch64() {
    let a = TargetArch::aarch64;
    let prog = default_program(a, &default_caps());
    let v = |name: &str| run(&prog, AUDIT_ARCH_AARCH64, nr(a, name), [0; 6]);
    assert_eq!(v("getpid"), ret(SeccompAction::Allow));
    assert_eq!(v("mkdirat"), ret(SeccompAction::Allow));
    assert_eq!(v("unshare"), ret(SeccompAction::Errno(EPERM)));
    assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 172, [0; 6]), ret(SeccompAction::KillProcess));
}

const DENY_MKDIR: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
    "syscalls": [
        {"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["acct"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3,
         "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["fchmod"], "action": "SCMP_ACT_TRAP",
         "args": [{"index": 1, "value": 2048, "valueTwo": 2048, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["fchmod"], "action": "SCMP_ACT_LOG",
         "args": [{"index": 1, "value": 7, "op": "SCMP_CMP_GT"}, {"index": 1, "value": 3, "op": "SCMP_CMP_LT"}]}
    ]
}"#;

#[test]
fn localhost_style_profile_actions_and_args() {
    let x = TargetArch::x86_64;
    let prog = compile_json(DENY_MKDIR, "test", &[], x).expect("compile");
    let v = |name: &str, a1: u64| run(&prog, AUDIT_ARCH_X86_64, nr(x, name), [0, a1, 0, 0, 0, 0]);
    assert_eq!(v("mkdir", 0), ret(SeccompAction::Errno(1)));
    assert_eq!(v("mkdirat", 0), ret(SeccompAction::Errno(1)));
    assert_eq!(v("rmdir", 0), ret(SeccompAction::Errno(EPERM)));
    assert_eq!(v("acct", 0), ret(SeccompAction::KillProcess));
    assert_eq!(v("kill", 9), ret(SeccompAction::Errno(3)));
    assert_eq!(v("kill", 15), ret(SeccompAction::Allow));
    assert_eq!(v("fchmod", 0o4755), ret(SeccompAction::Trap));
    assert_eq!(v("fchmod", 0o644), ret(SeccompAction::Log)); // > 7 (repeated index: OR)
    assert_eq!(v("fchmod", 2), ret(SeccompAction::Log)); // < 3
    assert_eq!(v("fchmod", 5), ret(SeccompAction::Allow));
    assert_eq!(v("getpid", 0), ret(SeccompAction::Allow));
}

#[test]
fn conditions_on_distinct_args_are_anded() {
    let x = TargetArch::x86_64;
    let text = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GE"}, {"index": 1, "value": 15, "op": "SCMP_CMP_LE"}]}]}"#;
    let prog = compile_json(text, "test", &[], x).expect("compile");
    let v = |a0: u64, a1: u64| run(&prog, AUDIT_ARCH_X86_64, nr(x, "kill"), [a0, a1, 0, 0, 0, 0]);
    assert_eq!(v(5, 15), ret(SeccompAction::Allow));
    assert_eq!(v(0, 15), ret(SeccompAction::Errno(EPERM)));
    assert_eq!(v(5, 16), ret(SeccompAction::Errno(EPERM)));
    assert_eq!(v(5, 1 << 40), ret(SeccompAction::Errno(EPERM)), "64-bit comparison");
}

#[test]
fn malformed_profiles_name_the_field() {
    let cases = [
        (r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, "defaultAction"),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "X"}]}"#,
            "syscalls[0].action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}"#,
            "syscalls[0].args[0].op",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "syscalls[0].args[0].index",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}"#,
            "syscalls[0].names",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
            "syscalls[0].action",
        ),
        (r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}"#, "defaultAction"),
    ];
    for (text, want) in cases {
        match compile_json(text, "/p.json", &[], TargetArch::x86_64) {
            Err(SeccompError::Malformed { profile, field, .. }) => {
                assert_eq!((profile.as_str(), field.as_str()), ("/p.json", want), "{text}")
            }
            other => panic!("{text}: expected malformed, got {other:?}"),
        }
    }
}

#[test]
fn notify_is_unsupported_and_bad_json_is_a_parse_error() {
    let notify =
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#;
    let err = compile_json(notify, "p", &[], TargetArch::x86_64).expect_err("notify");
    assert!(matches!(&err, SeccompError::Unsupported { what } if what.contains("SCMP_ACT_NOTIFY")), "{err:?}");
    let err = compile_json(r#"{"defaultAction": 3}"#, "/x/p.json", &[], TargetArch::x86_64).expect_err("bad json");
    assert!(matches!(&err, SeccompError::Parse { profile, .. } if profile == "/x/p.json"), "{err:?}");
    assert_eq!(err.to_string(), "parse seccomp profile /x/p.json");
    let missing = SeccompProfile::Localhost("/nonexistent/crius/profile.json".into());
    let err = compile(&missing, &[]).expect_err("missing file");
    assert!(matches!(&err, SeccompError::Read { .. }), "{err:?}");
    assert_eq!(err.to_string(), "read seccomp profile /nonexistent/crius/profile.json");
}

#[test]
fn default_errno_ret_and_unknown_names() {
    let text = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "syscalls": [{"names": ["getpid", "definitely_not_a_syscall"], "action": "SCMP_ACT_ALLOW"}]}"#;
    let x = TargetArch::x86_64;
    let prog = compile_json(text, "p", &[], x).expect("unknown names are skipped");
    assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr(x, "getpid"), [0; 6]), ret(SeccompAction::Allow));
    assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr(x, "getppid"), [0; 6]), ret(SeccompAction::Errno(38)));
    let only_unknown =
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nope"], "action": "SCMP_ACT_KILL"}]}"#;
    let prog = compile_json(only_unknown, "p", &[], x).expect("compile");
    assert_eq!(run(&prog, AUDIT_ARCH_X86_64, nr(x, "getpid"), [0; 6]), ret(SeccompAction::Allow));
}

// ---- in a child process -------------------------------------------------

/// Env var that turns [`seccomp_child`] into the child for one scenario.
const CHILD_ENV: &str = "CRIUS_SECCOMP_TEST_CHILD";
/// Env var carrying the scratch directory to the child.
const CHILD_DIR_ENV: &str = "CRIUS_SECCOMP_TEST_DIR";
/// Child exit codes.
const DENIED: i32 = 10;
const ALLOWED: i32 = 11;
const OTHER_ERROR: i32 = 12;
const SETUP_FAILED: i32 = 13;

/// Runs `scenario` in a re-exec'd copy of this test binary; returns its exit code.
fn in_child(scenario: &str, dir: &Path) -> i32 {
    let name = concat!(module_path!(), "::seccomp_child");
    let name = name.split_once("::").map_or(name, |(_, rest)| rest);
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([name, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, scenario)
        .env(CHILD_DIR_ENV, dir)
        .output()
        .expect("spawn child");
    let code = out.status.code().unwrap_or_else(|| panic!("child killed: {:?}", out.status));
    if ![DENIED, ALLOWED].contains(&code) {
        std::io::stderr().write_all(&out.stdout).ok();
        std::io::stderr().write_all(&out.stderr).ok();
    }
    code
}

#[test]
fn seccomp_localhost_profile_denies_mkdir_in_child() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(in_child("localhost-mkdir", dir.path()), DENIED);
    assert!(!dir.path().join("made").exists());
    assert_eq!(in_child("unconfined-mkdir", dir.path()), ALLOWED, "control: mkdir works without the filter");
}

#[test]
fn seccomp_runtime_default_denies_unshare_in_child() {
    if !testkit::require_root("seccomp_runtime_default_denies_unshare_in_child") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(in_child("default-unshare", dir.path()), DENIED);
    assert_eq!(in_child("default-admin-unshare", dir.path()), ALLOWED, "control: allowed with CAP_SYS_ADMIN");
}

/// The child side; does nothing unless started by [`in_child`].
#[test]
#[ignore = "child process of the seccomp tests"]
fn seccomp_child() {
    let (Ok(scenario), Ok(dir)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_DIR_ENV)) else { return };
    std::process::exit(child(&scenario, Path::new(&dir)));
}

fn child(scenario: &str, dir: &Path) -> i32 {
    let profile = match scenario {
        "localhost-mkdir" | "unconfined-mkdir" => {
            let path = dir.join("deny-mkdir.json");
            if std::fs::write(&path, DENY_MKDIR).is_err() {
                return SETUP_FAILED;
            }
            if scenario == "localhost-mkdir" { SeccompProfile::Localhost(path) } else { SeccompProfile::Unconfined }
        }
        _ => SeccompProfile::RuntimeDefault,
    };
    let caps = if scenario == "default-admin-unshare" { with_cap("CAP_SYS_ADMIN") } else { default_caps() };
    match compile(&profile, &caps) {
        Ok(Some(prog)) => {
            if let Err(e) = apply(&prog) {
                eprintln!("apply: {e:?}");
                return SETUP_FAILED;
            }
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("compile: {e:?}");
            return SETUP_FAILED;
        }
    }
    // Ordinary work keeps working under every profile.
    let file = dir.join(format!("{scenario}.txt"));
    if std::fs::write(&file, b"ok").is_err() || std::fs::read(&file).ok().as_deref() != Some(b"ok".as_slice()) {
        return OTHER_ERROR;
    }
    if nix::unistd::getpid().as_raw() <= 0 {
        return OTHER_ERROR;
    }
    let outcome = if scenario.ends_with("mkdir") {
        std::fs::create_dir(dir.join("made")).map_err(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    } else {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e == nix::errno::Errno::EPERM)
    };
    match outcome {
        Ok(()) => ALLOWED,
        Err(true) => DENIED,
        Err(false) => OTHER_ERROR,
    }
}
