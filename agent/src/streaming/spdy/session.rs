//! A server-side SPDY/3.1 session on an upgraded connection: a reader task
//! that accepts the streams the client opens (answering each SYN_STREAM at
//! once, as Kubernetes clients wait for the reply) and routes their data, and
//! a writer task that owns the header compressor and the socket's write half.
//!
//! Flow control: crius grants credit for everything it receives
//! (WINDOW_UPDATE) and does not throttle its own sends; Kubernetes clients
//! do not enforce windows either. A client that stops reading stalls the
//! writer, which gives up after [`WRITE_TIMEOUT`] and ends the session.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::frame::{self, FLAG_FIN, Frame};
use super::headers::{HeaderDecoder, HeaderEncoder, HeaderList};

/// How long one write to the client may take before the session is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest DATA frame crius sends.
const MAX_DATA: usize = 32 << 10;
/// Buffered data frames per inbound stream before the reader waits.
const STREAM_QUEUE: usize = 64;

enum Outgoing {
    Frame(Frame),
    Reply(u32),
    Close,
}

/// A stream the client opened.
#[derive(Debug)]
pub struct SpdyStream {
    /// Its id.
    pub id: u32,
    /// Its SYN_STREAM headers (names lowercase).
    pub headers: HeaderList,
    data: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
}

impl SpdyStream {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The next data from the client; `None` once it closed its half.
    pub async fn read(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }

    /// A handle for sending on this stream.
    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Splits into the reading half and a writer.
    pub fn split(self) -> (mpsc::Receiver<Bytes>, StreamWriter) {
        (self.data, self.writer)
    }
}

/// Sends on one stream.
#[derive(Debug, Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Outgoing>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outgoing")
    }
}

/// The session is gone (client disconnected or too slow).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the streaming client went away")]
pub struct Closed;

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    pub async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(MAX_DATA) {
            let frame = Frame::Data { stream_id: self.id, flags: 0, data: Bytes::copy_from_slice(chunk) };
            self.out.send(Outgoing::Frame(frame)).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Ends crius's half of the stream.
    pub async fn close(&self) {
        let frame = Frame::Data { stream_id: self.id, flags: FLAG_FIN, data: Bytes::new() };
        let _ = self.out.send(Outgoing::Frame(frame)).await;
    }
}

/// The session: streams the client opens arrive on `streams`.
#[derive(Debug)]
pub struct Session {
    /// Streams in the order the client opened them; ends with the session.
    pub streams: mpsc::Receiver<SpdyStream>,
    out: mpsc::Sender<Outgoing>,
    reader: tokio::task::JoinHandle<()>,
    gone: watch::Receiver<()>,
}

impl Session {
    /// Starts serving SPDY on `io`.
    pub fn start<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(256);
        let (streams_tx, streams_rx) = mpsc::channel(32);
        tokio::spawn(write_loop(write_half, out_rx));
        let (gone_tx, gone) = watch::channel(());
        let out = out_tx.clone();
        let reader = tokio::spawn(async move {
            read_loop(read_half, out, streams_tx).await;
            drop(gone_tx);
        });
        Self { streams: streams_rx, out: out_tx, reader, gone }
    }

    /// Resolves when the client has disconnected.
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut gone = self.gone.clone();
        async move { while gone.changed().await.is_ok() {} }
    }

    /// Ends the session: pending frames are sent, then the connection closes.
    pub async fn close(self) {
        let _ = self.out.send(Outgoing::Close).await;
        self.reader.abort();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut io: W, mut out: mpsc::Receiver<Outgoing>) {
    let mut encoder = HeaderEncoder::default();
    let mut buf = BytesMut::with_capacity(MAX_DATA + 64);
    while let Some(item) = out.recv().await {
        let frame = match item {
            Outgoing::Frame(frame) => frame,
            Outgoing::Reply(stream_id) => Frame::SynReply { stream_id, flags: 0, headers: encoder.encode(&[]) },
            Outgoing::Close => break,
        };
        buf.clear();
        frame::encode(&frame, &mut buf);
        // Coalesce whatever else is queued into the same write.
        while buf.len() < MAX_DATA {
            match out.try_recv() {
                Ok(Outgoing::Frame(next)) => frame::encode(&next, &mut buf),
                Ok(Outgoing::Reply(stream_id)) => {
                    let reply = Frame::SynReply { stream_id, flags: 0, headers: encoder.encode(&[]) };
                    frame::encode(&reply, &mut buf);
                }
                Ok(Outgoing::Close) => {
                    let _ = write_with_timeout(&mut io, &buf).await;
                    let _ = io.shutdown().await;
                    return;
                }
                Err(_) => break,
            }
        }
        if write_with_timeout(&mut io, &buf).await.is_err() {
            tracing::debug!("streaming client stopped reading; ending the session");
            return;
        }
    }
    let _ = io.shutdown().await;
}

async fn write_with_timeout<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        io.write_all(bytes).await?;
        io.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut io: R, out: mpsc::Sender<Outgoing>, streams_tx: mpsc::Sender<SpdyStream>) {
    let mut decoder = HeaderDecoder::default();
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        let frame = match frame::decode(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!(error = %e, "bad SPDY frame; ending the session");
                return;
            }
        };
        match frame {
            Frame::SynStream { stream_id, flags, headers } => {
                let Ok(headers) = decoder.decode(&headers) else {
                    tracing::debug!(stream_id, "unreadable SPDY headers; ending the session");
                    return;
                };
                let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
                if flags & FLAG_FIN == 0 {
                    inbound.insert(stream_id, data_tx);
                }
                if out.send(Outgoing::Reply(stream_id)).await.is_err() {
                    return;
                }
                let writer = StreamWriter { id: stream_id, out: out.clone() };
                let stream = SpdyStream { id: stream_id, headers, data: data_rx, writer };
                if streams_tx.send(stream).await.is_err() {
                    // Nobody accepts streams any more: refuse it.
                    let _ = out.send(Outgoing::Frame(Frame::RstStream { stream_id, status: 3 })).await;
                }
            }
            Frame::Data { stream_id, flags, data } => {
                let len = u32::try_from(data.len()).unwrap_or(0);
                if let Some(tx) = inbound.get(&stream_id)
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                {
                    inbound.remove(&stream_id);
                }
                if len > 0 {
                    for id in [0, stream_id] {
                        let _ = out.send(Outgoing::Frame(Frame::WindowUpdate { stream_id: id, delta: len })).await;
                    }
                }
                if flags & FLAG_FIN != 0 {
                    inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                inbound.remove(&stream_id);
            }
            Frame::Ping { id } => {
                let _ = out.send(Outgoing::Frame(Frame::Ping { id })).await;
            }
            Frame::GoAway { .. } => return,
            Frame::SynReply { .. }
            | Frame::Settings
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown => {}
        }
    }
}
