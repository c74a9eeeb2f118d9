//! `RuntimeConfig` and `UpdateRuntimeConfig`.

use std::net::IpAddr;

use cri_api::v1::{
    CgroupDriver as CriCgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
    UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
};

use super::AgentState;
use crate::config::CgroupDriver;
use crate::error::AgentError;
use crate::store::WriteBatch;

/// State-store setting that holds the pod CIDR(s) kubelet last sent.
pub const POD_CIDR_SETTING: &str = "pod_cidr";

/// Tells kubelet which cgroup driver to match.
pub fn runtime_config(state: &AgentState, _request: &RuntimeConfigRequest) -> RuntimeConfigResponse {
    let driver = match state.config.runtime.cgroup_driver {
        CgroupDriver::Cgroupfs => CriCgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => CriCgroupDriver::Systemd,
    };
    RuntimeConfigResponse { linux: Some(LinuxRuntimeConfiguration { cgroup_driver: driver as i32 }) }
}

/// Records the node's pod CIDR(s), which the pod network will allocate from.
/// An empty request changes nothing.
pub fn update_runtime_config(
    state: &AgentState,
    request: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse, AgentError> {
    let pod_cidr = request.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
    if pod_cidr.trim().is_empty() {
        return Ok(UpdateRuntimeConfigResponse {});
    }
    let cidrs = parse_pod_cidrs(&pod_cidr)?;
    let normalized = cidrs.join(",");
    if state.store.setting(POD_CIDR_SETTING)?.as_deref() != Some(normalized.as_str()) {
        let mut batch = WriteBatch::default();
        batch.setting(POD_CIDR_SETTING, Some(&normalized));
        state.store.write(batch)?;
        tracing::info!(pod_cidr = %normalized, "pod CIDR updated");
        state.network.use_pod_cidrs(&state.config, &cidrs);
    }
    Ok(UpdateRuntimeConfigResponse {})
}

/// kubelet sends one CIDR, or two comma-separated ones for dual-stack.
fn parse_pod_cidrs(text: &str) -> Result<Vec<String>, AgentError> {
    let invalid =
        |reason: String| AgentError::InvalidArgument { field: "runtime_config.network_config.pod_cidr", reason };
    let mut cidrs = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (addr, prefix) =
            part.split_once('/').ok_or_else(|| invalid(format!("{part:?} is not a CIDR (expected ADDRESS/PREFIX)")))?;
        let addr: IpAddr = addr.parse().map_err(|_| invalid(format!("{part:?} has an invalid address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| invalid(format!("{part:?} has an invalid prefix length (0 to {max})")))?;
        cidrs.push(format!("{addr}/{prefix}"));
    }
    if cidrs.len() > 2 {
        return Err(invalid(format!("{} CIDRs given; at most one per address family", cidrs.len())));
    }
    Ok(cidrs)
}

#[cfg(test)]
mod tests {
    use cri_api::v1::{NetworkConfig, RuntimeConfig};

    use super::*;

    fn update(pod_cidr: &str) -> UpdateRuntimeConfigRequest {
        UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: pod_cidr.into() }) }),
        }
    }

    #[test]
    fn cidrs_are_validated() {
        assert_eq!(parse_pod_cidrs("10.244.1.0/24").expect("v4"), ["10.244.1.0/24"]);
        assert_eq!(parse_pod_cidrs("10.244.1.0/24, fd00::/64").expect("dual"), ["10.244.1.0/24", "fd00::/64"]);
        for bad in ["10.244.1.0", "10.244.1.0/33", "nope/8", "fd00::/129", "a/1,b/2,c/3"] {
            let err = parse_pod_cidrs(bad).expect_err(bad);
            assert!(err.to_string().contains("runtime_config.network_config.pod_cidr"), "{err}");
        }
    }

    #[test]
    fn pod_cidr_is_persisted_and_bad_input_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = crate::cri::test_state(dir.path());
        update_runtime_config(&state, update("10.244.1.0/24")).expect("update");
        assert_eq!(state.store.setting(POD_CIDR_SETTING).expect("read").as_deref(), Some("10.244.1.0/24"));
        update_runtime_config(&state, update("garbage")).expect_err("invalid");
        update_runtime_config(&state, update("")).expect("empty is a no-op");
        update_runtime_config(&state, UpdateRuntimeConfigRequest::default()).expect("missing is a no-op");
        assert_eq!(state.store.setting(POD_CIDR_SETTING).expect("read").as_deref(), Some("10.244.1.0/24"));
    }

    #[test]
    fn reports_the_configured_cgroup_driver() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = crate::cri::test_state(dir.path());
        let response = runtime_config(&state, &RuntimeConfigRequest {});
        assert_eq!(response.linux.expect("linux").cgroup_driver, CriCgroupDriver::Cgroupfs as i32);
    }
}
