//! The installer image, run by crius itself: `deploy/image/build.py` builds
//! it from the crius under test (twice: the same digest) and pushes it to a
//! local registry; crius pulls it and runs it as a privileged container with
//! a scratch directory mounted as the host root (`start: none`, so no second
//! crius is started), with the config the chart renders by default
//! (`deploy/manifests/crius.yaml`).
//! The directory (empty but for `/run/systemd/system`: a host that runs
//! systemd, which the chart's default `cgroup_driver` needs) then holds
//! exactly the binary, config and unit; a second run changes nothing;
//! uninstall leaves the directory as it was; a config the binary refuses
//! installs nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use cri_api::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, CreateContainerRequest, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, Mount, PodSandboxConfig, StartContainerRequest,
};
use crius_e2e::containers::{log_lines, pod_config, run_pod, wait_state};
use crius_e2e::images::ImageEnv;
use crius_e2e::{count_processes, crius_binary};
use tonic::transport::Channel;

const TEST: &str = "installer_image_installs_is_idempotent_and_uninstalls_under_crius";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The `crius.toml` of the ConfigMap in the committed plain manifests: what
/// the chart renders from its default values.
fn chart_config() -> Result<String> {
    let manifests = std::fs::read_to_string(repo().join("deploy/manifests/crius.yaml"))?;
    let mut lines = manifests.lines().skip_while(|l| l.trim_end() != "  crius.toml: |").skip(1);
    let mut config = String::new();
    for line in lines.by_ref() {
        match line.strip_prefix("    ") {
            Some(rest) => config.push_str(&format!("{rest}\n")),
            None if line.is_empty() => config.push('\n'),
            None => break,
        }
    }
    ensure!(!config.trim().is_empty(), "no crius.toml in deploy/manifests/crius.yaml");
    // A `|` block keeps exactly one final newline.
    Ok(format!("{}\n", config.trim_end_matches('\n')))
}

/// One run of the installer image with `action`: its exit code and output.
struct Run<'a> {
    rt: &'a mut RuntimeServiceClient<Channel>,
    pod: &'a str,
    pod_config: &'a PodSandboxConfig,
    image: &'a str,
    host: &'a Path,
    logs: &'a Path,
}

impl Run<'_> {
    async fn installer(&mut self, name: &str, action: &str, config: &Path) -> Result<(i32, String)> {
        let mount = |host: &Path, container: &str, readonly| Mount {
            host_path: host.display().to_string(),
            container_path: container.into(),
            readonly,
            ..Mount::default()
        };
        let env = |key: &str, value: &str| KeyValue { key: key.into(), value: value.into() };
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: self.image.into(), ..ImageSpec::default() }),
            args: vec![action.into()],
            envs: vec![env("CRIUS_START", "none"), env("CRIUS_HOST_ROOT", "/host")],
            mounts: vec![mount(self.host, "/host", false), mount(config, "/etc/crius-installer/crius.toml", true)],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    privileged: true,
                    ..LinuxContainerSecurityContext::default()
                }),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: self.pod.into(),
            config: Some(config),
            sandbox_config: Some(self.pod_config.clone()),
        };
        let id = self.rt.create_container(request).await?.into_inner().container_id;
        self.rt.start_container(StartContainerRequest { container_id: id.clone() }).await?;
        let done = wait_state(self.rt, &id, ContainerState::ContainerExited, Duration::from_secs(60)).await?;
        let output: Vec<String> =
            log_lines(&self.logs.join(format!("{name}.log"))).into_iter().map(|(_, _, line)| line).collect();
        Ok((done.exit_code, output.join("\n")))
    }
}

/// Every path under `dir` (relative) with its inode, mtime and mode.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, i64, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, i64, u32)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let rel = path.strip_prefix(base).expect("below base").display().to_string();
            out.insert(rel, (meta.ino(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000, meta.mode()));
            if meta.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The binary the image ships: the crius under test without debug info, as build.py strips it.
fn stripped_crius(dir: &Path) -> Result<Vec<u8>> {
    let out = dir.join("crius.stripped");
    let status = Command::new("strip").arg("--strip-debug").arg("-o").arg(&out).arg(crius_binary()?).status()?;
    ensure!(status.success(), "strip failed");
    Ok(std::fs::read(out)?)
}

#[tokio::test]
async fn installer_image_installs_is_idempotent_and_uninstalls_under_crius() -> Result<()> {
    if !testkit::require_root(TEST)
        || !testkit::require_tool(TEST, "python3", "python3")
        || !testkit::require_tool(TEST, "gcc", "gcc")
        || !testkit::require_tool(TEST, "strip", "binutils")
        || !testkit::require_tool(TEST, "/bin/busybox", "busybox-static")
        || !testkit::require_tool(TEST, "apt-get", "apt")
    {
        return Ok(());
    }
    let Some(env) = ImageEnv::start(TEST).await? else { return Ok(()) };
    let work = env.dirs.temp.path().join("installer");
    std::fs::create_dir_all(&work)?;
    let image = env.reference("crius/installer:e2e");
    let build = |out: &str, push: Option<&str>| -> Result<String> {
        let mut command = Command::new("python3");
        command.arg(repo().join("deploy/image/build.py")).arg("--crius").arg(crius_binary()?);
        command.arg("--out").arg(work.join(out)).args(["--level", "1"]);
        if let Some(reference) = push {
            command.args(["--push", reference]);
        }
        let output = command.output().context("run deploy/image/build.py")?;
        ensure!(output.status.success(), "build.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout)?;
        let digest = stdout.split("manifest ").nth(1).and_then(|rest| rest.split_whitespace().next());
        Ok(digest.context("build.py printed no manifest digest")?.to_owned())
    };
    let pushed = build("layout", Some(&image))?;
    assert_eq!(build("again", None)?, pushed, "the same binary builds the same image");
    env.pull(&image).await?;

    let host = work.join("host");
    // A host that runs systemd, as the chart's default cgroup_driver needs
    // (crius checks /run/systemd/system); the installer must leave it alone.
    std::fs::create_dir_all(host.join("run/systemd/system"))?;
    let pristine = snapshot(&host);
    let config = work.join("crius.toml");
    std::fs::write(&config, chart_config()?)?;
    let logs = work.join("logs");
    let mut rt = env.crius.runtime().await?;
    let pod_config = pod_config("installer", &logs);
    let pod = run_pod(&mut rt, &pod_config).await?;
    let mut run = Run { rt: &mut rt, pod: &pod, pod_config: &pod_config, image: &image, host: &host, logs: &logs };
    let crius_in_host = host.join("usr/local/bin/crius").display().to_string();
    let started = || count_processes(|cmdline| cmdline.starts_with(&crius_in_host));

    let (code, output) = run.installer("install", "install", &config).await?;
    assert_eq!(code, 0, "{output}");
    assert_eq!(std::fs::read(host.join("usr/local/bin/crius"))?, stripped_crius(&work)?, "the binary");
    assert_eq!(std::fs::metadata(host.join("usr/local/bin/crius"))?.permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read_to_string(host.join("etc/crius/crius.toml"))?, chart_config()?, "the config");
    let unit = std::fs::read(repo().join("deploy/systemd/crius.service"))?;
    assert_eq!(std::fs::read(host.join("etc/systemd/system/crius.service"))?, unit, "the unit");
    let record = std::fs::read_to_string(host.join("var/lib/crius-installer/installed"))?;
    for path in ["/usr/local/bin/crius", "/etc/crius/crius.toml", "/etc/systemd/system/crius.service", "d /usr/local"] {
        assert!(record.contains(path), "{path} recorded: {record}");
    }
    let everything: Vec<String> = snapshot(&host).into_keys().collect();
    let expected = [
        "etc",
        "etc/crius",
        "etc/crius/crius.toml",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/crius.service",
        "run",
        "run/systemd",
        "run/systemd/system",
        "usr",
        "usr/local",
        "usr/local/bin",
        "usr/local/bin/crius",
        "var",
        "var/lib",
        "var/lib/crius-installer",
        "var/lib/crius-installer/installed",
    ];
    assert_eq!(everything, expected, "nothing else");
    assert!(output.contains("start is none"), "{output}");
    assert_eq!(started(), 0, "start: none starts no crius");

    let before = snapshot(&host);
    let (code, output) = run.installer("again", "install", &config).await?;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("nothing to do"), "{output}");
    assert_eq!(snapshot(&host), before, "a second install touches nothing");

    let (code, output) = run.installer("uninstall", "uninstall", &config).await?;
    assert_eq!(code, 0, "{output}");
    assert_eq!(snapshot(&host), pristine, "uninstall leaves the host root as it was: {output}");
    assert_eq!(started(), 0);

    // The kvm handler is not in this crius yet: its config must install nothing.
    let kvm = work.join("kvm.toml");
    std::fs::write(&kvm, format!("{}\n[runtime.handlers.kvm]\ntype = \"kvm\"\n", chart_config()?))?;
    let (code, output) = run.installer("refused", "install", &kvm).await?;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("handlers") && output.contains("refuses the config"), "{output}");
    assert_eq!(snapshot(&host), pristine, "a refused config writes nothing");
    Ok(())
}
