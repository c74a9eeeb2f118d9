//! gRPC clients that send the socket path as `:authority` (grpc-go before
//! 1.5x: kubelet < 1.26, crictl and critest 1.26) must be served, not reset.
//! The request is written frame by frame, since no Rust client sends such a
//! header.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crius_e2e::{Crius, CriusDirs};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK "literal header field without indexing, new name", no Huffman coding.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, u8::try_from(name.len()).expect("short")];
    out.extend_from_slice(name.as_bytes());
    out.push(u8::try_from(value.len()).expect("short"));
    out.extend_from_slice(value.as_bytes());
    out
}

#[tokio::test]
async fn socket_path_as_authority_is_served() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let _crius = Crius::start(&dirs, &[]).await?;
    let socket = dirs.socket.clone();

    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = UnixStream::connect(&socket)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut headers = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/runtime.v1.RuntimeService/Version"),
            (":authority", socket.to_str().expect("utf8 path")),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            headers.extend(literal(name, value));
        }
        // gRPC message: uncompressed, length 4, VersionRequest { version: "v1" }.
        let message = [0u8, 0, 0, 0, 4, 0x0a, 0x02, b'v', b'1'];
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        out.extend(frame(HEADERS, 0x4, 1, &headers));
        out.extend(frame(DATA, 0x1, 1, &message));
        conn.write_all(&out)?;

        loop {
            let mut head = [0u8; 9];
            conn.read_exact(&mut head)?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload)?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match head[3] {
                RST_STREAM if stream == 1 => anyhow::bail!("stream reset: {payload:?}"),
                GOAWAY => anyhow::bail!("connection closed with GOAWAY: {payload:?}"),
                DATA if stream == 1 => {
                    let text = String::from_utf8_lossy(&payload);
                    anyhow::ensure!(text.contains("crius"), "unexpected Version reply: {text:?}");
                    return Ok(());
                }
                _ => {}
            }
        }
    })
    .await??;
    Ok(())
}
