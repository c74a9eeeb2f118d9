//! Guest protocol streams as the byte streams a streaming session uses:
//! what the guest sends becomes an `AsyncRead` (credit returns as it is
//! read), what is written goes to the guest as the stream's credit allows.

use bytes::Bytes;
use guest_proto::codec::StreamId;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::conn::Connection;

/// Buffer of the in-process pipe between a stream and its user.
const PIPE: usize = 64 << 10;
/// Largest piece sent at once.
const CHUNK: usize = 32 << 10;

/// What the guest sends on `stream`, readable. The end of the guest's side
/// is the end of the reader; a reader that goes away resets the stream.
pub fn reader(conn: Connection, stream: StreamId, inbound: mpsc::UnboundedReceiver<Bytes>) -> DuplexStream {
    reader_with_end(conn, stream, inbound).0
}

/// [`reader`], and a signal when the guest's side has ended and all of it
/// was handed to the reader (or the reader went away).
pub fn reader_with_end(
    conn: Connection,
    stream: StreamId,
    mut inbound: mpsc::UnboundedReceiver<Bytes>,
) -> (DuplexStream, oneshot::Receiver<()>) {
    let (mut writer, reader) = tokio::io::duplex(PIPE);
    let (ended, end) = oneshot::channel();
    tokio::spawn(async move {
        while let Some(data) = inbound.recv().await {
            if writer.write_all(&data).await.is_err() {
                conn.reset_stream(stream);
                let _ = ended.send(());
                return;
            }
            conn.consumed(stream, data.len());
        }
        let _ = writer.shutdown().await;
        let _ = ended.send(());
    });
    (reader, end)
}

/// A writer whose bytes go to the guest on `stream`; shutting it down (or
/// dropping it) half-closes the stream.
pub fn writer(conn: Connection, stream: StreamId) -> DuplexStream {
    let (writer, mut reader) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.send_data(stream, Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
        conn.close_stream(stream);
    });
    writer
}

/// Both ways on one stream (a port-forward connection).
pub fn duplex(conn: Connection, stream: StreamId, inbound: mpsc::UnboundedReceiver<Bytes>) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (mut from_user, mut to_user) = tokio::io::split(ours);
    let mut from_guest = reader(conn.clone(), stream, inbound);
    let mut to_guest = writer(conn, stream);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_guest, &mut to_user).await;
        let _ = to_user.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_user, &mut to_guest).await;
        let _ = to_guest.shutdown().await;
    });
    theirs
}
