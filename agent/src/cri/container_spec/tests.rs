use cri_api::v1::{
    Capability, Int64Value, KeyValue, LinuxContainerConfig, LinuxContainerResources, Mount, SecurityProfile,
    SupplementalGroupsPolicy,
};

use super::*;

/// A rootfs directory (unused by the translation, which reads nothing).
fn rootfs() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn security(f: impl FnOnce(&mut LinuxContainerSecurityContext)) -> Option<LinuxContainerConfig> {
    let mut security = LinuxContainerSecurityContext::default();
    f(&mut security);
    Some(LinuxContainerConfig { security_context: Some(security), ..LinuxContainerConfig::default() })
}

fn spec(config: &ContainerConfig, image: &ImageDefaults, root: &Path) -> Result<ContainerRequest, AgentError> {
    build(
        config,
        SpecInputs {
            id: "c1",
            rootfs: RootfsLayers { layers: vec![root.to_path_buf()], upper: root.join("u"), work: root.join("w") },
            image,
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
fn users_are_passed_on_for_the_backend_to_resolve() {
    let root = rootfs();
    let image = ImageDefaults { user: "www-data:1004".into(), ..busybox() };
    let config = ContainerConfig {
        linux: security(|s| {
            s.run_as_user = Some(Int64Value { value: 1000 });
            s.run_as_group = Some(Int64Value { value: 2000 });
            s.supplemental_groups = vec![3000];
            s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
        }),
        ..ContainerConfig::default()
    };
    let user = spec(&config, &image, root.path()).expect("request").process.user;
    assert_eq!(
        user,
        UserRequest {
            run_as_user: Some(1000),
            run_as_username: String::new(),
            run_as_group: Some(2000),
            supplemental_groups: vec![3000],
            strict_groups: true,
            image_user: "www-data:1004".into(),
        }
    );
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
    let fs = &spec.filesystem;
    assert_eq!(fs.mounts[0].destination, "/data");
    assert!(fs.mounts[0].readonly);
    assert_eq!(fs.mounts[0].propagation, Propagation::RSlave);
    assert!(fs.readonly_rootfs);
    assert_eq!(fs.masked_paths.len(), DEFAULT_MASKED_PATHS.len(), "the default masked paths");
    assert_eq!(spec.process.cwd, "/work");
    assert!(spec.process.capabilities.effective.is_empty(), "drop ALL");
    assert_eq!(spec.pid, PidMode::Pod, "the pod's mode (POD is 0)");
    assert_eq!(spec.hostname, "web");
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
    assert!(ok.filesystem.mounts[0].recursive_readonly);
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
