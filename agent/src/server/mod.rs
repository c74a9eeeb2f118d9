//! Serving CRI: take the socket, open the state, run tonic until SIGTERM or
//! SIGINT, then stop accepting and let in-flight RPCs finish.
//!
//! Stopping crius never stops pods or containers: they do not belong to this
//! process.

pub mod instrument;
pub mod socket;

use std::sync::Arc;
use std::time::Duration;

use cri_api::v1::image_service_server::ImageServiceServer;
use cri_api::v1::runtime_service_server::RuntimeServiceServer;
use crius_images::space::SpaceReserve;
use crius_images::store::{ImageError, ImageStore, ImageStoreConfig};
use crius_images::unpack::UnpackLimits;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::cri::{AgentState, CriService};
use crate::store::{StateStore, StoreError};

/// Why crius could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket is taken or unusable.
    #[error("take CRI socket")]
    Socket(#[from] socket::SocketError),
    /// The state store could not be opened.
    #[error("open state store")]
    Store(#[from] StoreError),
    /// A state directory could not be made.
    #[error("create directory {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image store could not be opened.
    #[error("open image store")]
    Images(#[from] ImageError),
    /// Signal handlers could not be installed.
    #[error("install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The streaming server could not listen.
    #[error("start the streaming server")]
    Streaming(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("serve CRI")]
    Transport(#[from] tonic::transport::Error),
}

/// How often the pod network's bridge and nftables table are checked and put
/// back if something removed them.
const NETWORK_RESYNC: Duration = Duration::from_secs(30);

/// Serves CRI until SIGTERM or SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let access =
        socket::SocketAccess { mode: config.server.socket_mode, gid: u32::try_from(config.server.socket_gid).ok() };
    // The socket lock comes first, so that a second crius names the socket
    // it collides on rather than the state store behind it.
    let (listener, socket_guard) = socket::bind(&config.socket, access)?;
    for dir in [&config.root, &config.run_root] {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir { path: dir.clone(), source })?;
    }
    let store = StateStore::open(&config.root)?;
    tracing::info!(path = %store.path().display(), schema = crate::store::SCHEMA_VERSION, "state store open");
    let images = ImageStore::open(image_store_config(&config))?;

    let grace = Duration::from_secs(config.server.shutdown_timeout_secs);
    let socket_path = config.socket.clone();
    let state = Arc::new(AgentState::new(config, store, images));
    let gc_state = Arc::clone(&state);
    match tokio::task::spawn_blocking(move || crate::cri::images::collect_garbage(&gc_state)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %crate::error::chain(&e), "image garbage collection at start failed"),
        Err(e) => tracing::warn!(error = %e, "image garbage collection at start failed"),
    }
    let recover_state = Arc::clone(&state);
    match tokio::task::spawn_blocking(move || crate::cri::pods::recover(&recover_state)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %crate::error::chain(&e), "pod recovery at start failed"),
        Err(e) => tracing::warn!(error = %e, "pod recovery at start failed"),
    }
    let streaming_address =
        state.config.streaming.address.parse().map_err(|e| {
            ServeError::Streaming(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))
        })?;
    let ttl = Duration::from_secs(state.config.streaming.token_ttl_secs);
    let tls = match (&state.config.streaming.tls_cert_file, &state.config.streaming.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            crate::streaming::tls_acceptor(cert, key)
                .map_err(|e| ServeError::Streaming(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?,
        ),
        _ => None,
    };
    let streaming =
        crate::streaming::StreamServer::start(streaming_address, ttl, tls).await.map_err(ServeError::Streaming)?;
    let _ = state.streaming.set(streaming);
    let resync_state = Arc::clone(&state);
    let resync = tokio::spawn(async move {
        let mut every = tokio::time::interval(NETWORK_RESYNC);
        every.tick().await;
        loop {
            every.tick().await;
            let state = Arc::clone(&resync_state);
            let _ = tokio::task::spawn_blocking(move || state.network.resync()).await;
        }
    });
    let service = CriService::new(state);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let signals = watch_signals(stop_tx)?;

    tracing::info!(socket = %socket_path.display(), version = env!("CARGO_PKG_VERSION"), "crius serving CRI");
    let mut shutdown = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .layer(instrument::RpcInstrumentLayer)
        .add_service(RuntimeServiceServer::new(service.clone()))
        .add_service(ImageServiceServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);

    let result = tokio::select! {
        result = &mut server => result,
        _ = async {
            let _ = stop_rx.wait_for(|stop| *stop).await;
            tracing::info!(grace_secs = grace.as_secs(), "stopping: no new connections, waiting for in-flight RPCs");
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("in-flight RPCs did not finish within the shutdown timeout; exiting anyway");
            Ok(())
        }
    };
    signals.abort();
    resync.abort();
    drop(socket_guard);
    result?;
    tracing::info!("crius stopped; pods and containers keep running");
    Ok(())
}

/// Where images and container layers live, and how pulls behave.
pub fn image_store_config(config: &Config) -> ImageStoreConfig {
    ImageStoreConfig {
        root: config.root.join("images"),
        containers_root: config.root.join("snapshots"),
        hosts_dir: Some(config.registry.config_path.clone()),
        auth_file: config.registry.auth_file.clone(),
        progress_timeout: Duration::from_secs(config.images.pull_progress_timeout_secs),
        progress_interval: Duration::from_secs(5),
        unpack_limits: UnpackLimits { max_bytes: config.images.max_layer_unpacked_bytes, ..UnpackLimits::default() },
        space_reserve: SpaceReserve { percent: config.images.min_free_percent },
    }
}

/// Flips `stop` on the first SIGTERM or SIGINT.
fn watch_signals(stop: watch::Sender<bool>) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    Ok(tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
        let _ = stop.send(true);
    }))
}
