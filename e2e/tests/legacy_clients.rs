//! gRPC clients on unix sockets send many forms of `:authority`, and crius
//! must serve every one of them instead of resetting the stream: the socket
//! path (grpc-go before 1.5x: kubelet < 1.26, crictl and critest 1.26), the
//! path percent-encoded (grpc-go 1.5x: containerd 1.7's CRI client, kubelet
//! and crictl of that era), `localhost`, and the dial target itself
//! (`unix:...`, `unix-abstract:...`). A malformed authority is still refused.
//! The requests are written frame by frame, since no Rust client sends such
//! headers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crius_e2e::{Crius, CriusDirs};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const PROTOCOL_ERROR: u32 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 5.1), as string lengths are sent.
fn hpack_len(out: &mut Vec<u8>, len: usize) {
    if len < 127 {
        out.push(u8::try_from(len).expect("checked"));
        return;
    }
    out.push(127);
    let mut rest = len - 127;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).expect("checked") | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).expect("checked"));
}

/// HPACK "literal header field without indexing, new name", no Huffman coding.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_len(&mut out, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_len(&mut out, value.len());
    out.extend_from_slice(value.as_bytes());
    out
}

/// How the server answered one request.
#[derive(Debug, PartialEq)]
enum Reply {
    /// The first DATA frame of the response, as text.
    Data(String),
    /// RST_STREAM with this error code.
    Reset(u32),
}

/// Sends one `Version` request with `authority` on a fresh connection.
fn version_with_authority(socket: &Path, authority: &str) -> anyhow::Result<Reply> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", authority),
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
            RST_STREAM if stream == 1 => {
                let code = payload.get(..4).and_then(|c| <[u8; 4]>::try_from(c).ok()).map(u32::from_be_bytes);
                return Ok(Reply::Reset(code.unwrap_or(u32::MAX)));
            }
            GOAWAY => anyhow::bail!("connection closed with GOAWAY: {payload:?}"),
            DATA if stream == 1 => return Ok(Reply::Data(String::from_utf8_lossy(&payload).into_owned())),
            _ => {}
        }
    }
}

/// `path` percent-encoded the way grpc-go 1.5x encodes an authority: `/` becomes `%2F`.
fn percent_encoded(path: &str) -> String {
    path.replace('/', "%2F")
}

#[tokio::test]
async fn every_unix_socket_authority_form_is_served() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let _crius = Crius::start(&dirs, &[]).await?;
    let socket = dirs.socket.clone();
    let path = socket.to_str().expect("utf8 path").to_owned();
    let forms = [
        path.clone(),
        percent_encoded(&path),
        percent_encoded(&path).to_lowercase(),
        "localhost".to_owned(),
        format!("unix://{path}"),
        format!("unix:{path}"),
        "unix:run/crius.sock".to_owned(),
        "unix-abstract:crius".to_owned(),
    ];

    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for authority in forms {
            match version_with_authority(&socket, &authority)? {
                Reply::Data(text) if text.contains("crius") => {}
                reply => failures.push(format!("{authority:?}: {reply:?}")),
            }
        }
        anyhow::ensure!(failures.is_empty(), "Version was not served for:\n{}", failures.join("\n"));
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test]
async fn a_malformed_authority_is_still_refused() -> anyhow::Result<()> {
    let dirs = CriusDirs::new()?;
    let _crius = Crius::start(&dirs, &[]).await?;
    let socket = dirs.socket.clone();

    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        // Not a host, and not a socket address: a space, two ports, a broken
        // escape, a path with a control character in it.
        for authority in ["local host", "host:port:80", "%2F%zz", "%2Frun%2Fx%0A.sock"] {
            let reply = version_with_authority(&socket, authority)?;
            anyhow::ensure!(reply == Reply::Reset(PROTOCOL_ERROR), "{authority:?}: {reply:?}");
        }
        Ok(())
    })
    .await??;
    Ok(())
}
