//! Leases: what each pull in progress holds and what it added, so that a
//! pull that fails (or is cancelled) removes the blobs and layers it added,
//! and nothing that another pull or a pulled image needs. containerd's
//! leases play this part for its garbage collector.
//!
//! A pull takes a [`Lease`] and holds each blob and layer ([`Lease::hold`])
//! before it looks whether the store has it; it marks what it then stores
//! ([`Lease::added`]). When the pull succeeds, [`Lease::keep`] marks every
//! resource it held as kept: the image about to be recorded needs them, and
//! from then on only garbage collection removes them. When a lease is
//! dropped without `keep`, each resource it added is removed unless a
//! successful pull kept it; one that another lease still holds is removed
//! when the last holder lets go without keeping it. The check and the
//! removal happen under one lock, so a pull that holds a resource afterwards
//! finds it missing and fetches it again; the removal itself runs on a
//! blocking thread.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::content::ContentStore;
use crate::digest::Digest;
use crate::layers::{self, LayerStore};

/// Something a pull stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Resource {
    /// A blob of the content store.
    Blob(Digest),
    /// An unpacked layer, by chain id.
    Layer(Digest),
}

/// Every lease of one image store.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Leases holding each resource.
    holders: HashMap<Resource, usize>,
    /// Resources a successful pull used and garbage collection has not
    /// removed since.
    kept: HashSet<Resource>,
    /// Resources a failed pull added while others held them: removed when
    /// the last holder lets go, unless kept.
    orphans: HashSet<Resource>,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a pull in progress holds `resource` (garbage collection
    /// leaves it).
    pub(crate) fn is_held(&self, resource: &Resource) -> bool {
        self.lock().holders.contains_key(resource)
    }

    /// Garbage collection removed `resource`.
    pub(crate) fn forget(&self, resource: &Resource) {
        self.lock().kept.remove(resource);
    }
}

/// The resources of one pull (its layers are fetched concurrently, so the
/// lease is shared by reference).
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Arc<Leases>,
    content: Arc<ContentStore>,
    layers: Arc<LayerStore>,
    own: Mutex<Own>,
}

#[derive(Debug, Default)]
struct Own {
    held: HashSet<Resource>,
    added: Vec<Resource>,
    kept: bool,
}

impl Lease {
    pub(crate) fn new(leases: Arc<Leases>, content: Arc<ContentStore>, layers: Arc<LayerStore>) -> Self {
        Self { leases, content, layers, own: Mutex::default() }
    }

    fn own(&self) -> MutexGuard<'_, Own> {
        self.own.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `resource` until the lease ends: no failed pull removes it meanwhile.
    pub(crate) fn hold(&self, resource: Resource) {
        if self.own().held.insert(resource.clone()) {
            *self.leases.lock().holders.entry(resource).or_default() += 1;
        }
    }

    /// This pull stored `resource` (it holds it already).
    pub(crate) fn added(&self, resource: Resource) {
        self.own().added.push(resource);
    }

    /// The pull succeeded: what it held stays.
    pub(crate) fn keep(self) {
        let mut own = self.own();
        own.kept = true;
        let mut state = self.leases.lock();
        for resource in &own.held {
            state.orphans.remove(resource);
            state.kept.insert(resource.clone());
        }
    }

    /// Ends a lease that is not kept: removes what it added, on a blocking
    /// thread, before it returns (dropping the lease does the same in the
    /// background).
    pub(crate) async fn release(self) {
        let own = std::mem::take(&mut *self.own());
        let (leases, content, layers) = (Arc::clone(&self.leases), Arc::clone(&self.content), Arc::clone(&self.layers));
        let held = own.held.into_iter().collect();
        let cleanup = move || Self::end(&leases, &content, &layers, held, own.added);
        if let Err(e) = tokio::task::spawn_blocking(cleanup).await {
            tracing::warn!(error = %e, "cleanup of a failed pull failed");
        }
    }

    /// Releases the holds; for a lease that was not kept, removes what it
    /// added and nobody else needs. Blocking (unlink, rename; trees are
    /// deleted after the lock is released).
    fn end(leases: &Leases, content: &ContentStore, layers: &LayerStore, held: Vec<Resource>, added: Vec<Resource>) {
        let mut trees = Vec::new();
        {
            let mut state = leases.lock();
            let mut candidates = Vec::new();
            for resource in held {
                if let Some(count) = state.holders.get_mut(&resource) {
                    *count -= 1;
                    if *count == 0 {
                        state.holders.remove(&resource);
                        if state.orphans.remove(&resource) {
                            candidates.push(resource);
                        }
                    }
                }
            }
            candidates.extend(added);
            for resource in candidates {
                if state.kept.contains(&resource) {
                    continue;
                }
                if state.holders.contains_key(&resource) {
                    state.orphans.insert(resource);
                    continue;
                }
                let removed = match &resource {
                    Resource::Blob(digest) => content.delete(digest).map_err(|e| e.to_string()),
                    Resource::Layer(chain_id) => {
                        layers.detach(chain_id).map(|tree| trees.extend(tree)).map_err(|e| e.to_string())
                    }
                };
                match removed {
                    Ok(()) => tracing::debug!(?resource, "removed what a failed pull added"),
                    Err(error) => tracing::warn!(?resource, %error, "cannot remove what a failed pull added"),
                }
            }
        }
        for tree in trees {
            if let Err(e) = layers::remove_tree(&tree) {
                tracing::warn!(path = %tree.display(), error = %e, "cannot remove a failed pull's layer");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let own = std::mem::take(&mut *self.own());
        if own.held.is_empty() && own.added.is_empty() {
            return;
        }
        let held: Vec<Resource> = own.held.into_iter().collect();
        if own.kept {
            // Nothing to remove: kept resources left the orphans in `keep`.
            Self::end(&self.leases, &self.content, &self.layers, held, Vec::new());
            return;
        }
        let added = own.added;
        let (leases, content, layers) = (Arc::clone(&self.leases), Arc::clone(&self.content), Arc::clone(&self.layers));
        let cleanup = move || Self::end(&leases, &content, &layers, held, added);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(cleanup)),
            Err(_) => cleanup(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        leases: Arc<Leases>,
        content: Arc<ContentStore>,
        layers: Arc<LayerStore>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("content"));
            let layers = Arc::new(LayerStore::open(&dir.path().join("layers")).expect("layers"));
            Self { _dir: dir, leases: Arc::default(), content, layers }
        }

        fn lease(&self) -> Lease {
            Lease::new(Arc::clone(&self.leases), Arc::clone(&self.content), Arc::clone(&self.layers))
        }

        /// Stores a blob under `lease` as a pull does: hold, then write.
        fn blob(&self, lease: &Lease, data: &[u8]) -> Digest {
            let digest = Digest::of(data);
            lease.hold(Resource::Blob(digest.clone()));
            if self.content.write_bytes(&digest, data).expect("write") {
                lease.added(Resource::Blob(digest.clone()));
            }
            digest
        }

        fn layer(&self, lease: &Lease, name: &str) -> Digest {
            let chain = Digest::of(name.as_bytes());
            lease.hold(Resource::Layer(chain.clone()));
            let (_, unpacked) = self
                .layers
                .add(&chain, &chain, |_| Ok::<_, String>(layers::Unpacked { diff_id: chain.clone(), size: 0 }))
                .expect("add");
            if unpacked {
                lease.added(Resource::Layer(chain.clone()));
            }
            chain
        }
    }

    #[test]
    fn a_failed_pull_removes_what_it_added_and_nothing_else() {
        let f = Fixture::new();
        let before = f.lease();
        let existing = f.blob(&before, b"from an earlier image");
        before.keep();
        let failed = f.lease();
        f.blob(&failed, b"from an earlier image");
        let own = f.blob(&failed, b"only the failed pull");
        let layer = f.layer(&failed, "layer");
        drop(failed);
        assert!(f.content.contains(&existing), "a blob that was there stays");
        assert!(!f.content.contains(&own), "the failed pull's blob is gone");
        assert!(!f.layers.contains(&layer), "the failed pull's layer is gone");
        assert!(f.layers.list().expect("list").is_empty());
        assert!(!f.leases.is_held(&Resource::Blob(existing)), "holds released");
    }

    #[test]
    fn what_another_pull_holds_or_kept_stays() {
        let f = Fixture::new();
        // Another pull holds the blob the failed one added.
        let (failed, other) = (f.lease(), f.lease());
        let shared = f.blob(&failed, b"shared");
        f.blob(&other, b"shared");
        drop(failed);
        assert!(f.content.contains(&shared), "held by the other pull");
        drop(other);
        assert!(!f.content.contains(&shared), "removed when its last holder failed too");

        // The other pull succeeded before the one that added it failed.
        let (failed, other) = (f.lease(), f.lease());
        let layer = f.layer(&failed, "shared layer");
        f.layer(&other, "shared layer");
        other.keep();
        drop(failed);
        assert!(f.layers.contains(&layer), "kept by a successful pull");

        // Once garbage collection removed it, it is no longer kept.
        f.layers.remove(&layer).expect("gc");
        f.leases.forget(&Resource::Layer(layer.clone()));
        let failed = f.lease();
        f.layer(&failed, "shared layer");
        drop(failed);
        assert!(!f.layers.contains(&layer));
    }
}
