//! The CRI services: `RuntimeService` and `ImageService`.
//!
//! Each RPC (or small group of RPCs) has its own file holding a plain function
//! from request to `Result<response, AgentError>`; this module only routes the
//! tonic calls there. RPCs without a handler fall through to the generated
//! default, which the boundary layer turns into an `Unimplemented` status that
//! names the RPC.

pub mod ids;
mod runtime_config;
mod status;
mod version;

use std::sync::Arc;

use cri_api::v1::image_service_server::ImageService;
use cri_api::v1::runtime_service_server::RuntimeService;
use cri_api::v1::{
    RuntimeConfigRequest, RuntimeConfigResponse, StatusRequest, StatusResponse, UpdateRuntimeConfigRequest,
    UpdateRuntimeConfigResponse, VersionRequest, VersionResponse,
};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::AgentError;
use crate::store::StateStore;

/// What every handler can reach: the effective config and the state store.
#[derive(Debug)]
pub struct AgentState {
    /// The effective configuration.
    pub config: Config,
    /// The durable state store.
    pub store: StateStore,
}

impl AgentState {
    /// Bundles the config and the opened store.
    pub fn new(config: Config, store: StateStore) -> Self {
        Self { config, store }
    }
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

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        self.blocking(request, runtime_config::update_runtime_config).await
    }
}

/// Every image RPC is still the generated default (Unimplemented, named by
/// the boundary layer) until the image service lands.
#[tonic::async_trait]
impl ImageService for CriService {}
