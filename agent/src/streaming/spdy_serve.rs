//! Exec, attach and port-forward over a SPDY session: which stream is which
//! (the `streamtype` header), and the adapters between SPDY streams and the
//! protocol-independent channels of [`super::remotecommand`].

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Pending;
use super::portforward::PodPorts;
use super::remotecommand::{self, Channels, Outcome};
use super::spdy::session::{Session, SpdyStream, StreamWriter};

/// How long the client gets to open the streams it asked for.
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one exec or attach session.
pub async fn serve_remote_command(mut session: Session, version: u8, pending: Pending) {
    let options = pending.options();
    let mut streams = Streams::default();
    let wanted = |s: &Streams| {
        s.error.is_some()
            && (!options.stdin || s.stdin.is_some())
            && (!options.stdout || s.stdout.is_some())
            && (!options.stderr || options.tty || s.stderr.is_some())
            && (!options.tty || version < 3 || s.resize.is_some())
    };
    let collected = tokio::time::timeout(STREAMS_TIMEOUT, async {
        while !wanted(&streams) {
            let Some(stream) = session.streams.recv().await else { return false };
            streams.add(stream);
        }
        true
    })
    .await;
    if !matches!(collected, Ok(true)) {
        tracing::debug!("streaming client did not open its streams");
        if let Some(error) = &streams.error {
            let message = Outcome::Failed("timed out waiting for the client's streams".into());
            if let Some(text) = remotecommand::status_message(version, &message) {
                let _ = error.writer().write(&text).await;
            }
        }
        session.close().await;
        return;
    }
    let Some(error) = streams.error.take() else {
        session.close().await;
        return;
    };
    let gone = session.gone();
    let mut flushes = Vec::new();
    let (error_tx, flush) = outbound(error.writer());
    flushes.push(flush);
    let out = |stream: Option<SpdyStream>, flushes: &mut Vec<tokio::task::JoinHandle<()>>| {
        stream.map(|s| {
            let (tx, flush) = outbound(s.writer());
            flushes.push(flush);
            tx
        })
    };
    let stdout = out(streams.stdout.take(), &mut flushes);
    let stderr = out(streams.stderr.take(), &mut flushes);
    let channels = Channels {
        stdin: streams.stdin.map(|s| s.split().0),
        resize: streams.resize.map(|s| s.split().0),
        stdout,
        stderr,
        error: error_tx,
    };
    match pending.start(options).await {
        Ok(process) => remotecommand::relay(process, channels, version, gone).await,
        Err(e) => {
            let outcome = Outcome::Failed(crate::error::chain(&e));
            if let Some(text) = remotecommand::status_message(version.max(1), &outcome) {
                let _ = channels.error.send(text).await;
            }
        }
    }
    for flush in flushes {
        let _ = flush.await;
    }
    session.close().await;
}

/// A channel whose messages are written to `writer`; the stream is closed
/// when the channel's senders are gone. The handle ends after the close.
fn outbound(writer: StreamWriter) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let flush = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if writer.write(&data).await.is_err() {
                return;
            }
        }
        writer.close().await;
    });
    (tx, flush)
}

#[derive(Debug, Default)]
struct Streams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl Streams {
    fn add(&mut self, stream: SpdyStream) {
        let slot = match stream.header("streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            other => {
                tracing::debug!(streamtype = ?other, "ignoring a stream of unknown type");
                return;
            }
        };
        *slot = Some(stream);
    }
}

/// Serves port forwarding: each connection is a pair of streams (error and
/// data) with the same `requestid`, for one `port` of the pod.
pub async fn serve_port_forward(mut session: Session, pod: PodPorts) {
    let mut errors: std::collections::HashMap<String, StreamWriter> = std::collections::HashMap::new();
    while let Some(stream) = session.streams.recv().await {
        let request = stream.header("requestid").unwrap_or_default().to_owned();
        match stream.header("streamtype") {
            Some("error") => {
                errors.insert(request, stream.writer());
            }
            Some("data") => {
                let error = errors.remove(&request);
                let port = stream.header("port").and_then(|p| p.parse::<u16>().ok());
                tokio::spawn(forward_one(stream, port, error, pod.clone()));
            }
            other => tracing::debug!(streamtype = ?other, "ignoring a port-forward stream of unknown type"),
        }
    }
    session.close().await;
}

async fn forward_one(stream: SpdyStream, port: Option<u16>, error: Option<StreamWriter>, pod: PodPorts) {
    let (mut from_client, to_client) = stream.split();
    let report = |message: String| {
        let error = error.clone();
        async move {
            tracing::debug!(%message, "port forward failed");
            if let Some(error) = error {
                let _ = error.write(message.as_bytes()).await;
                error.close().await;
            }
        }
    };
    let Some(port) = port else {
        report("missing or invalid port header".into()).await;
        to_client.close().await;
        return;
    };
    let socket = match pod.connect(port).await {
        Ok(socket) => socket,
        Err(e) => {
            report(format!("failed to connect to localhost:{port} inside the pod: {e}")).await;
            to_client.close().await;
            return;
        }
    };
    let (mut tcp_read, mut tcp_write) = tokio::io::split(socket);
    let upstream = async move {
        while let Some(data) = from_client.recv().await {
            if tcp_write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = tcp_write.shutdown().await;
    };
    let writer = to_client.clone();
    let downstream = async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match tcp_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        writer.close().await;
    };
    tokio::join!(upstream, downstream);
    if let Some(error) = error {
        error.close().await;
    }
}
