//! SPDY/3.1, the subset Kubernetes streaming uses: streams opened by the
//! client, data both ways, ping, goaway.

pub mod frame;
pub mod headers;
pub mod session;
