//! CRI v1 gRPC bindings generated from the vendored `proto/api.proto`
//! (kubernetes/cri-api v0.36.3, Kubernetes 1.36, Apache-2.0; see `proto/LICENSE`).
//!
//! This crate holds generated code only: no behaviour lives here. The agent
//! implements the server traits; the e2e tests and tools use the clients.

/// The `runtime.v1` protobuf package: messages, `RuntimeService` and `ImageService`.
#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}
