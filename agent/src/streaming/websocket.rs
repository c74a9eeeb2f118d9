//! Exec, attach and port-forward over WebSocket, as kubectl's WebSocket
//! clients speak it: every binary message starts with a channel byte
//! (remote command: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize, and in
//! v5 255 = "close channel N"; port forward: per port, channel 2i carries
//! data and 2i+1 errors, each opened by the port number, little-endian).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::Pending;
use super::remotecommand::{self, Channels, Outcome};

/// Remote command subprotocols over WebSocket, newest first.
pub const REMOTE_COMMAND_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Port forward subprotocol.
pub const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Where a client message goes, by its first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Input bytes.
    Stdin(&'a [u8]),
    /// Terminal size JSON.
    Resize(&'a [u8]),
    /// v5: the client closed channel N.
    Close(u8),
    /// Anything else (ignored).
    Other,
}

/// Splits a client message of a remote command session.
pub fn classify(message: &[u8], version: u8) -> Inbound<'_> {
    match message.split_first() {
        Some((&STDIN, rest)) => Inbound::Stdin(rest),
        Some((&RESIZE, rest)) => Inbound::Resize(rest),
        Some((&CLOSE, rest)) if version >= 5 && !rest.is_empty() => Inbound::Close(rest[0]),
        _ => Inbound::Other,
    }
}

/// Serves an exec or attach session.
pub async fn serve_remote_command<S>(ws: WebSocketStream<S>, version: u8, pending: Pending)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let options = pending.options();
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(32);
    let writer = tokio::spawn(async move {
        while let Some((channel, data)) = out_rx.recv().await {
            let mut message = Vec::with_capacity(data.len() + 1);
            message.push(channel);
            message.extend_from_slice(&data);
            if !send_in_time(&mut sink, Message::binary(message)).await {
                return;
            }
        }
        let _ = send_in_time(&mut sink, Message::Close(None)).await;
        let _ = sink.close().await;
    });
    let channel = |id: u8| {
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let out = out_tx.clone();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if out.send((id, data)).await.is_err() {
                    return;
                }
            }
        });
        tx
    };
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    let channels = Channels {
        stdin: options.stdin.then_some(stdin_rx),
        resize: options.tty.then_some(resize_rx),
        stdout: options.stdout.then(|| channel(STDOUT)),
        stderr: (options.stderr && !options.tty).then(|| channel(STDERR)),
        error: channel(ERROR),
    };
    drop(out_tx);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut stdin = Some(stdin_tx);
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match classify(&data, version) {
                Inbound::Stdin(bytes) => {
                    if let Some(tx) = &stdin
                        && tx.send(Bytes::copy_from_slice(bytes)).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Inbound::Resize(bytes) => {
                    let _ = resize_tx.send(Bytes::copy_from_slice(bytes)).await;
                }
                Inbound::Close(STDIN) => stdin = None,
                Inbound::Close(_) | Inbound::Other => {}
            }
        }
        drop(gone_tx);
    });
    let gone = async move {
        let _ = gone_rx.await;
    };
    match pending.start(options).await {
        Ok(process) => remotecommand::relay(process, channels, version, gone).await,
        Err(e) => {
            let outcome = Outcome::Failed(crate::error::chain(&e));
            if let Some(text) = remotecommand::status_message(version, &outcome) {
                let _ = channels.error.send(text).await;
            }
        }
    }
    let _ = writer.await;
}

/// Serves port forwarding for `ports` (from the URL's `port` parameters).
pub async fn serve_port_forward<S>(ws: WebSocketStream<S>, pod: super::portforward::PodPorts, ports: Vec<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if !send_in_time(&mut sink, Message::binary(message)).await {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut to_pod: Vec<Option<tokio::io::WriteHalf<crius_sandbox::backend::DuplexStream>>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, error_ch) = channel_pair(i);
        for ch in [data_ch, error_ch] {
            let mut opening = vec![ch];
            opening.extend_from_slice(&port.to_le_bytes());
            let _ = out_tx.send(opening).await;
        }
        match pod.connect(*port).await {
            Ok(socket) => {
                let (mut read, write) = tokio::io::split(socket);
                to_pod.push(Some(write));
                let out = out_tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 << 10];
                    while let Ok(n) = read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut message = Vec::with_capacity(n + 1);
                        message.push(data_ch);
                        message.extend_from_slice(&buf[..n]);
                        if out.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                to_pod.push(None);
                let mut message = vec![error_ch];
                message
                    .extend_from_slice(format!("failed to connect to localhost:{port} inside the pod: {e}").as_bytes());
                let _ = out_tx.send(message).await;
            }
        }
    }
    drop(out_tx);
    while let Some(Ok(message)) = stream.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&ch, rest)) = data.split_first() else { continue };
        let index = usize::from(ch / 2);
        if ch % 2 == 0
            && let Some(Some(write)) = to_pod.get_mut(index)
            && write.write_all(rest).await.is_err()
        {
            to_pod[index] = None;
        }
    }
    drop(to_pod);
    writer.abort();
}

/// Sends one message unless the client takes longer than the write timeout
/// (then the session is dropped, as for SPDY).
async fn send_in_time<S>(sink: &mut S, message: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    matches!(tokio::time::timeout(super::spdy::session::WRITE_TIMEOUT, sink.send(message)).await, Ok(Ok(())))
}

/// Data and error channel numbers of the port at `index`.
fn channel_pair(index: usize) -> (u8, u8) {
    let data = u8::try_from(index * 2).unwrap_or(u8::MAX - 1);
    (data, data.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_routed_by_channel_byte() {
        assert_eq!(classify(&[0, b'h', b'i'], 4), Inbound::Stdin(b"hi"));
        assert_eq!(classify(&[4, b'{'], 4), Inbound::Resize(b"{"));
        assert_eq!(classify(&[255, 0], 5), Inbound::Close(0));
        assert_eq!(classify(&[255, 0], 4), Inbound::Other);
        assert_eq!(classify(&[], 5), Inbound::Other);
        assert_eq!(classify(&[255], 5), Inbound::Other);
        assert_eq!(channel_pair(0), (0, 1));
        assert_eq!(channel_pair(3), (6, 7));
    }
}
