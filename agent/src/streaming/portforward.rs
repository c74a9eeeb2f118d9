//! The pod end of a port forward: a connection to a port on localhost
//! inside the pod, made by the pod's backend.

use std::io;
use std::sync::Arc;

use crius_sandbox::backend::{Backend, DuplexStream, PodHandle};

/// A pod whose ports a session forwards to.
#[derive(Debug, Clone)]
pub struct PodPorts {
    backend: Arc<dyn Backend>,
    pod: PodHandle,
}

impl PodPorts {
    /// The ports of `pod`, run by `backend`.
    pub fn new(backend: Arc<dyn Backend>, pod: PodHandle) -> Self {
        Self { backend, pod }
    }

    /// Connects to `port` on localhost inside the pod.
    pub async fn connect(&self, port: u16) -> io::Result<DuplexStream> {
        self.backend.port_forward(&self.pod, port).await.map_err(|e| io::Error::other(crius_sandbox::error_report(&e)))
    }
}
