use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::firewall::Protocol;

const IPS: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/ns"}],"ips":[{"address":"fd00::5/64","interface":1},{"address":"10.9.0.5/24","interface":1},{"address":"10.9.0.1/24","interface":0}]}"#;

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(plugins: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["bin", "conf", "cache"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let lab = Self { dir };
        lab.plugin("fakeip", &format!("[ \"$CNI_COMMAND\" = ADD ] && echo '{IPS}'\nexit 0"));
        lab.plugin("passthrough", &format!("[ \"$CNI_COMMAND\" = ADD ] && echo '{IPS}'\nexit 0"));
        lab.plugin(
            "failing",
            "[ \"$CNI_COMMAND\" = ADD ] && { echo '{\"code\":7,\"msg\":\"no luck\"}'; exit 1; }\nexit 0",
        );
        let list: Vec<String> = plugins.iter().map(|p| p.to_string()).collect();
        lab.write_list(&list.join(","));
        lab
    }

    fn write_list(&self, plugins_json: &str) {
        let text = format!(r#"{{"cniVersion":"1.0.0","name":"testnet","plugins":[{plugins_json}]}}"#);
        std::fs::write(self.dir.path().join("conf/10-test.conflist"), text).expect("write conflist");
    }

    fn plugin(&self, name: &str, body: &str) {
        let log = self.log_path();
        let script = format!(
            "#!/bin/sh\necho \"$CNI_COMMAND {name} $CNI_CONTAINERID $CNI_IFNAME\" >> {log}\ncat > {log}.{name}.$CNI_COMMAND\n{body}\n",
            log = log.display()
        );
        let path = self.dir.path().join("bin").join(name);
        std::fs::write(&path, script).expect("write plugin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path()).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn stdin_of(&self, plugin: &str, command: &str) -> Value {
        let path = format!("{}.{plugin}.{command}", self.log_path().display());
        serde_json::from_slice(&std::fs::read(path).expect("plugin stdin")).expect("stdin is JSON")
    }

    fn network(&self) -> CniNetwork {
        CniNetwork::new(CniConfig {
            conf_dir: self.dir.path().join("conf"),
            bin_dirs: vec![self.dir.path().join("missing"), self.dir.path().join("bin")],
            cache_dir: self.dir.path().join("cache"),
        })
        .expect("cni network")
    }
}

fn pod() -> CniPod<'static> {
    CniPod { id: "pod1", name: "web", namespace: "default", uid: "u-1" }
}

fn port() -> PortMapping {
    PortMapping { protocol: Protocol::Tcp, host_ip: None, host_port: 8080, container_port: 80 }
}

#[test]
fn add_runs_the_chain_and_del_undoes_it_with_the_cached_config() {
    let lab = Lab::new(&[r#"{"type":"fakeip"}"#, r#"{"type":"passthrough","capabilities":{"portMappings":true}}"#]);
    let net = lab.network();
    let ips = net.attach(&pod(), Path::new("/proc/self/ns/net"), &[port()], &CniDns::default()).expect("add");
    assert_eq!(ips, ["10.9.0.5".parse::<IpAddr>().expect("ip"), "fd00::5".parse().expect("ip")]);
    assert_eq!(lab.calls(), ["ADD fakeip pod1 eth0", "ADD passthrough pod1 eth0"]);

    let first = lab.stdin_of("fakeip", "ADD");
    assert_eq!(first["name"], "testnet");
    assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none(), "{first}");
    let second = lab.stdin_of("passthrough", "ADD");
    assert_eq!(second["prevResult"]["ips"][0]["address"], "fd00::5/64");
    assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(second["runtimeConfig"]["portMappings"][0]["protocol"], "tcp");
    assert!(second["runtimeConfig"].get("dns").is_none(), "dns was not a declared capability");

    net.check("pod1").expect("check");
    // The config changes (or goes away): DEL still uses what ADD used.
    std::fs::remove_file(lab.dir.path().join("conf/10-test.conflist")).expect("rm conflist");
    net.detach("pod1").expect("del");
    let calls = lab.calls();
    assert_eq!(calls[calls.len() - 2..], ["DEL passthrough pod1 eth0", "DEL fakeip pod1 eth0"]);
    assert_eq!(lab.stdin_of("fakeip", "DEL")["prevResult"]["ips"][1]["address"], "10.9.0.5/24");
    let count = lab.calls().len();
    net.detach("pod1").expect("second del");
    assert_eq!(lab.calls().len(), count, "a second DEL ran plugins again");
}

#[test]
fn a_failed_add_is_undone_and_reports_the_plugin_message() {
    let lab = Lab::new(&[r#"{"type":"fakeip"}"#, r#"{"type":"failing"}"#]);
    let net = lab.network();
    let err = net.attach(&pod(), Path::new("/proc/self/ns/net"), &[], &CniDns::default()).expect_err("fails");
    assert!(err.to_string().contains("CNI plugin failing ADD: no luck (code 7)"), "{err}");
    assert_eq!(lab.calls()[2..], ["DEL failing pod1 eth0", "DEL fakeip pod1 eth0"]);
    assert!(std::fs::read_dir(lab.dir.path().join("cache")).expect("cache").next().is_none());
}

#[test]
fn readiness_needs_a_config_and_its_plugins() {
    let lab = Lab::new(&[r#"{"type":"nosuchplugin"}"#]);
    let err = lab.network().check_ready().expect_err("missing plugin");
    assert!(err.to_string().contains("plugin \"nosuchplugin\" not found"), "{err}");
    lab.write_list(r#"{"type":"fakeip"}"#);
    lab.network().check_ready().expect("ready");
}

#[test]
fn restore_deletes_pods_that_are_gone() {
    let lab = Lab::new(&[r#"{"type":"fakeip"}"#]);
    let net = lab.network();
    for id in ["kept", "gone"] {
        let pod = CniPod { id, ..pod() };
        net.attach(&pod, Path::new("/proc/self/ns/net"), &[], &CniDns::default()).expect("add");
    }
    net.restore(&HashSet::from(["kept".to_owned()])).expect("restore");
    assert_eq!(lab.calls().last().map(String::as_str), Some("DEL fakeip gone eth0"));
    assert!(lab.dir.path().join("cache/kept.json").exists());
    assert!(!lab.dir.path().join("cache/gone.json").exists());
}
