//! A WebSocket client for the streaming server's URLs (exec, attach,
//! port-forward), as kubectl speaks it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A client session.
pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to a streaming URL offering `protocol`, and checks the server
/// chose it.
pub async fn connect(url: &str, protocol: &str) -> Result<Ws> {
    let mut request = url.replace("http://", "ws://").into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse()?);
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap_or_default().to_owned());
    anyhow::ensure!(chosen.as_deref() == Some(protocol), "server chose {chosen:?}, not {protocol}");
    Ok(ws)
}

/// Reads messages until the server closes (at most 30 s): bytes per channel.
pub async fn collect(ws: &mut Ws) -> Result<BTreeMap<u8, Vec<u8>>> {
    let mut channels = BTreeMap::new();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    channels.entry(data[0]).or_insert_with(Vec::new).extend_from_slice(&data[1..]);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(channels),
                _ => {}
            },
            () = &mut deadline => anyhow::bail!("the session did not end within 30 s"),
        }
    }
}

/// Reads one port-forward connection of a session made with `?port=`:
/// skips the two channel openings, hashes `expected_len` bytes of data.
pub async fn read_forwarded(ws: &mut Ws, expected_len: usize) -> Result<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let (mut total, mut openings) = (0usize, 0);
    while total < expected_len {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) if data.len() == 3 && openings < 2 => openings += 1,
            Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                total += data.len() - 1;
                hasher.update(&data[1..]);
            }
            Some(Ok(Message::Binary(data))) => {
                anyhow::bail!("error channel: {}", String::from_utf8_lossy(&data[1..]))
            }
            other => anyhow::bail!("session ended early after {total} bytes: {other:?}"),
        }
    }
    Ok(hasher.finalize().to_vec())
}
