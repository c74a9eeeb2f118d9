//! The blocking half of a download: writes and hashes the chunks that the
//! async half receives, on a thread of the blocking pool, so that disk
//! latency and hashing never stall a runtime thread. The queue between them
//! is short: a download holds at most [`QUEUE`] chunks in memory (hyper
//! yields chunks of at most a few hundred KiB).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ContentError, io};
use crate::digest::{Digest, Hasher};
use crate::space::{CHECK_EVERY, SpaceReserve};

/// Chunks queued between the network and the disk.
const QUEUE: usize = 16;

type Written = Result<(File, Hasher), ContentError>;

/// A running writer thread.
#[derive(Debug)]
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Written>>,
}

impl Writer {
    /// Starts writing after what `file` holds (`hasher` has hashed it), or
    /// from byte 0 when `restart`. Every [`CHECK_EVERY`] bytes the free space
    /// of the filesystem is checked against `reserve`.
    pub(super) fn start(
        mut file: File,
        mut hasher: Hasher,
        restart: bool,
        ingest: PathBuf,
        digest: Digest,
        reserve: SpaceReserve,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let task = tokio::task::spawn_blocking(move || {
            if restart {
                truncate(&mut file, &ingest)?;
                hasher = Hasher::new();
            }
            let mut next_check = hasher.len().saturating_add(CHECK_EVERY);
            while let Some(chunk) = rx.blocking_recv() {
                if hasher.len() >= next_check {
                    reserve
                        .check_fd(&file, CHECK_EVERY)
                        .map_err(|source| ContentError::LowSpace { digest: digest.clone(), source })?;
                    next_check = hasher.len().saturating_add(CHECK_EVERY);
                }
                file.write_all(&chunk).map_err(|source| io("write", &ingest, source))?;
                hasher.update(&chunk);
            }
            Ok((file, hasher))
        });
        Self { tx: Some(tx), task: Some(task) }
    }

    /// Queues a chunk; fails with the writer's error once it stopped.
    pub(super) async fn send(&mut self, chunk: Bytes) -> Result<(), ContentError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        match self.join().await {
            Err(e) => Err(e),
            Ok(_) => Err(ContentError::Task("the blob writer stopped early".into())),
        }
    }

    /// Waits for every queued chunk to be written: the file and the hash
    /// of all it holds.
    pub(super) async fn finish(mut self) -> Written {
        self.join().await
    }

    async fn join(&mut self) -> Written {
        self.tx = None;
        match self.task.take() {
            Some(task) => task.await.map_err(|e| ContentError::Task(e.to_string()))?,
            None => Err(ContentError::Task("the blob writer already finished".into())),
        }
    }
}

/// Empties a partial download.
pub(super) fn truncate(file: &mut File, ingest: &Path) -> Result<(), ContentError> {
    file.set_len(0).map_err(|source| io("truncate", ingest, source))?;
    file.seek(SeekFrom::Start(0)).map_err(|source| io("seek", ingest, source))?;
    Ok(())
}
