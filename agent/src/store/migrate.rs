//! Upgrades of stored records from older schemas, as pure JSON rewrites.
//!
//! Schema 2 (the runtime seam): a pod's and a container's details keep the
//! backend's handle (`handle`, tagged with its backend and versioned)
//! instead of the namespace runtime's paths at the top level, and a
//! container's details name its runtime handler and whether it has a
//! terminal and stdin.

use serde_json::{Map, Value, json};

use super::RecordKind;

/// Rewrites a schema-1 record of `kind` to schema 2. A record that is not
/// the shape schema 1 wrote is left as it is (its reader reports it).
pub(super) fn v1_to_v2(kind: RecordKind, id: &str, record: &mut Value) {
    let Some(details) = record.get_mut("config").and_then(Value::as_object_mut) else { return };
    match kind {
        RecordKind::Pod => pod_v1_to_v2(id, details),
        RecordKind::Container => container_v1_to_v2(id, details),
        RecordKind::Image => {}
    }
}

fn pod_v1_to_v2(id: &str, details: &mut Map<String, Value>) {
    let paths = details.remove("paths").unwrap_or(Value::Null);
    let handle = if paths.is_null() {
        Value::Null
    } else {
        json!({ "backend": "namespaces", "version": 1, "id": id, "paths": paths })
    };
    details.insert("handle".into(), handle);
}

fn container_v1_to_v2(id: &str, details: &mut Map<String, Value>) {
    let take = |details: &mut Map<String, Value>, key: &str| details.remove(key).unwrap_or(Value::Null);
    let bundle = take(details, "bundle");
    let rootfs = take(details, "rootfs");
    let cgroup = take(details, "cgroup");
    let monitor_pid = take(details, "monitor_pid");
    // The bundle's config.json says whether the container has a terminal
    // and stdin (attach checks them).
    let spec = bundle
        .as_str()
        .and_then(|b| std::fs::read(std::path::Path::new(b).join("config.json")).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let flag = |key: &str| spec.as_ref().and_then(|s| s["process"][key].as_bool()).unwrap_or(false);
    details.insert("tty".into(), Value::Bool(flag("terminal")));
    details.insert("stdin".into(), Value::Bool(flag("stdin")));
    details.insert("handler".into(), Value::String(String::new()));
    let handle = if bundle.is_null() {
        Value::Null
    } else {
        json!({
            "backend": "namespaces",
            "version": 1,
            "id": id,
            "bundle": bundle,
            "rootfs": rootfs,
            "cgroup": cgroup,
            "monitor_pid": if monitor_pid.is_null() { json!(0) } else { monitor_pid },
        })
    };
    details.insert("handle".into(), handle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_1_pods_and_containers_get_namespace_handles() {
        let mut pod = json!({"id": "p1", "config": {
            "hostname": "h", "log_directory": "", "namespace_modes": [0, 0, 0], "cgroup": "crius/pod-p1",
            "paths": {"dir": "/run/crius/pods/p1"}, "network": null
        }});
        v1_to_v2(RecordKind::Pod, "p1", &mut pod);
        assert_eq!(
            pod["config"]["handle"],
            json!({"backend": "namespaces", "version": 1, "id": "p1", "paths": {"dir": "/run/crius/pods/p1"}})
        );
        assert!(pod["config"].get("paths").is_none());
        assert_eq!(pod["config"]["cgroup"], "crius/pod-p1", "the rest is kept");

        let mut container = json!({"id": "c1", "config": {
            "bundle": "/nonexistent/containers/c1", "rootfs": "/run/crius/rootfs/c1", "log_path": "/l",
            "cgroup": "crius/pod-p1/c1", "mounts": [], "monitor_pid": 42, "reason": "", "message": ""
        }});
        v1_to_v2(RecordKind::Container, "c1", &mut container);
        let details = &container["config"];
        assert_eq!(details["handle"]["backend"], "namespaces");
        assert_eq!(details["handle"]["bundle"], "/nonexistent/containers/c1");
        assert_eq!(details["handle"]["monitor_pid"], 42);
        assert_eq!((details["handler"].as_str(), details["tty"].as_bool()), (Some(""), Some(false)));
        assert!(details.get("bundle").is_none() && details.get("cgroup").is_none());

        let mut garbled = json!({"id": "x", "config": 42});
        v1_to_v2(RecordKind::Pod, "x", &mut garbled);
        assert_eq!(garbled["config"], 42, "left for its reader to report");
    }
}
