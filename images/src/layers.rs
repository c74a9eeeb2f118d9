//! The layer store: each image layer unpacked once, in `<root>/<chain id>/fs`,
//! and shared by every image whose layer stack reaches that chain id.
//!
//! A layer is unpacked into a temporary directory and renamed into place only
//! after its diff id was checked against the image config, so a layer that is
//! visible is always complete. Removal renames first, then deletes, for the
//! same reason. Leftovers of a crash are removed when the store opens.

use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

const TMP_PREFIX: &str = "tmp-";
const TRASH_PREFIX: &str = "trash-";
const META: &str = "meta.json";

/// Why a layer could not be stored or removed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
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
    /// Unpacking failed.
    #[error("unpack layer {chain_id}")]
    Unpack {
        /// The layer.
        chain_id: Digest,
        /// The unpacker's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The layer's content is not what the image config says.
    #[error("layer {chain_id}: uncompressed content hashes to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// The layer.
        chain_id: Digest,
        /// diff id from the config.
        expected: Digest,
        /// diff id of what was unpacked.
        actual: Digest,
    },
    /// A stored layer's metadata is unreadable.
    #[error("layer metadata {path} is corrupt")]
    Meta {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// What the store records about a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Chain id (the key).
    pub chain_id: Digest,
    /// Digest of the uncompressed layer tar.
    pub diff_id: Digest,
    /// Uncompressed size in bytes.
    pub size: u64,
}

/// What an unpacker reports back.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// Digest of the uncompressed stream.
    pub diff_id: Digest,
    /// Uncompressed bytes.
    pub size: u64,
}

/// The chain ids of a layer stack, bottom first: `chain(0) = diff(0)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))` (OCI image spec).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// The layer store.
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
    adding: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    next_tmp: AtomicU64,
}

impl LayerStore {
    /// Opens (creating) the store and removes what a crash left half-made.
    pub fn open(root: &Path) -> Result<Self, LayerError> {
        fs::create_dir_all(root).map_err(|source| io("create", root, source))?;
        let store = Self { root: root.to_path_buf(), adding: Mutex::new(HashMap::new()), next_tmp: AtomicU64::new(0) };
        for entry in fs::read_dir(root).map_err(|source| io("list", root, source))? {
            let entry = entry.map_err(|source| io("list", root, source))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let complete = path.join(META).is_file();
            if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) || !complete {
                tracing::info!(path = %path.display(), "removing incomplete layer");
                remove_tree(&path)?;
            }
        }
        Ok(store)
    }

    /// The unpacked filesystem of a layer (an overlay lowerdir).
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex()).join("fs")
    }

    /// Whether the layer is stored (complete).
    pub fn contains(&self, chain_id: &Digest) -> bool {
        self.root.join(chain_id.hex()).join(META).is_file()
    }

    /// The stored layer's metadata.
    pub fn info(&self, chain_id: &Digest) -> Result<Option<LayerInfo>, LayerError> {
        let path = self.root.join(chain_id.hex()).join(META);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io("read", &path, source)),
        };
        serde_json::from_slice(&text).map(Some).map_err(|source| LayerError::Meta { path, source })
    }

    /// Unpacks a layer unless it is stored. `unpack(dir)` fills the empty
    /// directory `dir`; its diff id must equal `diff_id`. Blocking. Also
    /// says whether this call unpacked it (it was not stored before).
    pub fn add<F, E>(&self, chain_id: &Digest, diff_id: &Digest, unpack: F) -> Result<(LayerInfo, bool), LayerError>
    where
        F: FnOnce(&Path) -> Result<Unpacked, E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let lock = {
            let mut map = self.adding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(chain_id.clone()).or_default())
        };
        let _guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = match self.info(chain_id)? {
            Some(info) => Ok((info, false)),
            None => self.unpack_new(chain_id, diff_id, unpack).map(|info| (info, true)),
        };
        let mut map = self.adding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(chain_id).is_some_and(|l| Arc::strong_count(l) <= 2) {
            map.remove(chain_id);
        }
        result
    }

    fn unpack_new<F, E>(&self, chain_id: &Digest, diff_id: &Digest, unpack: F) -> Result<LayerInfo, LayerError>
    where
        F: FnOnce(&Path) -> Result<Unpacked, E>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(format!("{TMP_PREFIX}{}-{}-{n}", chain_id.hex(), std::process::id()));
        let fs_dir = tmp.join("fs");
        fs::create_dir_all(&fs_dir).map_err(|source| io("create", &fs_dir, source))?;
        let outcome = (|| {
            let unpacked =
                unpack(&fs_dir).map_err(|e| LayerError::Unpack { chain_id: chain_id.clone(), source: e.into() })?;
            if &unpacked.diff_id != diff_id {
                return Err(LayerError::DiffIdMismatch {
                    chain_id: chain_id.clone(),
                    expected: diff_id.clone(),
                    actual: unpacked.diff_id,
                });
            }
            let info = LayerInfo { chain_id: chain_id.clone(), diff_id: diff_id.clone(), size: unpacked.size };
            let meta = tmp.join(META);
            let text = serde_json::to_vec(&info).map_err(|source| LayerError::Meta { path: meta.clone(), source })?;
            fs::write(&meta, text).map_err(|source| io("write", &meta, source))?;
            sync_tree_root(&tmp)?;
            let target = self.root.join(chain_id.hex());
            fs::rename(&tmp, &target).map_err(|source| io("rename into place", &target, source))?;
            Ok(info)
        })();
        if outcome.is_err() {
            let _ = remove_tree(&tmp);
        }
        outcome
    }

    /// Removes a layer; removing a missing layer is fine.
    pub fn remove(&self, chain_id: &Digest) -> Result<(), LayerError> {
        match self.detach(chain_id)? {
            Some(trash) => remove_tree(&trash),
            None => Ok(()),
        }
    }

    /// Takes a layer out of the store at once (a rename) and returns where
    /// its tree now is, for [`remove_tree`]; `None` when it is not stored.
    pub(crate) fn detach(&self, chain_id: &Digest) -> Result<Option<PathBuf>, LayerError> {
        let path = self.root.join(chain_id.hex());
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let trash = self.root.join(format!("{TRASH_PREFIX}{}-{}-{n}", chain_id.hex(), std::process::id()));
        match fs::rename(&path, &trash) {
            Ok(()) => Ok(Some(trash)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io("remove", &path, source)),
        }
    }

    /// Every stored layer.
    pub fn list(&self) -> Result<Vec<LayerInfo>, LayerError> {
        let mut layers = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|source| io("list", &self.root, source))? {
            let entry = entry.map_err(|source| io("list", &self.root, source))?;
            let Ok(chain_id) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>() else {
                continue;
            };
            if let Some(info) = self.info(&chain_id)? {
                layers.push(info);
            }
        }
        layers.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        Ok(layers)
    }
}

/// Makes the layer's metadata durable before it becomes visible. File data
/// of the unpacked tree is flushed by the filesystem's own ordering on
/// rename (ext4/xfs `auto_da_alloc`); the layer is re-verifiable from its blob.
fn sync_tree_root(dir: &Path) -> Result<(), LayerError> {
    for path in [dir.join(META), dir.to_path_buf()] {
        fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|source| io("fsync", &path, source))?;
    }
    Ok(())
}

/// Deletes a directory tree; a missing one is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), LayerError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("remove", path, source)),
    }
}

fn io(operation: &'static str, path: &Path, source: std::io::Error) -> LayerError {
    LayerError::Io { operation, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(text: &str) -> Digest {
        Digest::of(text.as_bytes())
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let (a, b) = (digest("a"), digest("b"));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn a_layer_is_unpacked_once_and_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LayerStore::open(dir.path()).expect("open");
        let (chain, diff) = (digest("chain"), digest("diff"));
        let mut calls = 0;
        for round in 0..2 {
            let (info, unpacked) = store
                .add(&chain, &diff, |fs_dir| {
                    calls += 1;
                    fs::write(fs_dir.join("file"), b"x").map_err(|e| e.to_string())?;
                    Ok::<_, String>(Unpacked { diff_id: diff.clone(), size: 1 })
                })
                .expect("add");
            assert_eq!(info.size, 1);
            assert_eq!(unpacked, round == 0, "only the first add unpacks");
        }
        assert_eq!(calls, 1);
        assert_eq!(fs::read(store.layer_dir(&chain).join("file")).expect("read"), b"x");
        assert_eq!(store.list().expect("list").len(), 1);
    }

    #[test]
    fn a_failed_or_lying_unpack_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LayerStore::open(dir.path()).expect("open");
        let (chain, diff) = (digest("chain"), digest("diff"));
        let err = store
            .add(&chain, &diff, |fs_dir| {
                fs::write(fs_dir.join("half"), b"x").map_err(|e| e.to_string())?;
                Err::<Unpacked, _>("entry ../x escapes the layer".to_owned())
            })
            .expect_err("unpack failed");
        let text = crate::registry::error::error_chain(&err);
        assert!(text.contains("escapes"), "{text}");
        let err = store
            .add(&chain, &diff, |_| Ok::<_, String>(Unpacked { diff_id: digest("other"), size: 0 }))
            .expect_err("diff id lies");
        assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");
        assert!(!store.contains(&chain));
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0, "no temp dirs left");
    }

    #[test]
    fn crash_leftovers_are_removed_on_open_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("tmp-abc/fs")).expect("tmp");
        fs::create_dir_all(dir.path().join(digest("x").hex()).join("fs")).expect("no meta");
        let store = LayerStore::open(dir.path()).expect("open");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
        let (chain, diff) = (digest("chain"), digest("diff"));
        store.add(&chain, &diff, |_| Ok::<_, String>(Unpacked { diff_id: diff.clone(), size: 0 })).expect("add");
        store.remove(&chain).expect("remove");
        store.remove(&chain).expect("remove again");
        assert!(!store.contains(&chain));
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }
}
