//! `Status`: RuntimeReady and NetworkReady, each from a real check.

use std::collections::HashMap;
use std::path::Path;

use cri_api::v1::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse,
};
use nix::unistd::{AccessFlags, access};

use super::AgentState;
use super::runtime_config::POD_CIDR_SETTING;
use crate::error::{AgentError, chain};

const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";

/// Reports readiness; with `verbose`, also the effective config and store facts.
pub fn status(state: &AgentState, request: StatusRequest) -> Result<StatusResponse, AgentError> {
    let store_check = state.store.check().map_err(|e| chain(&e));
    let cgroups = state.cgroup_mode.as_ref().map(drop).map_err(Clone::clone);
    let runtime = runtime_condition(store_check, &[&state.config.root, &state.config.run_root], cgroups);
    let network = network_condition(state.network.not_ready_reason());
    if !runtime.status {
        tracing::warn!(reason = %runtime.reason, message = %runtime.message, "runtime not ready");
    }

    let mut info = HashMap::new();
    if request.verbose {
        let config =
            serde_json::to_string(&state.config).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
        info.insert("config".to_owned(), config);
        let store = serde_json::json!({
            "path": state.store.path(),
            "schemaVersion": state.store.schema_version().ok(),
        });
        info.insert("stateStore".to_owned(), store.to_string());
        let handlers: Vec<serde_json::Value> = state
            .backends
            .iter()
            .map(|(name, backend)| {
                let unavailable = backend.unavailable();
                serde_json::json!({
                    "name": name,
                    "type": backend.kind().name(),
                    "ready": unavailable.is_none(),
                    "reason": unavailable.unwrap_or_default(),
                })
            })
            .collect();
        info.insert("runtimeHandlers".to_owned(), serde_json::Value::Array(handlers).to_string());
        let pod_cidr = state.store.setting(POD_CIDR_SETTING)?;
        info.insert("runtimeConfig".to_owned(), serde_json::json!({ "podCIDR": pod_cidr }).to_string());
    }

    Ok(StatusResponse {
        status: Some(RuntimeStatus { conditions: vec![runtime, network] }),
        info,
        runtime_handlers: runtime_handlers(state),
        features: Some(RuntimeFeatures { supplemental_groups_policy: true, user_namespaces_host_network: false }),
    })
}

/// Every configured handler with what it supports.
fn runtime_handlers(state: &AgentState) -> Vec<RuntimeHandler> {
    state
        .backends
        .iter()
        .map(|(name, backend)| {
            let features = backend.features();
            RuntimeHandler {
                name: name.to_owned(),
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: features.recursive_read_only_mounts,
                    user_namespaces: features.user_namespaces,
                }),
            }
        })
        .collect()
}

/// RuntimeReady: the state store answers, the state directories are
/// writable and pods can have cgroups (without them no limit could be
/// applied).
fn runtime_condition(store: Result<(), String>, dirs: &[&Path], cgroups: Result<(), String>) -> RuntimeCondition {
    if let Err(message) = store {
        return condition(RUNTIME_READY, false, "StateStoreUnavailable", message);
    }
    if let Err(why) = cgroups {
        return condition(RUNTIME_READY, false, "NoCgroupHierarchy", format!("no usable cgroup hierarchy: {why}"));
    }
    for dir in dirs {
        if let Err(errno) = access(*dir, AccessFlags::W_OK | AccessFlags::X_OK) {
            return condition(
                RUNTIME_READY,
                false,
                "StateDirectoryUnavailable",
                format!("state directory {} is not writable: {errno}", dir.display()),
            );
        }
    }
    condition(RUNTIME_READY, true, "", String::new())
}

/// NetworkReady: whether pods get their network, and if not, why.
fn network_condition(not_ready: Option<String>) -> RuntimeCondition {
    match not_ready {
        None => condition(NETWORK_READY, true, "", String::new()),
        Some(why) => condition(NETWORK_READY, false, "NetworkPluginNotReady", format!("crius pod network: {why}")),
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: String) -> RuntimeCondition {
    RuntimeCondition { r#type: kind.to_owned(), status, reason: reason.to_owned(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(root: &Path) -> AgentState {
        crate::cri::test_state(root)
    }

    #[test]
    fn healthy_runtime_is_ready_and_network_says_why_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let response = status(&state(dir.path()), StatusRequest { verbose: false }).expect("status");
        let conditions = response.status.expect("status").conditions;
        assert_eq!(conditions[0].r#type, "RuntimeReady");
        assert!(conditions[0].status, "{:?}", conditions[0]);
        assert_eq!(conditions[1].r#type, "NetworkReady");
        assert!(!conditions[1].status);
        assert!(!conditions[1].reason.is_empty() && !conditions[1].message.is_empty());
        assert!(conditions[1].message.contains("network.mode is \"none\""), "{:?}", conditions[1]);
        assert!(response.info.is_empty(), "info only when verbose");
    }

    #[test]
    fn missing_state_directory_makes_the_runtime_not_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("gone");
        let condition = runtime_condition(Ok(()), &[dir.path(), &gone], Ok(()));
        assert!(!condition.status);
        assert_eq!(condition.reason, "StateDirectoryUnavailable");
        assert!(condition.message.contains("gone"), "{}", condition.message);
    }

    #[test]
    fn failing_store_makes_the_runtime_not_ready() {
        let condition = runtime_condition(Err("state store: corrupted".into()), &[], Ok(()));
        assert!(!condition.status);
        assert_eq!(condition.reason, "StateStoreUnavailable");
        assert_eq!(condition.message, "state store: corrupted");
    }

    #[test]
    fn without_cgroups_the_runtime_is_not_ready_and_pods_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = state(dir.path());
        state.cgroup_mode = Err("no cgroup filesystem is mounted".into());
        let response = status(&state, StatusRequest { verbose: false }).expect("status");
        let runtime = &response.status.expect("status").conditions[0];
        assert!(!runtime.status, "{runtime:?}");
        assert_eq!(runtime.reason, "NoCgroupHierarchy");
        assert!(runtime.message.contains("no cgroup filesystem is mounted"), "{runtime:?}");

        let request = cri_api::v1::RunPodSandboxRequest {
            config: Some(cri_api::v1::PodSandboxConfig {
                metadata: Some(cri_api::v1::PodSandboxMetadata {
                    name: "p".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        };
        let err = crate::cri::pods::run_pod_sandbox(&state, request).expect_err("no cgroups, no pods");
        assert!(err.to_string().contains("no usable cgroup hierarchy"), "{err}");
        assert!(state.store.list::<crate::store::PodRecord>().expect("list").is_empty(), "nothing recorded");
    }

    #[test]
    fn every_configured_handler_is_reported_and_an_unknown_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::cri::test_state(dir.path()).config.clone();
        config.runtime.handlers.insert("runc".into(), crate::config::HandlerConfig::Namespaces {});
        let mut state = state(dir.path().join("second").as_path());
        state.backends = crate::backends::Backends::from_config(&config, &state.cgroup_mode);
        let response = status(&state, StatusRequest { verbose: true }).expect("status");
        let names: Vec<&str> = response.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["", "runc"]);
        assert!(response.runtime_handlers.iter().all(|h| h.features.is_some_and(|f| f.recursive_read_only_mounts)));
        let handlers: serde_json::Value = serde_json::from_str(&response.info["runtimeHandlers"]).expect("json");
        assert_eq!(handlers[1]["type"], "namespaces");
        let request = cri_api::v1::RunPodSandboxRequest {
            config: Some(cri_api::v1::PodSandboxConfig {
                metadata: Some(cri_api::v1::PodSandboxMetadata {
                    name: "p".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                    attempt: 0,
                }),
                ..Default::default()
            }),
            runtime_handler: "gvisor".into(),
        };
        let err = crate::cri::pods::run_pod_sandbox(&state, request).expect_err("unknown handler");
        assert!(matches!(err, AgentError::InvalidArgument { field: "runtime_handler", .. }), "{err}");
        assert!(err.to_string().contains("\"gvisor\"") && err.to_string().contains("\"runc\""), "{err}");
    }

    #[test]
    fn verbose_info_is_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let response = status(&state(dir.path()), StatusRequest { verbose: true }).expect("status");
        for key in ["config", "stateStore", "runtimeConfig", "runtimeHandlers"] {
            let value = response.info.get(key).unwrap_or_else(|| panic!("{key} missing"));
            serde_json::from_str::<serde_json::Value>(value).unwrap_or_else(|e| panic!("{key}: {e}: {value}"));
        }
        assert!(response.info["config"].contains("\"socket\""));
    }
}
