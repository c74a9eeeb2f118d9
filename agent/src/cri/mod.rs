//! The CRI services: `RuntimeService` and `ImageService`.
//!
//! Each RPC (or small group of RPCs) has its own file holding a plain function
//! from request to `Result<response, AgentError>`; this module only routes the
//! tonic calls there. RPCs without a handler fall through to the generated
//! default, which the boundary layer turns into an `Unimplemented` status that
//! names the RPC.

pub mod cancel;
pub mod container_spec;
pub mod containers;
pub mod exec_sync;
pub mod ids;
pub mod images;
pub mod locks;
pub mod lookup;
pub mod pods;
pub mod resources;
mod runtime_config;
pub mod stats;
mod status;
pub mod streaming;
mod version;

use std::sync::Arc;

use cri_api::v1::image_service_server::ImageService;
use cri_api::v1::runtime_service_server::RuntimeService;
use cri_api::v1::{
    AttachRequest, AttachResponse, ContainerStatsRequest, ContainerStatsResponse, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, CreateContainerResponse, ExecRequest, ExecResponse,
    ExecSyncRequest, ExecSyncResponse, ImageFsInfoRequest, ImageFsInfoResponse, ImageStatusRequest,
    ImageStatusResponse, ListContainerStatsRequest, ListContainerStatsResponse, ListContainersRequest,
    ListContainersResponse, ListImagesRequest, ListImagesResponse, ListPodSandboxRequest, ListPodSandboxResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, PodSandboxStatsRequest, PodSandboxStatsResponse,
    PodSandboxStatusRequest, PodSandboxStatusResponse, PortForwardRequest, PortForwardResponse, PullImageRequest,
    PullImageResponse, RemoveContainerRequest, RemoveContainerResponse, RemoveImageRequest, RemoveImageResponse,
    RemovePodSandboxRequest, RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse,
    RuntimeConfigRequest, RuntimeConfigResponse, StartContainerRequest, StartContainerResponse, StatusRequest,
    StatusResponse, StopContainerRequest, StopContainerResponse, StopPodSandboxRequest, StopPodSandboxResponse,
    UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse, VersionRequest, VersionResponse,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crius_images::store::ImageStore;

use crate::config::Config;
use crate::error::AgentError;
use crate::store::StateStore;

/// What every handler can reach: the effective config, the state store and
/// the image store.
#[derive(Debug)]
pub struct AgentState {
    /// The effective configuration.
    pub config: Config,
    /// The durable state store.
    pub store: StateStore,
    /// Images: content, layers, snapshots, registries.
    pub images: ImageStore,
    /// Pulls hold it shared from download until their record is written;
    /// garbage collection holds it exclusively, so it never deletes what a
    /// pull has fetched but not yet recorded.
    pub image_gc: tokio::sync::RwLock<()>,
    /// The runtime handlers and their backends.
    pub backends: crate::backends::Backends,
    /// Per pod and per container locks (see [`locks`]).
    pub locks: locks::KeyedLocks,
    /// The host's cgroup layout, or why none could be detected.
    pub cgroup_mode: Result<crius_sandbox::cgroups::CgroupMode, String>,
    /// Previous cpu samples, for cpu usage rates.
    pub cpu_samples: stats::CpuSamples,
    /// Recently measured writable-layer usage.
    pub writable_usage: stats::WritableUsage,
    /// The pod network.
    pub network: crate::network::PodNetwork,
    /// The streaming server, once started.
    pub streaming: std::sync::OnceLock<Arc<crate::streaming::StreamServer>>,
}

impl AgentState {
    /// Bundles the config and the opened stores.
    pub fn new(config: Config, store: StateStore, images: ImageStore) -> Self {
        let cgroup_mode = crius_sandbox::cgroups::detect_host().map_err(|e| crate::error::chain(&e));
        if let Err(why) = &cgroup_mode {
            tracing::error!(error = %why, "no usable cgroup hierarchy: pods cannot run (Status reports RuntimeReady false)");
        }
        let pod_cidrs = store.setting(runtime_config::POD_CIDR_SETTING).ok().flatten();
        let network = crate::network::PodNetwork::open(&config, pod_cidrs.as_deref());
        let backends = crate::backends::Backends::from_config(&config, &cgroup_mode);
        Self {
            backends,
            network,
            streaming: std::sync::OnceLock::new(),
            config,
            store,
            images,
            image_gc: tokio::sync::RwLock::new(()),
            locks: locks::KeyedLocks::default(),
            cgroup_mode,
            cpu_samples: stats::CpuSamples::default(),
            writable_usage: stats::WritableUsage::default(),
        }
    }
}

impl AgentState {
    /// The host's cgroup layout, or why pods cannot have cgroups here.
    pub fn cgroups(&self) -> Result<&crius_sandbox::cgroups::CgroupMode, AgentError> {
        self.cgroup_mode.as_ref().map_err(|why| AgentError::Runtime(format!("no usable cgroup hierarchy: {why}")))
    }
}

/// A state on throwaway directories under `dir`, for unit tests.
#[cfg(test)]
pub(crate) fn test_state(dir: &std::path::Path) -> AgentState {
    let mut config = Config {
        root: dir.join("root"),
        run_root: dir.join("run"),
        socket: dir.join("run/crius.sock"),
        ..Config::default()
    };
    // Unit tests never touch the host's network.
    config.network.mode = crate::config::NetworkMode::None;
    for path in [&config.root, &config.run_root] {
        std::fs::create_dir_all(path).expect("state dirs");
    }
    let store = StateStore::open(&config.root).expect("state store");
    let images = ImageStore::open(crate::server::image_store_config(&config)).expect("image store");
    AgentState::new(config, store, images)
}

/// The tonic service object: a cheap handle on the shared state.
#[derive(Debug, Clone)]
pub struct CriService {
    state: Arc<AgentState>,
}

impl CriService {
    /// Wraps the shared state.
    pub fn new(state: Arc<AgentState>) -> Self {
        Self { state }
    }

    /// Runs a blocking handler (one that touches the store or the filesystem)
    /// off the async workers. The spawned task runs to completion even when
    /// the client gives up, so a mutation is never cut in half.
    async fn blocking<Req, Resp>(
        &self,
        request: Request<Req>,
        handler: fn(&AgentState, Req) -> Result<Resp, AgentError>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: ids::RequestIds + Send + 'static,
        Resp: Send + 'static,
    {
        let request = request.into_inner();
        ids::record(&request);
        let state = Arc::clone(&self.state);
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || span.in_scope(|| handler(&state, request))).await;
        match joined {
            Ok(result) => result.map(Response::new).map_err(Status::from),
            Err(e) => Err(Status::internal(format!("handler task failed: {e}"))),
        }
    }

    /// [`Self::blocking`] for a handler that may abandon what it waits for
    /// once the client gave up: the client reset the stream (this future is
    /// dropped) or the deadline it sent passed.
    async fn cancellable<Req, Resp>(
        &self,
        request: Request<Req>,
        handler: fn(&AgentState, Req, &cancel::Cancel) -> Result<Resp, AgentError>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: ids::RequestIds + Send + 'static,
        Resp: Send + 'static,
    {
        let deadline = cancel::grpc_timeout(request.metadata());
        let request = request.into_inner();
        ids::record(&request);
        let state = Arc::clone(&self.state);
        let span = tracing::Span::current();
        let token = cancel::Cancel::default();
        let guard = token.on_drop();
        let handler_token = token.clone();
        let mut task = tokio::task::spawn_blocking(move || span.in_scope(|| handler(&state, request, &handler_token)));
        let joined = match deadline {
            Some(deadline) => match tokio::time::timeout(deadline, &mut task).await {
                Ok(joined) => joined,
                Err(_) => {
                    token.cancel();
                    task.await
                }
            },
            None => task.await,
        };
        guard.disarm();
        match joined {
            Ok(result) => result.map(Response::new).map_err(Status::from),
            Err(e) => Err(Status::internal(format!("handler task failed: {e}"))),
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(version::version(&request.into_inner())))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.blocking(request, status::status).await
    }

    async fn runtime_config(
        &self,
        request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_config::runtime_config(&self.state, &request.into_inner())))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        self.blocking(request, pods::run_pod_sandbox).await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        self.blocking(request, pods::stop_pod_sandbox).await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        self.blocking(request, pods::remove_pod_sandbox).await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        self.blocking(request, pods::pod_sandbox_status).await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        self.blocking(request, pods::list_pod_sandbox).await
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.blocking(request, containers::create_container).await
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.blocking(request, containers::start_container).await
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        self.cancellable(request, containers::stop_container).await
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.blocking(request, containers::remove_container).await
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        self.blocking(request, containers::container_status).await
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.blocking(request, containers::list_containers).await
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        self.blocking(request, streaming::exec).await
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Result<Response<AttachResponse>, Status> {
        self.blocking(request, streaming::attach).await
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        self.blocking(request, streaming::port_forward).await
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        let request = request.into_inner();
        ids::record(&request);
        exec_sync::exec_sync(Arc::clone(&self.state), request).await.map(Response::new).map_err(Status::from)
    }

    async fn update_container_resources(
        &self,
        request: Request<cri_api::v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri_api::v1::UpdateContainerResourcesResponse>, Status> {
        self.blocking(request, resources::update_container_resources).await
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri_api::v1::ReopenContainerLogRequest>,
    ) -> Result<Response<cri_api::v1::ReopenContainerLogResponse>, Status> {
        self.blocking(request, containers::reopen_container_log).await
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        self.blocking(request, stats::container_stats).await
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        self.blocking(request, stats::list_container_stats).await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        self.blocking(request, stats::pod_sandbox_stats).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        self.blocking(request, stats::list_pod_sandbox_stats).await
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        self.blocking(request, runtime_config::update_runtime_config).await
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        self.blocking(request, images::list_images).await
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        self.blocking(request, images::image_status).await
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        let request = request.into_inner();
        ids::record(&request);
        let state = Arc::clone(&self.state);
        let span = tracing::Span::current();
        // The pull runs to completion even if kubelet gives up waiting: its
        // retry then finds the blobs in place.
        let pull = tokio::spawn(async move { images::pull_image(state, request).await }.instrument(span));
        match pull.await {
            Ok(result) => result.map(Response::new).map_err(Status::from),
            Err(e) => Err(Status::internal(format!("pull task failed: {e}"))),
        }
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        self.blocking(request, images::remove_image).await
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        self.blocking(request, |state, _| images::image_fs_info(state)).await
    }
}
