//! One task per container: tails its CRI log file into its output buffer,
//! notices its exit, and records the exit after the last output record.
//!
//! **The log file is only a pipe.** The monitor appends CRI entries to
//! `<run root>/logs/<id>.log`; this task reads them as they come (polling:
//! every 20 ms while output flows, every 200 ms when idle), turns them into
//! records ([`crate::crilog`]) and pushes them into the container's bounded
//! [`guest_proto::output::OutputBuffer`], which numbers them. What the host
//! has not acknowledged lives in that buffer (8 MiB per container), not in
//! the file: once the file grows past 4 MiB and has been read to its end it
//! is rotated (renamed, the monitor told to reopen the path, the old file
//! read to its end and deleted), so it never grows without bound and no
//! entry is lost or read twice.
//!
//! **Exits.** The container's state is checked on every SIGCHLD the agent
//! gets and at least every 500 ms. The monitor writes `exit.json` after its
//! last log entry, so once the state says exited, the file is read to its
//! end one last time and only then is the exit recorded: the host gets
//! every record before `ContainerExited`.
//!
//! File reads are plain blocking reads of a file the agent's own children
//! write (page cache, microseconds); they run on the runtime thread.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crius_sandbox::backend::{ContainerRuntime, RunState};
use tokio::task::AbortHandle;

use crate::crilog::EntryReader;
use crate::guest::{Container, Guest, lock};

/// Poll interval while output flows.
const TAIL_FAST: Duration = Duration::from_millis(20);
/// Poll interval after [`IDLE_POLLS`] polls without output.
const TAIL_SLOW: Duration = Duration::from_millis(200);
const IDLE_POLLS: u32 = 10;
/// The container's state is checked at least this often.
const STATE_EVERY: Duration = Duration::from_millis(500);
/// A log file read this far is rotated.
const ROTATE_AT: u64 = 4 << 20;
/// After a failed rotation, the next try waits this long.
const ROTATE_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the container's watcher; abort it when the container is removed.
pub fn spawn(guest: Arc<Guest>, container: Arc<Container>) -> AbortHandle {
    tokio::spawn(run(guest, container)).abort_handle()
}

/// Where a log file is while it is rotated.
pub fn rotating_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".rotating");
    PathBuf::from(name)
}

async fn run(guest: Arc<Guest>, container: Arc<Container>) {
    let mut tail = container.log_file.as_deref().map(Tail::new);
    let mut children = guest.subscribe_children();
    let mut next_state = Instant::now();
    let mut check_now = false;
    let mut idle = 0u32;
    loop {
        if let Some(tail) = tail.as_mut() {
            if tail.read(&guest, &container) > 0 {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
            }
            tail.maybe_rotate(&guest, &container).await;
        }
        if check_now || Instant::now() >= next_state {
            next_state = Instant::now() + STATE_EVERY;
            let (g, c) = (Arc::clone(&guest), Arc::clone(&container));
            let state = tokio::task::spawn_blocking(move || g.backend().container_state(&c.handle)).await;
            let exit = match state {
                Ok(Ok(RunState::Exited(info))) => Some(crate::guest::exit_status(&info)),
                Ok(Ok(gone @ RunState::Gone(_))) => match container.status(&gone) {
                    guest_proto::message::ContainerStatus::Exited(exit) => Some(exit),
                    _ => None,
                },
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    tracing::warn!(id = %container.id, error = %crius_sandbox::error_report(&e), "container state");
                    None
                }
                Err(_) => None,
            };
            if let Some(exit) = exit {
                if let Some(tail) = tail.as_mut() {
                    tail.read(&guest, &container);
                }
                tracing::info!(id = %container.id, code = exit.exit_code, "container exited");
                lock(&container.output).exit = Some(exit);
                guest.changed();
                return;
            }
        }
        let delay = match &tail {
            Some(_) if idle < IDLE_POLLS => TAIL_FAST,
            Some(_) => TAIL_SLOW,
            None => STATE_EVERY,
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => check_now = false,
            changed = children.changed() => {
                if changed.is_err() {
                    return;
                }
                check_now = true;
            }
        }
    }
}

/// The reading end of a container's log file.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    /// Bytes read from `file`.
    position: u64,
    entries: EntryReader,
    buf: Vec<u8>,
    failed: bool,
    next_rotation: Instant,
}

impl Tail {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            position: 0,
            entries: EntryReader::new(),
            buf: vec![0; 64 * 1024],
            failed: false,
            next_rotation: Instant::now(),
        }
    }

    /// Reads what was appended since the last call into the container's
    /// output; the number of bytes read.
    fn read(&mut self, guest: &Guest, container: &Container) -> usize {
        match self.read_inner(container) {
            Ok(n) => {
                if n > 0 {
                    guest.changed();
                }
                n
            }
            Err(e) => {
                if !self.failed {
                    tracing::warn!(id = %container.id, path = %self.path.display(), error = %e, "read the container's log");
                }
                self.failed = true;
                0
            }
        }
    }

    fn read_inner(&mut self, container: &Container) -> io::Result<usize> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(file) => {
                    self.file = Some(file);
                    self.position = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.file.as_mut() else { return Ok(0) };
        let mut total = 0;
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n;
            self.position += n as u64;
            let mut output = lock(&container.output);
            self.entries.push(&self.buf[..n], |r| {
                if let Err(e) = output.buffer.push(r.stream, r.timestamp_ns, r.partial, r.data) {
                    tracing::warn!(id = %container.id, error = %e, "output record");
                }
            });
        }
    }

    /// Rotates the file once it is read to its end and large.
    async fn maybe_rotate(&mut self, guest: &Arc<Guest>, container: &Arc<Container>) {
        if self.position < ROTATE_AT || self.file.is_none() || Instant::now() < self.next_rotation {
            return;
        }
        let rotating = rotating_path(&self.path);
        if let Err(e) = std::fs::rename(&self.path, &rotating) {
            tracing::warn!(id = %container.id, error = %e, "rotate the container's log");
            self.next_rotation = Instant::now() + ROTATE_BACKOFF;
            return;
        }
        let (g, c) = (Arc::clone(guest), Arc::clone(container));
        let reopened = tokio::task::spawn_blocking(move || g.backend().reopen_log(&c.handle)).await;
        let reopened = matches!(reopened, Ok(Ok(())));
        if !reopened && !self.path.exists() && std::fs::rename(&rotating, &self.path).is_ok() {
            // The monitor still writes the old file (or has exited): go on reading it.
            tracing::debug!(id = %container.id, "log not rotated: the monitor did not reopen it");
            self.next_rotation = Instant::now() + ROTATE_BACKOFF;
            return;
        }
        tracing::debug!(id = %container.id, bytes = self.position, "log rotated");
        // The monitor writes the new file: the old one ends here.
        self.read(guest, container);
        if self.entries.pending() {
            tracing::warn!(id = %container.id, "the rotated log ended inside an entry");
        }
        self.entries = EntryReader::new();
        self.file = None;
        let _ = std::fs::remove_file(&rotating);
    }
}
