//! The pod end of a port forward: a TCP connection to localhost inside the
//! pod's network namespace (or the node's, for host-network pods).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting to the pod port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on localhost (IPv4, then IPv6) inside `netns`.
pub async fn connect(netns: Option<&Path>, port: u16) -> io::Result<tokio::net::TcpStream> {
    let netns: Option<PathBuf> = netns.map(Path::to_owned);
    let stream = tokio::task::spawn_blocking(move || {
        crius_network::netns::run_in(netns.as_deref(), || {
            let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|first| {
                let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| first)
            })
        })
        .map_err(|e| io::Error::other(e.to_string()))?
    })
    .await
    .map_err(io::Error::other)??;
    stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(stream)
}
