//! Doing work inside another network namespace without touching the rest of
//! the process: a short-lived thread enters the namespace (`setns` changes
//! only the calling thread), does the work and ends. Sockets opened there stay
//! bound to that namespace, and processes spawned from there start in it.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::NetError;

fn netns_err(path: &Path, message: impl std::fmt::Display) -> NetError {
    NetError::Netns { path: path.to_owned(), message: message.to_string() }
}

/// Runs `work` on a thread inside the network namespace `path`; `None` runs
/// it on a thread in the caller's namespace.
pub fn run_in<T: Send>(path: Option<&Path>, work: impl FnOnce() -> T + Send) -> Result<T, NetError> {
    let Some(path) = path else { return Ok(work()) };
    let file = File::open(path).map_err(|e| netns_err(path, format_args!("open: {e}")))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(path, format_args!("setns: {e}")))?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| Err(netns_err(path, "the worker thread panicked")))
    })
}

/// A network namespace made for a test or a tool and removed on drop: the
/// namespace file is bind-mounted at `path`.
#[derive(Debug)]
pub struct ScratchNetns {
    path: PathBuf,
}

impl ScratchNetns {
    /// Makes a new, empty network namespace pinned at `path` (a new file).
    pub fn create(path: &Path) -> Result<Self, NetError> {
        File::create(path).map_err(|e| netns_err(path, format_args!("create: {e}")))?;
        let pinned = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(path, format_args!("unshare: {e}")))?;
                    mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                        .map_err(|e| netns_err(path, format_args!("bind mount: {e}")))
                })
                .join()
                .unwrap_or_else(|_| Err(netns_err(path, "the worker thread panicked")))
        });
        if let Err(e) = pinned {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(Self { path: path.to_owned() })
    }

    /// The namespace file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}
