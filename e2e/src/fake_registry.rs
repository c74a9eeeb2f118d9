//! A registry that serves whatever it is given, streamed: for the hostile
//! pull benchmark, whose blobs (a 2 GB config) no real registry should have
//! to store. Plain HTTP/1.1 on 127.0.0.1 (crius pulls loopback registries
//! over HTTP), `GET` and `HEAD` of `/v2/`, manifests by tag or digest and
//! blobs by digest; no auth, no ranges (a range request gets the whole
//! blob, which crius handles as a restart).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use crius_images::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::hostile::Parts;

/// What a path serves.
#[derive(Debug, Clone)]
struct Object {
    content_type: String,
    body: Arc<Parts>,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<String, Object>,
    /// `GET` requests per path.
    gets: HashMap<String, usize>,
}

/// A running fake registry; stops when dropped.
#[derive(Debug)]
pub struct FakeRegistry {
    port: u16,
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, Arc::clone(&shared)));
            }
        });
        Ok(Self { port, state, server })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves `bytes` as manifest `reference` (a tag or digest) of `name`.
    pub fn manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let object = Object {
            content_type: media_type.to_owned(),
            body: Arc::new(Parts(vec![crate::hostile::Part::Bytes(bytes.to_vec())])),
        };
        self.lock().objects.insert(format!("/v2/{name}/manifests/{reference}"), object);
    }

    /// Serves `body` as blob `digest` of `name` (whether or not it hashes to it).
    pub fn blob(&self, name: &str, digest: &Digest, body: Parts) {
        let object = Object { content_type: "application/octet-stream".into(), body: Arc::new(body) };
        self.lock().objects.insert(format!("/v2/{name}/blobs/{digest}"), object);
    }

    /// How many `GET`s of blob `digest` of `name` were answered.
    pub fn blob_gets(&self, name: &str, digest: &Digest) -> usize {
        self.lock().gets.get(&format!("/v2/{name}/blobs/{digest}")).copied().unwrap_or(0)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Answers requests on one connection until the client closes it.
async fn serve(mut conn: TcpStream, state: Arc<Mutex<State>>) {
    let mut pending = Vec::new();
    loop {
        let Some((method, path)) = read_request(&mut conn, &mut pending).await else { return };
        let object = {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if method == "GET" {
                *state.gets.entry(path.clone()).or_default() += 1;
            }
            state.objects.get(&path).cloned()
        };
        let (status, content_type, body) = match object {
            _ if path == "/v2/" => (
                "200 OK",
                "application/json".to_owned(),
                Arc::new(Parts(vec![crate::hostile::Part::Bytes(b"{}".to_vec())])),
            ),
            Some(object) => ("200 OK", object.content_type, object.body),
            None => (
                "404 Not Found",
                "application/json".to_owned(),
                Arc::new(Parts(vec![crate::hostile::Part::Bytes(br#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_vec())])),
            ),
        };
        let head =
            format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", body.len());
        if conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if method == "GET" && send_body(&mut conn, &body).await.is_err() {
            // The client gave up (crius refusing a blob): that is fine.
            return;
        }
    }
}

/// Reads one request head: its method and path (query dropped).
async fn read_request(conn: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let mut words = head.split_whitespace();
            let method = words.next()?.to_owned();
            let path = words.next()?.split('?').next()?.to_owned();
            return Some((method, path));
        }
        if pending.len() > 64 * 1024 {
            return None;
        }
        let mut buf = [0u8; 8192];
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Streams `body`, generating it 256 KiB at a time on a blocking thread.
async fn send_body(conn: &mut TcpStream, body: &Arc<Parts>) -> std::io::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let body = Arc::clone(body);
    let producer = tokio::task::spawn_blocking(move || {
        let mut reader = body.reader();
        loop {
            let mut chunk = vec![0u8; 256 * 1024];
            let n = reader.read(&mut chunk).expect("generated body");
            if n == 0 {
                return;
            }
            chunk.truncate(n);
            if tx.blocking_send(chunk).is_err() {
                return;
            }
        }
    });
    let mut result = Ok(());
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = conn.write_all(&chunk).await {
            result = Err(e);
            break;
        }
    }
    drop(rx);
    let _ = producer.await;
    result
}
