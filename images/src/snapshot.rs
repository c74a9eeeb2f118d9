//! Containers' writable layers: a per-container upper and work directory
//! that a runtime mounts (overlayfs) over the image's read-only layers. The
//! mounting itself is the runtime's (`crius_sandbox::mounts::overlay`).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Why a snapshot could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The key is not a safe directory name.
    #[error("invalid snapshot key {0:?}: use 1 to 128 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidKey(String),
    /// A filesystem step failed.
    #[error("{operation} {path}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A container's writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Where the container's writes go.
    pub upper: PathBuf,
    /// Overlay's scratch directory, beside `upper`.
    pub work: PathBuf,
}

/// Per-container writable layers under one directory.
#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating) the store.
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        fs::create_dir_all(root).map_err(|source| io("create", root, source))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Where the writable layer `key` is (or will be); makes nothing.
    pub fn locate(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        let dir = self.dir(key)?;
        Ok(Snapshot { upper: dir.join("upper"), work: dir.join("work") })
    }

    /// Makes the writable layer `key` (a container's): its upper and work
    /// directories, which a runtime mounts over the image's layers.
    /// Preparing an existing key reuses its upper directory.
    pub fn prepare(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        let snapshot = self.locate(key)?;
        for path in [&snapshot.upper, &snapshot.work] {
            fs::create_dir_all(path).map_err(|source| io("create", path, source))?;
        }
        Ok(snapshot)
    }

    /// The writable directory of a snapshot (its size is the container's
    /// writable-layer usage).
    pub fn upper_dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        Ok(self.dir(key)?.join("upper"))
    }

    /// Bytes and inodes of a snapshot's writable layer (a container's
    /// writable-layer usage); a missing snapshot uses nothing.
    pub fn usage(&self, key: &str) -> Result<crate::store::FsUsage, SnapshotError> {
        let upper = self.upper_dir(key)?;
        crate::store::du(&upper).map_err(|source| io("measure", &upper, source))
    }

    /// Removes a snapshot's directories (unmount it first). Missing is fine.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let dir = self.dir(key)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io("remove", &dir, source)),
        }
    }

    /// Keys of every snapshot.
    pub fn list(&self) -> Result<Vec<String>, SnapshotError> {
        let mut keys = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|source| io("list", &self.root, source))? {
            let entry = entry.map_err(|source| io("list", &self.root, source))?;
            keys.push(entry.file_name().to_string_lossy().into_owned());
        }
        keys.sort();
        Ok(keys)
    }

    fn dir(&self, key: &str) -> Result<PathBuf, SnapshotError> {
        let valid = !key.is_empty()
            && key.len() <= 128
            && !key.starts_with('.')
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid { Ok(self.root.join(key)) } else { Err(SnapshotError::InvalidKey(key.to_owned())) }
    }
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io { operation, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests;
