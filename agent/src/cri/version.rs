//! `Version`.

use cri_api::v1::{VersionRequest, VersionResponse};

/// The runtime name kubelet and crictl show.
pub const RUNTIME_NAME: &str = "crius";
/// The CRI API version crius serves.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet-facing API version string (the same value containerd and CRI-O send).
const KUBELET_API_VERSION: &str = "0.1.0";

/// Names the runtime and its versions.
pub fn version(_request: &VersionRequest) -> VersionResponse {
    VersionResponse {
        version: KUBELET_API_VERSION.to_owned(),
        runtime_name: RUNTIME_NAME.to_owned(),
        runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        runtime_api_version: RUNTIME_API_VERSION.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_crius_and_cri_v1() {
        let response = version(&VersionRequest { version: "v1".into() });
        assert_eq!(response.runtime_name, "crius");
        assert_eq!(response.runtime_api_version, "v1");
        assert_eq!(response.runtime_version, env!("CARGO_PKG_VERSION"));
    }
}
