//! CNI mode: standard CNI plugins (CNI spec 0.3.0 to 1.1.0) run from the
//! configured bin dirs with the first valid config of the conf dir. ADD runs
//! the plugin chain in order with each result passed on as `prevResult`; the
//! final result and the exact config used are cached per pod, so that DEL
//! (chain in reverse) works after a restart or a config change; CHECK runs
//! where the spec version has it. Runtime config carries `portMappings` and
//! `dns` to plugins that declare those capabilities.

pub mod config;
pub mod exec;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::NetError;
use crate::firewall::PortMapping;
use config::NetworkList;
use exec::{CniCommand, Invocation};

/// The interface name pods get.
const IFNAME: &str = "eth0";

/// Where CNI mode looks for things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// Directory of network configs.
    pub conf_dir: PathBuf,
    /// Directories of plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// Where results are cached between ADD and DEL.
    pub cache_dir: PathBuf,
}

/// Who the pod is, for `CNI_ARGS`.
#[derive(Debug, Clone, Default)]
pub struct CniPod<'a> {
    /// Pod id (`CNI_CONTAINERID`).
    pub id: &'a str,
    /// Pod name.
    pub name: &'a str,
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod uid.
    pub uid: &'a str,
}

/// DNS settings passed to plugins with the `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// What ADD leaves for DEL.
#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    config_path: PathBuf,
    /// The network list exactly as used.
    network: Value,
    netns: String,
    args: String,
    runtime_config: Value,
    result: Value,
}

/// The CNI network.
#[derive(Debug)]
pub struct CniNetwork {
    config: CniConfig,
}

impl CniNetwork {
    /// CNI mode with these directories; nothing is read yet.
    pub fn new(config: CniConfig) -> Result<Self, NetError> {
        std::fs::create_dir_all(&config.cache_dir).map_err(|source| NetError::Io {
            op: "create directory",
            path: config.cache_dir.clone(),
            source,
        })?;
        Ok(Self { config })
    }

    /// Whether a usable config is there: it parses and all its plugins exist.
    pub fn check_ready(&self) -> Result<NetworkList, NetError> {
        let list = config::load(&self.config.conf_dir)?;
        for kind in list.plugin_types() {
            if exec::find_plugin(&self.config.bin_dirs, kind).is_none() {
                let dirs: Vec<String> = self.config.bin_dirs.iter().map(|d| d.display().to_string()).collect();
                return Err(NetError::Config(format!(
                    "{}: plugin {kind:?} not found in {}",
                    list.path.display(),
                    dirs.join(", ")
                )));
            }
        }
        Ok(list)
    }

    /// ADD: connects the pod; returns its addresses, IPv4 first.
    pub fn attach(
        &self,
        pod: &CniPod<'_>,
        netns: &Path,
        ports: &[PortMapping],
        dns: &CniDns,
    ) -> Result<Vec<IpAddr>, NetError> {
        // A retry after a crash: undo the earlier ADD first.
        self.detach(pod.id)?;
        let list = self.check_ready()?;
        let args = exec::kubernetes_args(pod.id, pod.name, pod.namespace, pod.uid);
        let netns = netns.to_string_lossy().into_owned();
        let runtime_config = runtime_config(ports, dns);
        let network = list_value(&list);
        let inv = Invocation {
            bin_dirs: &self.config.bin_dirs,
            container_id: pod.id,
            netns: &netns,
            ifname: IFNAME,
            args: &args,
        };
        let mut entry = CacheEntry {
            config_path: list.path.clone(),
            network,
            netns: netns.clone(),
            args: args.clone(),
            runtime_config,
            result: Value::Null,
        };
        // Cached before the first plugin runs: a crash halfway still leaves DEL enough to undo it.
        self.write_cache(pod.id, &entry)?;
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = plugin_config(&list, plugin, prev.as_ref(), &entry.runtime_config);
            match exec::run(&inv, plugin_type(plugin), CniCommand::Add, &conf) {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    entry.result = prev.unwrap_or(Value::Null);
                    let _ = self.write_cache(pod.id, &entry);
                    if let Err(cleanup) = self.detach(pod.id) {
                        tracing::warn!(pod_id = pod.id, error = %cleanup, "CNI DEL after a failed ADD failed");
                    }
                    return Err(e);
                }
            }
        }
        entry.result = prev.unwrap_or(Value::Null);
        self.write_cache(pod.id, &entry)?;
        Ok(result_ips(&entry.result))
    }

    /// CHECK: asks every plugin whether the pod's network is as ADD left it.
    pub fn check(&self, pod_id: &str) -> Result<(), NetError> {
        let Some(entry) = self.read_cache(pod_id)? else {
            return Err(NetError::Config(format!("no CNI result cached for pod {pod_id}")));
        };
        let list = cached_list(&entry)?;
        if !list.has_check() {
            return Ok(());
        }
        let inv = Invocation {
            bin_dirs: &self.config.bin_dirs,
            container_id: pod_id,
            netns: &entry.netns,
            ifname: IFNAME,
            args: &entry.args,
        };
        for plugin in &list.plugins {
            let conf = plugin_config(&list, plugin, Some(&entry.result), &entry.runtime_config);
            exec::run(&inv, plugin_type(plugin), CniCommand::Check, &conf)?;
        }
        Ok(())
    }

    /// DEL: disconnects the pod with the config ADD used; idempotent (no
    /// cached ADD: nothing to do).
    pub fn detach(&self, pod_id: &str) -> Result<(), NetError> {
        let Some(entry) = self.read_cache(pod_id)? else { return Ok(()) };
        let list = cached_list(&entry)?;
        // The namespace may be gone already (a pod removed after a reboot).
        let netns = if Path::new(&entry.netns).exists() { entry.netns.clone() } else { String::new() };
        let inv = Invocation {
            bin_dirs: &self.config.bin_dirs,
            container_id: pod_id,
            netns: &netns,
            ifname: IFNAME,
            args: &entry.args,
        };
        let prev = (list.has_check() && !entry.result.is_null()).then_some(&entry.result);
        for plugin in list.plugins.iter().rev() {
            let conf = plugin_config(&list, plugin, prev, &entry.runtime_config);
            exec::run(&inv, plugin_type(plugin), CniCommand::Del, &conf)?;
        }
        let path = self.cache_path(pod_id);
        std::fs::remove_file(&path).map_err(|source| NetError::Io { op: "remove", path, source })
    }

    /// After a start: runs DEL for cached pods that no longer exist.
    pub fn restore(&self, live: &HashSet<String>) -> Result<(), NetError> {
        let entries = std::fs::read_dir(&self.config.cache_dir).map_err(|source| NetError::Io {
            op: "read directory",
            path: self.config.cache_dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pod_id) = name.strip_suffix(".json") else { continue };
            if !live.contains(pod_id) {
                tracing::info!(pod_id, "CNI DEL for a pod that no longer exists");
                self.detach(pod_id)?;
            }
        }
        Ok(())
    }

    fn cache_path(&self, pod_id: &str) -> PathBuf {
        self.config.cache_dir.join(format!("{pod_id}.json"))
    }

    fn read_cache(&self, pod_id: &str) -> Result<Option<CacheEntry>, NetError> {
        let path = self.cache_path(pod_id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| NetError::Config(format!("CNI cache {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NetError::Io { op: "read", path, source }),
        }
    }

    fn write_cache(&self, pod_id: &str, entry: &CacheEntry) -> Result<(), NetError> {
        let path = self.cache_path(pod_id);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(entry).map_err(|e| NetError::Config(format!("encode CNI cache: {e}")))?;
        std::fs::write(&tmp, bytes).map_err(|source| NetError::Io { op: "write", path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| NetError::Io { op: "rename", path, source })
    }
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn list_value(list: &NetworkList) -> Value {
    json!({ "cniVersion": list.version, "name": list.name, "plugins": list.plugins })
}

fn cached_list(entry: &CacheEntry) -> Result<NetworkList, NetError> {
    let bytes = serde_json::to_vec(&entry.network).map_err(|e| NetError::Config(e.to_string()))?;
    NetworkList::parse(&entry.config_path, &bytes, false)
}

/// The runtime config for the capabilities crius fills in.
fn runtime_config(ports: &[PortMapping], dns: &CniDns) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let protocol = format!("{:?}", p.protocol).to_lowercase();
            let mut m = json!({ "hostPort": p.host_port, "containerPort": p.container_port, "protocol": protocol });
            if let Some(ip) = p.host_ip {
                m["hostIP"] = json!(ip.to_string());
            }
            m
        })
        .collect();
    json!({ "portMappings": ports, "dns": dns })
}

/// One plugin's stdin: its own object plus name, version, prevResult and the
/// runtime config entries for the capabilities it declares.
fn plugin_config(list: &NetworkList, plugin: &Value, prev: Option<&Value>, runtime: &Value) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = json!(list.name);
    conf["cniVersion"] = json!(list.version);
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    let capabilities = plugin.get("capabilities").and_then(Value::as_object);
    let mut rc = serde_json::Map::new();
    for (key, enabled) in capabilities.into_iter().flatten() {
        if enabled.as_bool() == Some(true)
            && let Some(value) = runtime.get(key)
        {
            rc.insert(key.clone(), value.clone());
        }
    }
    if !rc.is_empty() {
        conf["runtimeConfig"] = Value::Object(rc);
    }
    conf
}

/// The pod's addresses from a result (spec 0.3.0 on): those on the sandbox
/// interface when interfaces are listed, IPv4 first.
fn result_ips(result: &Value) -> Vec<IpAddr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |index: Option<u64>| match (interfaces, index) {
        (Some(list), Some(i)) => usize::try_from(i)
            .ok()
            .and_then(|i| list.get(i))
            .is_some_and(|iface| iface.get("sandbox").and_then(Value::as_str).is_some_and(|s| !s.is_empty())),
        _ => true,
    };
    let mut ips: Vec<IpAddr> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| in_sandbox(ip.get("interface").and_then(Value::as_u64)))
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

#[cfg(test)]
mod tests;
