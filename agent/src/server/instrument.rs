//! The RPC boundary: one `tracing` span per RPC, one log line per finished
//! RPC (info for mutations, debug for polls), and a clear `Unimplemented`
//! message that names every RPC crius does not serve yet.
//!
//! Handlers add the pod, container and image ids to the span
//! (see [`crate::cri::ids`]); this layer sees only the HTTP/2 request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tower::{Layer, Service};
use tracing::Instrument;

/// The message tonic's generated default stubs return for a method without
/// an implementation. Replaced by one that names the RPC.
const TONIC_STUB_MESSAGE: &str = "Not yet implemented";

/// Adds [`RpcInstrument`] to every service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcInstrumentLayer;

impl<S> Layer<S> for RpcInstrumentLayer {
    type Service = RpcInstrument<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcInstrument { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct RpcInstrument<S> {
    inner: S,
}

/// Whether an RPC changes state (logged at info) or only reads it (debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    /// Creates, changes or removes something.
    Mutation,
    /// Reads; kubelet calls these in loops.
    Poll,
}

/// The method name of a gRPC path: `/runtime.v1.RuntimeService/Version` → `Version`.
pub fn method_name(path: &str) -> &str {
    path.rsplit('/').next().filter(|m| !m.is_empty()).unwrap_or(path)
}

/// Classifies a CRI method.
pub fn rpc_kind(method: &str) -> RpcKind {
    const POLLS: &[&str] = &[
        "Version",
        "Status",
        "RuntimeConfig",
        "PodSandboxStatus",
        "ListPodSandbox",
        "ContainerStatus",
        "ListContainers",
        "ContainerStats",
        "ListContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "ListMetricDescriptors",
        "ListPodSandboxMetrics",
        "GetContainerEvents",
        "ExecSync",
        "ListImages",
        "ImageStatus",
        "ImageFsInfo",
    ];
    if POLLS.contains(&method) || method.starts_with("Stream") { RpcKind::Poll } else { RpcKind::Mutation }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for RpcInstrument<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is not ready; take the ready one (tower's documented pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = method_name(request.uri().path()).to_owned();
        let kind = rpc_kind(&method);
        let span = tracing::info_span!(
            "rpc",
            rpc = %method,
            pod_id = tracing::field::Empty,
            container_id = tracing::field::Empty,
            image = tracing::field::Empty,
            pod = tracing::field::Empty,
        );
        let deadline = request.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        Box::pin(async move {
            let started = Instant::now();
            let call = inner.call(request).instrument(span.clone());
            // The client's deadline, answered as DeadlineExceeded like Go
            // servers do (tonic's own timer answers Cancelled). This timer is
            // polled before tonic's, so it wins when both expire together.
            let mut response = match deadline {
                Some(deadline) => match tokio::time::timeout(deadline, call).await {
                    Ok(result) => result?,
                    Err(_) => deadline_exceeded(),
                },
                None => call.await?,
            };
            let code = grpc_code(&response);
            if code == Some(tonic::Code::Unimplemented) {
                name_unimplemented(&mut response, &method);
            }
            let _entered = span.enter();
            log_outcome(kind, code, grpc_message(&response).as_deref(), started.elapsed());
            Ok(response)
        })
    }
}

/// `grpc-timeout` header values: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A trailers-only DEADLINE_EXCEEDED response.
fn deadline_exceeded<RB: Default>() -> Response<RB> {
    let mut response = Response::new(RB::default());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("4"));
    headers.insert("grpc-message", HeaderValue::from_static("deadline%20exceeded"));
    response
}

/// The status of a trailers-only response (every error tonic returns). A
/// response without it succeeded so far: its status follows in the trailers.
fn grpc_code<B>(response: &Response<B>) -> Option<tonic::Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(tonic::Code::from_i32)
}

fn grpc_message<B>(response: &Response<B>) -> Option<String> {
    let raw = response.headers().get("grpc-message")?.to_str().ok()?;
    Some(percent_decode(raw))
}

fn name_unimplemented<B>(response: &mut Response<B>, method: &str) {
    let current = grpc_message(response).unwrap_or_default();
    if current.is_empty() || current == TONIC_STUB_MESSAGE {
        let message = format!("crius does not implement the {method} RPC yet");
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
            response.headers_mut().insert("grpc-message", value);
        }
    }
}

fn log_outcome(kind: RpcKind, code: Option<tonic::Code>, message: Option<&str>, elapsed: Duration) {
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    match code {
        None | Some(tonic::Code::Ok) => match kind {
            RpcKind::Mutation => tracing::info!(elapsed_us, "rpc ok"),
            RpcKind::Poll => tracing::debug!(elapsed_us, "rpc ok"),
        },
        Some(code) => {
            let message = message.unwrap_or("");
            match code {
                tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                    tracing::error!(elapsed_us, code = ?code, error = message, "rpc failed");
                }
                tonic::Code::NotFound if kind == RpcKind::Poll => {
                    tracing::debug!(elapsed_us, code = ?code, error = message, "rpc failed");
                }
                _ => tracing::warn!(elapsed_us, code = ?code, error = message, "rpc failed"),
            }
        }
    }
}

/// gRPC's `grpc-message` encoding: percent-encode bytes outside printable ASCII and `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_come_from_the_path() {
        assert_eq!(method_name("/runtime.v1.RuntimeService/RunPodSandbox"), "RunPodSandbox");
        assert_eq!(method_name("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method_name("odd"), "odd");
    }

    #[test]
    fn polls_and_mutations_are_told_apart() {
        assert_eq!(rpc_kind("ListContainers"), RpcKind::Poll);
        assert_eq!(rpc_kind("StreamPodSandboxes"), RpcKind::Poll);
        assert_eq!(rpc_kind("Status"), RpcKind::Poll);
        assert_eq!(rpc_kind("RunPodSandbox"), RpcKind::Mutation);
        assert_eq!(rpc_kind("PullImage"), RpcKind::Mutation);
        assert_eq!(rpc_kind("UpdateRuntimeConfig"), RpcKind::Mutation);
    }

    #[test]
    fn grpc_timeouts_are_parsed() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_grpc_timeout("500u"), Some(Duration::from_micros(500)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "1x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        let response: Response<()> = deadline_exceeded();
        assert_eq!(grpc_code(&response), Some(tonic::Code::DeadlineExceeded));
    }

    #[test]
    fn grpc_message_encoding_round_trips() {
        let text = "crius: 100% not ünïcode-safe\n";
        let encoded = percent_encode(text);
        assert!(encoded.is_ascii() && !encoded.contains('\n'));
        assert_eq!(percent_decode(&encoded), text);
        assert_eq!(percent_decode("bad %zz and %4"), "bad %zz and %4");
    }

    #[test]
    fn stub_message_is_replaced_but_a_handler_message_is_kept() {
        let mut stub = Response::new(());
        stub.headers_mut().insert("grpc-status", HeaderValue::from_static("12"));
        stub.headers_mut().insert("grpc-message", HeaderValue::from_static("Not%20yet%20implemented"));
        name_unimplemented(&mut stub, "RunPodSandbox");
        assert_eq!(grpc_message(&stub).as_deref(), Some("crius does not implement the RunPodSandbox RPC yet"));

        let mut specific = Response::new(());
        specific.headers_mut().insert("grpc-message", HeaderValue::from_static("seccomp%20profile%20X"));
        name_unimplemented(&mut specific, "CreateContainer");
        assert_eq!(grpc_message(&specific).as_deref(), Some("seccomp profile X"));
    }
}
