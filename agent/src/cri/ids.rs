//! The ids a request is about, put on the RPC's tracing span so that every
//! log line of one RPC can be found by pod, container or image.

use cri_api::v1::{
    AttachRequest, ContainerStatsRequest, ContainerStatusRequest, CreateContainerRequest, ExecRequest, ExecSyncRequest,
    ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListContainerStatsRequest, ListContainersRequest,
    ListImagesRequest, ListPodSandboxRequest, ListPodSandboxStatsRequest, PodSandboxStatsRequest,
    PodSandboxStatusRequest, PortForwardRequest, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, ReopenContainerLogRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest, UpdatePodSandboxResourcesRequest,
    UpdateRuntimeConfigRequest, VersionRequest,
};

/// Ids named by a request; empty strings mean "not named".
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ids<'a> {
    /// Sandbox id.
    pub pod_id: &'a str,
    /// Container id.
    pub container_id: &'a str,
    /// Image reference or id.
    pub image: &'a str,
    /// "namespace/name" of a pod that has no id yet (RunPodSandbox).
    pub pod: Option<String>,
}

/// A CRI request that may name a pod, container or image.
pub trait RequestIds {
    /// The ids this request names.
    fn ids(&self) -> Ids<'_> {
        Ids::default()
    }
}

/// Adds the request's ids to the current span (the RPC span).
pub fn record(request: &impl RequestIds) {
    let ids = request.ids();
    let span = tracing::Span::current();
    if !ids.pod_id.is_empty() {
        span.record("pod_id", ids.pod_id);
    }
    if !ids.container_id.is_empty() {
        span.record("container_id", ids.container_id);
    }
    if !ids.image.is_empty() {
        span.record("image", ids.image);
    }
    if let Some(pod) = ids.pod {
        span.record("pod", pod.as_str());
    }
}

fn image(spec: Option<&ImageSpec>) -> &str {
    spec.map_or("", |s| s.image.as_str())
}

macro_rules! by_pod_id {
    ($($t:ty),*) => {$(impl RequestIds for $t {
        fn ids(&self) -> Ids<'_> { Ids { pod_id: &self.pod_sandbox_id, ..Ids::default() } }
    })*};
}
macro_rules! by_container_id {
    ($($t:ty),*) => {$(impl RequestIds for $t {
        fn ids(&self) -> Ids<'_> { Ids { container_id: &self.container_id, ..Ids::default() } }
    })*};
}
macro_rules! by_image {
    ($($t:ty),*) => {$(impl RequestIds for $t {
        fn ids(&self) -> Ids<'_> { Ids { image: image(self.image.as_ref()), ..Ids::default() } }
    })*};
}
macro_rules! no_ids {
    ($($t:ty),*) => {$(impl RequestIds for $t {})*};
}

by_pod_id!(
    StopPodSandboxRequest,
    RemovePodSandboxRequest,
    PodSandboxStatusRequest,
    PodSandboxStatsRequest,
    PortForwardRequest,
    UpdatePodSandboxResourcesRequest
);
by_container_id!(
    StartContainerRequest,
    StopContainerRequest,
    RemoveContainerRequest,
    ContainerStatusRequest,
    UpdateContainerResourcesRequest,
    ReopenContainerLogRequest,
    ExecSyncRequest,
    ExecRequest,
    AttachRequest,
    ContainerStatsRequest
);
by_image!(PullImageRequest, ImageStatusRequest, RemoveImageRequest);
no_ids!(
    VersionRequest,
    ListContainersRequest,
    ListContainerStatsRequest,
    ListPodSandboxStatsRequest,
    StatusRequest,
    UpdateRuntimeConfigRequest,
    ListImagesRequest,
    ImageFsInfoRequest,
    ListPodSandboxRequest
);

impl RequestIds for RunPodSandboxRequest {
    fn ids(&self) -> Ids<'_> {
        let pod = self.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| format!("{}/{}", m.namespace, m.name));
        Ids { pod, ..Ids::default() }
    }
}

impl RequestIds for CreateContainerRequest {
    fn ids(&self) -> Ids<'_> {
        let image = image(self.config.as_ref().and_then(|c| c.image.as_ref()));
        Ids { pod_id: &self.pod_sandbox_id, image, ..Ids::default() }
    }
}

#[cfg(test)]
mod tests {
    use cri_api::v1::{ContainerConfig, PodSandboxConfig, PodSandboxMetadata};

    use super::*;

    #[test]
    fn ids_are_read_from_the_request() {
        let stop = StopContainerRequest { container_id: "c1".into(), timeout: 0 };
        assert_eq!(stop.ids().container_id, "c1");

        let pull = PullImageRequest {
            image: Some(ImageSpec { image: "busybox".into(), ..ImageSpec::default() }),
            ..PullImageRequest::default()
        };
        assert_eq!(pull.ids().image, "busybox");

        let create = CreateContainerRequest {
            pod_sandbox_id: "p1".into(),
            config: Some(ContainerConfig {
                image: Some(ImageSpec { image: "nginx".into(), ..ImageSpec::default() }),
                ..ContainerConfig::default()
            }),
            sandbox_config: None,
        };
        assert_eq!((create.ids().pod_id, create.ids().image), ("p1", "nginx"));

        let run = RunPodSandboxRequest {
            config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web".into(),
                    namespace: "prod".into(),
                    ..Default::default()
                }),
                ..PodSandboxConfig::default()
            }),
            runtime_handler: String::new(),
        };
        assert_eq!(run.ids().pod.as_deref(), Some("prod/web"));
        assert_eq!(VersionRequest::default().ids(), Ids::default());
    }
}
