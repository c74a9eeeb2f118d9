//! Attaching to a running container's stdio, served by its monitor.
//!
//! The monitor listens on `<bundle>/attach.sock` (owner-only). Each client
//! gets every output chunk from the moment it connects and may send input
//! and terminal sizes. Frames both ways are `[kind: u8][length: u32 BE]
//! [payload]`. With `stdin_once`, the container's stdin is closed when the
//! first client that attached goes away or closes its input.
//!
//! Socket paths under a deep bundle can exceed the 108 bytes of `sun_path`,
//! so both ends name the socket through `/proc/self/fd/<bundle dir fd>/`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::logs::Stream;

/// The socket's name in the bundle.
pub const SOCKET: &str = "attach.sock";
/// Client → monitor: input bytes.
pub const KIND_STDIN: u8 = 0;
/// Client → monitor: end of input.
pub const KIND_STDIN_CLOSE: u8 = 1;
/// Client → monitor: terminal size, `[width: u16][height: u16]`.
pub const KIND_RESIZE: u8 = 2;
/// Monitor → client: output.
pub const KIND_STDOUT: u8 = 3;
/// Monitor → client: error output.
pub const KIND_STDERR: u8 = 4;
/// Largest frame payload.
pub const MAX_FRAME: usize = 1 << 20;
/// A client that takes longer than this to take a chunk is dropped, so
/// that the container never waits for it.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const THREAD_STACK: usize = 128 * 1024;

/// One frame in wire form.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_be_bytes([header[1], header[2], header[3], header[4]])).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("attach frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

/// `/proc/self/fd/<dir>/<name>`: a short path to a socket in `dir`.
pub fn short_path(dir: &File, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Opens a directory for [`short_path`].
pub fn open_dir(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// What the monitor shares with its attach clients.
#[derive(Debug)]
pub struct Attachments {
    clients: Mutex<Vec<UnixStream>>,
    stdin: Mutex<Option<File>>,
    terminal: Option<OwnedFd>,
    stdin_once: bool,
}

impl Attachments {
    /// `stdin`: the writing end of the container's input (`None`: no
    /// input); `terminal`: the terminal master, for sizes.
    pub fn new(stdin: Option<File>, terminal: Option<OwnedFd>, stdin_once: bool) -> Arc<Self> {
        Arc::new(Self { clients: Mutex::default(), stdin: Mutex::new(stdin), terminal, stdin_once })
    }

    /// Sends output to every client; drops the ones that fail or stall.
    pub fn broadcast(&self, stream: Stream, data: &[u8]) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.is_empty() {
            return;
        }
        let kind = if stream == Stream::Stderr { KIND_STDERR } else { KIND_STDOUT };
        let frame = encode_frame(kind, data);
        clients.retain_mut(|client| client.write_all(&frame).is_ok());
    }

    /// Ends every client's output (the container is gone).
    pub fn close_all(&self) {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        for client in clients.drain(..) {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
    }

    fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    fn serve_client(&self, mut client: UnixStream) {
        loop {
            match read_frame(&mut client) {
                Ok(Some((KIND_STDIN, data))) => {
                    let mut stdin = self.stdin.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(file) = stdin.as_mut()
                        && file.write_all(&data).is_err()
                    {
                        stdin.take();
                    }
                }
                Ok(Some((KIND_STDIN_CLOSE, _))) => {
                    if self.stdin_once {
                        self.close_stdin();
                    }
                }
                Ok(Some((KIND_RESIZE, size))) if size.len() == 4 => {
                    if let Some(terminal) = &self.terminal {
                        let width = u16::from_be_bytes([size[0], size[1]]);
                        let height = u16::from_be_bytes([size[2], size[3]]);
                        let _ = crate::sys::set_window_size(terminal.as_fd(), width, height);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if self.stdin_once {
            self.close_stdin();
        }
    }
}

/// Binds `<bundle>/attach.sock` and serves clients on threads.
pub fn listen(bundle: &Path, attachments: &Arc<Attachments>) -> io::Result<()> {
    let dir = open_dir(bundle)?;
    let path = short_path(&dir, SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let attachments = Arc::clone(attachments);
    std::thread::Builder::new().name("attach".into()).stack_size(THREAD_STACK).spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(writer) = client.try_clone() else { continue };
            if writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT)).is_err() {
                continue;
            }
            attachments.clients.lock().unwrap_or_else(PoisonError::into_inner).push(writer);
            let attachments = Arc::clone(&attachments);
            let spawned = std::thread::Builder::new()
                .name("attach-client".into())
                .stack_size(THREAD_STACK)
                .spawn(move || attachments.serve_client(client));
            if spawned.is_err() {
                break;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut wire = encode_frame(KIND_STDIN, b"echo hi\n");
        wire.extend(encode_frame(KIND_RESIZE, &[0, 80, 0, 24]));
        let mut reader = &wire[..];
        assert_eq!(read_frame(&mut reader).expect("frame"), Some((KIND_STDIN, b"echo hi\n".to_vec())));
        assert_eq!(read_frame(&mut reader).expect("frame"), Some((KIND_RESIZE, vec![0, 80, 0, 24])));
        assert_eq!(read_frame(&mut reader).expect("end"), None);
        let huge = [KIND_STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &huge[..]).is_err());
    }

    #[test]
    fn clients_get_output_and_stdin_once_closes_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stdin_r, stdin_w) = io::pipe().expect("pipe");
        let attachments = Attachments::new(Some(File::from(OwnedFd::from(stdin_w))), None, true);
        listen(dir.path(), &attachments).expect("listen");
        let bundle = open_dir(dir.path()).expect("dir");
        let mut client = UnixStream::connect(short_path(&bundle, SOCKET)).expect("connect");
        // Wait until the monitor registered the client.
        while attachments.clients.lock().expect("lock").is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        attachments.broadcast(Stream::Stdout, b"out");
        attachments.broadcast(Stream::Stderr, b"err");
        assert_eq!(read_frame(&mut client).expect("frame"), Some((KIND_STDOUT, b"out".to_vec())));
        assert_eq!(read_frame(&mut client).expect("frame"), Some((KIND_STDERR, b"err".to_vec())));
        client.write_all(&encode_frame(KIND_STDIN, b"typed")).expect("send");
        client.write_all(&encode_frame(KIND_STDIN_CLOSE, b"")).expect("send");
        let mut input = String::new();
        File::from(OwnedFd::from(stdin_r)).read_to_string(&mut input).expect("stdin reaches its end");
        assert_eq!(input, "typed");
    }
}
