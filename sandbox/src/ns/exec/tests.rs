use std::collections::BTreeMap;

use super::*;

#[test]
fn env_extra_overrides_and_appends() {
    let base = vec!["PATH=/bin".to_owned(), "A=1".to_owned(), "B=2".to_owned()];
    let extra = vec!["A=x".to_owned(), "C=3".to_owned(), "PATH=/usr/bin".to_owned()];
    assert_eq!(merge_env(&base, &extra), ["B=2", "A=x", "C=3", "PATH=/usr/bin"]);
    assert_eq!(merge_env(&base, &[]), base);
}

#[test]
fn requests_are_checked() {
    let ok = ExecRequest { args: vec!["ls".into()], env_extra: vec!["A=".into()], tty: false };
    assert!(check_request(&ok).is_ok());
    assert!(check_request(&ExecRequest { tty: true, ..ok.clone() }).is_ok());
    let cases = [
        (ExecRequest { args: vec![], ..ok.clone() }, "args"),
        (ExecRequest { args: vec![String::new()], ..ok.clone() }, "args"),
        (ExecRequest { args: vec!["a".into(), "b\0".into()], ..ok.clone() }, "args[1]"),
        (ExecRequest { env_extra: vec!["A=1".into(), "B".into()], ..ok.clone() }, "env_extra[1]"),
        (ExecRequest { env_extra: vec!["=1".into()], ..ok.clone() }, "env_extra[0]"),
        (ExecRequest { env_extra: vec!["A=\0".into()], ..ok.clone() }, "env_extra[0]"),
    ];
    for (request, want) in cases {
        match check_request(&request) {
            Err(ExecError::InvalidRequest { field, .. }) => assert_eq!(field, want, "{request:?}"),
            other => panic!("{request:?}: {other:?}"),
        }
    }
    let parsed: ExecRequest = serde_json::from_str(r#"{"args":["sh"]}"#).expect("defaults");
    assert_eq!(parsed, ExecRequest { args: vec!["sh".into()], ..Default::default() });
}

#[test]
fn cgroup_files_follow_the_hierarchies() {
    let text = "12:pids:/crius/c1\n4:cpu,cpuacct:/crius/c1\n3:hugetlb:/crius/c1\n\
                1:name=systemd:/user.slice\n0::/crius/c1\n";
    let mounts: BTreeMap<String, PathBuf> = [
        ("pids", "/sys/fs/cgroup/pids"),
        ("cpu", "/sys/fs/cgroup/cpu,cpuacct"),
        ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
    ]
    .into_iter()
    .map(|(c, p)| (c.to_owned(), PathBuf::from(p)))
    .collect();
    let v1 = cgroup_procs_files(&CgroupMode::V1 { mounts }, text);
    assert_eq!(
        v1,
        [
            PathBuf::from("/sys/fs/cgroup/pids/crius/c1/cgroup.procs"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/crius/c1/cgroup.procs"),
        ]
    );
    let v2 = cgroup_procs_files(&CgroupMode::V2 { root: "/sys/fs/cgroup".into() }, "0::/crius/c1\n");
    assert_eq!(v2, [PathBuf::from("/sys/fs/cgroup/crius/c1/cgroup.procs")]);
    let root = cgroup_procs_files(&CgroupMode::V2 { root: "/sys/fs/cgroup".into() }, "0::/\n");
    assert_eq!(root, [PathBuf::from("/sys/fs/cgroup/cgroup.procs")]);
}

#[test]
fn exit_codes_follow_the_shell_convention() {
    let not_in_path = setup(InitError::NotInPath { name: "x".into(), path: "/bin".into() });
    assert_eq!(not_in_path.exit_code(), EXIT_NOT_FOUND);
    let enoent = setup(InitError::Exec { path: "/x".into(), errno: Errno::ENOENT });
    assert_eq!(enoent.exit_code(), EXIT_NOT_FOUND);
    let eacces = setup(InitError::Exec { path: "/x".into(), errno: Errno::EACCES });
    assert_eq!(eacces.exit_code(), EXIT_CANNOT_EXECUTE);
    assert!(eacces.report().ends_with("exec /x: Permission denied"), "{}", eacces.report());
    let gone = ExecError::NotRunning { bundle: "/b".into(), pid: 4 };
    assert_eq!(gone.exit_code(), EXIT_SETUP_FAILED);
}
