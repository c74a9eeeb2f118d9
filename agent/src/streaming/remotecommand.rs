//! Exec and attach sessions, independent of the wire protocol: the
//! transport (SPDY or WebSocket) hands over channels for stdin, stdout,
//! stderr, resize and error; [`relay`] connects them to a process and ends
//! with the exit status on the error channel, in the format the negotiated
//! `vN.channel.k8s.io` version expects.

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub use crius_sandbox::backend::{Outcome, ProcessIo, ResizeFn, StreamOptions};

/// Remote command protocol versions, oldest first.
pub const PROTOCOLS: [&str; 5] =
    ["channel.k8s.io", "v2.channel.k8s.io", "v3.channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"];

/// 1 for `channel.k8s.io` … 5 for `v5.channel.k8s.io`.
pub fn version_of(protocol: &str) -> u8 {
    PROTOCOLS.iter().position(|p| *p == protocol).and_then(|i| u8::try_from(i + 1).ok()).unwrap_or(0)
}

/// The transport's side of a session.
#[derive(Debug)]
pub struct Channels {
    /// Client input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Terminal size changes, as JSON `{"Width":..,"Height":..}` objects.
    pub resize: Option<mpsc::Receiver<Bytes>>,
    /// Output to the client.
    pub stdout: Option<mpsc::Sender<Bytes>>,
    /// Error output to the client.
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// The final status.
    pub error: mpsc::Sender<Bytes>,
}

/// The final status in the format of protocol `version`; empty when that
/// version sends nothing (success before v4).
pub fn status_message(version: u8, outcome: &Outcome) -> Option<Bytes> {
    let json = |value: serde_json::Value| Some(Bytes::from(value.to_string()));
    match (version >= 4, outcome) {
        (true, Outcome::Exited(0)) => json(serde_json::json!({"metadata": {}, "status": "Success"})),
        (true, Outcome::Exited(code)) => json(serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })),
        (true, Outcome::Failed(why)) => json(serde_json::json!({"metadata": {}, "status": "Failure", "message": why})),
        (false, Outcome::Exited(0)) => None,
        (false, Outcome::Exited(code)) => {
            Some(Bytes::from(format!("command terminated with non-zero exit code: exit status {code}")))
        }
        (false, Outcome::Failed(why)) => Some(Bytes::from(why.clone())),
    }
}

/// Connects the process to the channels until it ends or the client goes
/// (`gone`); then sends the status and closes the output channels.
pub async fn relay(process: ProcessIo, channels: Channels, version: u8, gone: impl Future<Output = ()>) {
    let ProcessIo { stdin, stdout, stderr, resize: resize_fn, wait } = process;
    let Channels { stdin: stdin_rx, resize, stdout: stdout_tx, stderr: stderr_tx, error } = channels;
    if let (Some(mut rx), Some(mut input)) = (stdin_rx, stdin) {
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
            // Client closed stdin: the process sees end of input.
            let _ = input.shutdown().await;
        });
    }
    if let (Some(mut rx), Some(apply)) = (resize, resize_fn) {
        tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(data) = rx.recv().await {
                pending.extend_from_slice(&data);
                for (width, height) in parse_sizes(&mut pending) {
                    apply(width, height);
                }
            }
        });
    }
    // Output the transport can no longer deliver (the client stopped
    // reading and was dropped) ends the session like a disconnect.
    let undeliverable = tokio::sync::Notify::new();
    let pump_out = pump(stdout, stdout_tx, &undeliverable);
    let pump_err = pump(stderr, stderr_tx, &undeliverable);
    let run = async {
        let (outcome, (), ()) = tokio::join!(wait, pump_out, pump_err);
        outcome
    };
    tokio::select! {
        outcome = run => {
            if let Some(message) = status_message(version, &outcome) {
                let _ = error.send(message).await;
            }
        }
        () = gone => {
            tracing::debug!("streaming client disconnected; stopping the session");
        }
        () = undeliverable.notified() => {
            tracing::debug!("streaming client stopped taking output; stopping the session");
        }
    }
}

/// Copies a process output to a channel until either ends; a channel that
/// closes first is reported on `undeliverable`.
async fn pump(
    source: Option<Box<dyn AsyncRead + Send + Unpin>>,
    sink: Option<mpsc::Sender<Bytes>>,
    undeliverable: &tokio::sync::Notify,
) {
    let (Some(mut source), Some(sink)) = (source, sink) else { return };
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match source.read(&mut buf).await {
            // A terminal master reads EIO once the last process on it exits.
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if sink.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    undeliverable.notify_one();
                    return;
                }
            }
        }
    }
}

/// Complete `{"Width":w,"Height":h}` objects at the front of `pending` (which
/// keeps an unfinished one for the next chunk).
pub fn parse_sizes(pending: &mut Vec<u8>) -> Vec<(u16, u16)> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u16,
        #[serde(rename = "Height")]
        height: u16,
    }
    let mut sizes = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(pending).into_iter::<Size>();
    let mut consumed = 0;
    loop {
        match stream.next() {
            Some(Ok(size)) => {
                consumed = stream.byte_offset();
                sizes.push((size.width, size.height));
            }
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(_)) => {
                // Not a size: drop what was buffered.
                consumed = pending.len();
                break;
            }
            None => break,
        }
    }
    pending.drain(..consumed);
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_protocol_version() {
        let ok = status_message(4, &Outcome::Exited(0)).expect("v4 success");
        assert_eq!(&ok[..], br#"{"metadata":{},"status":"Success"}"#);
        let failed = status_message(4, &Outcome::Exited(3)).expect("v4 failure");
        let value: serde_json::Value = serde_json::from_slice(&failed).expect("json");
        assert_eq!(value["reason"], "NonZeroExitCode");
        assert_eq!(value["details"]["causes"][0]["message"], "3");
        assert_eq!(status_message(2, &Outcome::Exited(0)), None);
        assert!(status_message(1, &Outcome::Failed("no".into())).is_some());
        assert_eq!(version_of("v4.channel.k8s.io"), 4);
        assert_eq!(version_of("channel.k8s.io"), 1);
        assert_eq!(version_of("nope"), 0);
    }

    #[test]
    fn sizes_are_parsed_across_chunks() {
        let mut pending = br#"{"Width":80,"Height":24}{"Width":1"#.to_vec();
        assert_eq!(parse_sizes(&mut pending), [(80, 24)]);
        pending.extend_from_slice(br#"20,"Height":40}"#);
        assert_eq!(parse_sizes(&mut pending), [(120, 40)]);
        assert!(pending.is_empty());
        let mut junk = br#""not a size""#.to_vec();
        assert!(parse_sizes(&mut junk).is_empty());
        assert!(junk.is_empty());
    }
}
