use cri_api::v1::{
    Capability, Int64Value, KeyValue, LinuxContainerConfig, LinuxContainerResources, Mount, SecurityProfile,
    SupplementalGroupsPolicy,
};

use super::*;

fn pod(dir: &Path) -> PodPaths {
    PodPaths {
        dir: dir.to_path_buf(),
        net: Some(dir.join("ns/net")),
        ipc: Some(dir.join("ns/ipc")),
        uts: Some(dir.join("ns/uts")),
        pid: None,
        shm: dir.join("shm"),
        hostname: dir.join("hostname"),
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
    }
}

/// A rootfs with the passwd and group files of the harness's busybox image.
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("etc")).expect("etc");
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n\
         default-user:x:1000:1000::/home/default-user:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(
        dir.path().join("etc/group"),
        "root:x:0:\nwheel:x:10:root\nwww-data:x:33:\ngroup-defined-in-image:x:50000:default-user\n",
    )
    .expect("group");
    dir
}

fn security(f: impl FnOnce(&mut LinuxContainerSecurityContext)) -> Option<LinuxContainerConfig> {
    let mut security = LinuxContainerSecurityContext::default();
    f(&mut security);
    Some(LinuxContainerConfig { security_context: Some(security), ..LinuxContainerConfig::default() })
}

fn spec(config: &ContainerConfig, image: &ImageDefaults, root: &Path) -> Result<ContainerSpec, AgentError> {
    let pod = pod(Path::new("/run/crius/pods/p"));
    build(
        config,
        &SpecInputs {
            id: "c1",
            rootfs: root,
            image,
            pod: &pod,
            hostname: "web",
            pod_modes: [0, 0, 0],
            cgroup: Some("crius/pod-p/c1".into()),
            log_path: None,
        },
    )
}

fn busybox() -> ImageDefaults {
    ImageDefaults {
        entrypoint: vec![],
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into(), "A=image".into()],
        working_dir: String::new(),
        user: String::new(),
    }
}

#[test]
fn command_and_args_follow_kubelets_rules() {
    let root = rootfs();
    let image = ImageDefaults { entrypoint: vec!["/entry".into()], cmd: vec!["default".into()], ..busybox() };
    let args = |command: &[&str], args: &[&str]| {
        let config = ContainerConfig {
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..ContainerConfig::default()
        };
        spec(&config, &image, root.path()).expect("spec").process.args
    };
    assert_eq!(args(&[], &[]), ["/entry", "default"]);
    assert_eq!(args(&[], &["x"]), ["/entry", "x"]);
    assert_eq!(args(&["/bin/sh"], &[]), ["/bin/sh"]);
    assert_eq!(args(&["/bin/sh"], &["-c", "true"]), ["/bin/sh", "-c", "true"]);
    let empty = ImageDefaults { entrypoint: vec![], cmd: vec![], ..busybox() };
    let err = spec(&ContainerConfig::default(), &empty, root.path()).expect_err("nothing to run");
    assert!(err.to_string().contains("config.command"), "{err}");
}

#[test]
fn cri_env_overrides_the_image() {
    let root = rootfs();
    let config = ContainerConfig {
        envs: vec![
            KeyValue { key: "A".into(), value: b"cri".to_vec() },
            KeyValue { key: "B".into(), value: b"new".to_vec() },
        ],
        ..ContainerConfig::default()
    };
    let env = spec(&config, &busybox(), root.path()).expect("spec").process.env;
    assert_eq!(env, ["PATH=/bin", "A=cri", "HOSTNAME=web", "B=new"]);
    let no_path = ImageDefaults { env: vec![], ..busybox() };
    let env = spec(&ContainerConfig::default(), &no_path, root.path()).expect("spec").process.env;
    assert!(env[0].starts_with("PATH=/usr/local/sbin"), "{env:?}");
}

#[test]
fn users_come_from_cri_then_the_image() {
    let root = rootfs();
    let user = |image_user: &str, linux: Option<LinuxContainerConfig>| {
        let image = ImageDefaults { user: image_user.into(), ..busybox() };
        spec(&ContainerConfig { linux, ..ContainerConfig::default() }, &image, root.path()).map(|s| s.process.user)
    };
    // The primary group is listed with the others, as runc and containerd
    // do: `id` in a root busybox container prints groups=0(root),10(wheel).
    assert_eq!(user("", None).expect("root"), UserSpec { uid: 0, gid: 0, additional_gids: vec![0, 10] });
    assert_eq!(user("www-data", None).expect("name"), UserSpec { uid: 33, gid: 33, additional_gids: vec![33] });
    assert_eq!(user("1003:1004", None).expect("ids"), UserSpec { uid: 1003, gid: 1004, additional_gids: vec![1004] });
    assert_eq!(user("www-data:1004", None).expect("mixed").gid, 1004);
    let predefined = user("1000", None).expect("image group membership");
    assert_eq!(predefined, UserSpec { uid: 1000, gid: 1000, additional_gids: vec![1000, 50000] });
    let cri = security(|s| {
        s.run_as_user = Some(Int64Value { value: 1000 });
        s.run_as_group = Some(Int64Value { value: 2000 });
        s.supplemental_groups = vec![3000];
    });
    assert_eq!(
        user("www-data", cri).expect("cri"),
        UserSpec { uid: 1000, gid: 2000, additional_gids: vec![2000, 3000, 50000] }
    );
    let strict = security(|s| {
        s.run_as_user = Some(Int64Value { value: 1000 });
        s.supplemental_groups = vec![1234];
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    });
    assert_eq!(
        user("www-data", strict).expect("strict"),
        UserSpec { uid: 1000, gid: 1000, additional_gids: vec![1000, 1234] },
        "Strict leaves out the image's group 50000"
    );
    let group_only = security(|s| s.run_as_group = Some(Int64Value { value: 5 }));
    let err = user("", group_only).expect_err("group without user");
    assert!(err.to_string().contains("run_as_group"), "{err}");
    let err = user("nobody-here", None).expect_err("unknown user");
    assert!(err.to_string().contains("nobody-here"), "{err}");
}

#[test]
#[allow(deprecated)]
fn seccomp_profiles() {
    let root = rootfs();
    let profile = |linux| spec(&ContainerConfig { linux, ..ContainerConfig::default() }, &busybox(), root.path());
    let seccomp = |f: fn(&mut LinuxContainerSecurityContext)| profile(security(f)).map(|s| s.process.seccomp);
    assert_eq!(seccomp(|_| {}).expect("default"), SeccompProfile::Unconfined);
    assert_eq!(
        seccomp(|s| s.seccomp = Some(SecurityProfile { profile_type: 0, localhost_ref: String::new() })).expect("rd"),
        SeccompProfile::RuntimeDefault
    );
    assert_eq!(
        seccomp(|s| s.seccomp_profile_path = "runtime/default".into()).expect("legacy"),
        SeccompProfile::RuntimeDefault
    );
    assert_eq!(
        seccomp(|s| s.seccomp_profile_path = "localhost//etc/p.json".into()).expect("legacy localhost"),
        SeccompProfile::Localhost("/etc/p.json".into())
    );
    assert!(seccomp(|s| s.seccomp_profile_path = "bogus".into()).is_err());
    assert!(
        seccomp(|s| s.seccomp = Some(SecurityProfile { profile_type: 2, localhost_ref: "relative.json".into() }))
            .is_err()
    );
    assert_eq!(
        seccomp(|s| {
            s.privileged = true;
            s.seccomp_profile_path = "runtime/default".into();
        })
        .expect("privileged"),
        SeccompProfile::Unconfined
    );
}

#[test]
fn mounts_paths_and_namespaces() {
    let root = rootfs();
    let config = ContainerConfig {
        mounts: vec![Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: MountPropagation::PropagationHostToContainer as i32,
            ..Mount::default()
        }],
        linux: security(|s| {
            s.readonly_rootfs = true;
            s.capabilities = Some(Capability { drop_capabilities: vec!["ALL".into()], ..Capability::default() });
        }),
        working_dir: "/work".into(),
        ..ContainerConfig::default()
    };
    let spec = spec(&config, &busybox(), root.path()).expect("spec");
    assert_eq!(spec.rootfs.mounts[0].destination, "/data");
    assert!(spec.rootfs.mounts[0].readonly);
    assert_eq!(spec.rootfs.mounts[0].propagation, Propagation::RSlave);
    assert!(spec.rootfs.readonly_rootfs);
    assert_eq!(spec.rootfs.shm.as_deref(), Some(Path::new("/run/crius/pods/p/shm")));
    assert_eq!(spec.process.cwd, "/work");
    assert!(spec.process.capabilities.effective.is_empty(), "drop ALL");
    assert_eq!(spec.namespaces.net.as_deref(), Some(Path::new("/run/crius/pods/p/ns/net")));
    assert_eq!(spec.hostname.as_deref(), Some("web"));
    assert_eq!(spec.cgroup.as_deref(), Some("crius/pod-p/c1"));
}

#[test]
fn recursive_read_only_mounts_must_be_read_only_and_private() {
    let root = rootfs();
    let mount = |readonly, propagation: MountPropagation| ContainerConfig {
        mounts: vec![Mount {
            container_path: "/mnt".into(),
            host_path: "/srv".into(),
            readonly,
            recursive_read_only: true,
            propagation: propagation as i32,
            ..Mount::default()
        }],
        ..ContainerConfig::default()
    };
    let ok = spec(&mount(true, MountPropagation::PropagationPrivate), &busybox(), root.path()).expect("valid");
    assert!(ok.rootfs.mounts[0].recursive_readonly);
    for bad in [
        mount(false, MountPropagation::PropagationPrivate),
        mount(true, MountPropagation::PropagationHostToContainer),
        mount(true, MountPropagation::PropagationBidirectional),
    ] {
        let err = spec(&bad, &busybox(), root.path()).expect_err("refused");
        assert!(matches!(err, AgentError::InvalidArgument { field: "config.mounts", .. }), "{err}");
    }
}

#[test]
fn negative_oom_scores_are_clamped() {
    let root = rootfs();
    let config = ContainerConfig {
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources { oom_score_adj: -998, ..LinuxContainerResources::default() }),
            ..LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    };
    let adj = spec(&config, &busybox(), root.path()).expect("spec").process.oom_score_adj.expect("set");
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").expect("read").trim().parse().expect("int");
    if crius_sandbox::caps::has_effective("CAP_SYS_RESOURCE") {
        assert_eq!(adj, -998);
    } else {
        assert_eq!(adj, own.max(-998), "never below what this process may set");
    }
}

#[test]
fn image_defaults_are_read_from_the_config() {
    let json = br#"{"config":{"Entrypoint":["/e"],"Cmd":["c"],"Env":["A=1"],"WorkingDir":"/w","User":"1000:1000"}}"#;
    let image = ImageDefaults::from_config_json(json).expect("valid");
    assert_eq!(image.entrypoint, ["/e"]);
    assert_eq!(image.working_dir, "/w");
    assert_eq!(image.user, "1000:1000");
    assert_eq!(ImageDefaults::from_config_json(b"{}").expect("no config section"), ImageDefaults::default());
    ImageDefaults::from_config_json(b"not json").expect_err("an unreadable config is an error, not an empty one");
}

#[test]
fn hostname_is_in_the_environment_and_the_request_can_replace_it() {
    let root = rootfs();
    let env = spec(&ContainerConfig::default(), &busybox(), root.path()).expect("spec").process.env;
    assert!(env.contains(&"HOSTNAME=web".to_owned()), "{env:?}");
    let image = ImageDefaults { env: vec!["HOSTNAME=image".into()], ..busybox() };
    let env = spec(&ContainerConfig::default(), &image, root.path()).expect("spec").process.env;
    assert!(env.contains(&"HOSTNAME=web".to_owned()) && !env.iter().any(|e| e == "HOSTNAME=image"), "{env:?}");
    let config = ContainerConfig {
        envs: vec![KeyValue { key: "HOSTNAME".into(), value: b"mine".to_vec() }],
        ..ContainerConfig::default()
    };
    let env = spec(&config, &busybox(), root.path()).expect("spec").process.env;
    assert_eq!(env.iter().filter(|e| e.starts_with("HOSTNAME=")).collect::<Vec<_>>(), ["HOSTNAME=mine"]);
    let node = nix::unistd::gethostname().expect("hostname").to_string_lossy().into_owned();
    assert_eq!(pod_hostname(""), node, "a pod without a hostname has the node's");
}

#[test]
fn relative_host_paths_are_refused() {
    let mount = |host_path: &str| ContainerConfig {
        mounts: vec![Mount { container_path: "/mnt".into(), host_path: host_path.into(), ..Mount::default() }],
        ..ContainerConfig::default()
    };
    check_mounts(&mount("/srv/data")).expect("absolute");
    for relative in ["bin", "./etc", "../../etc"] {
        let err = check_mounts(&mount(relative)).expect_err(relative);
        assert!(matches!(err, AgentError::InvalidArgument { field: "config.mounts.host_path", .. }), "{err}");
    }
    let device = ContainerConfig {
        devices: vec![cri_api::v1::Device {
            host_path: "dev/null".into(),
            container_path: "/dev/x".into(),
            permissions: "rw".into(),
        }],
        ..ContainerConfig::default()
    };
    let err = check_mounts(&device).expect_err("relative device");
    assert!(err.to_string().contains("config.devices.host_path"), "{err}");
}
