//! Which names point at which image: the agent's image records.
//!
//! The image store (`crius-images`) keeps content by digest; this index keeps
//! the CRI view on top of it in the state store: an image id (config digest)
//! with its tags (`docker.io/library/busybox:latest`) and repo digests
//! (`docker.io/library/busybox@sha256:…`). A tag points at one image: pulling
//! it again moves it. Garbage collection keeps every blob and layer an image
//! record or a container still names.

use std::collections::HashSet;

use crius_images::reference::Reference;

use crate::store::{ContainerRecord, ImageRecord, StateStore, StoreError};

/// What a pull produced, as the index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// Image id: the config digest.
    pub id: String,
    /// The platform manifest's digest.
    pub manifest_digest: String,
    /// The digest the reference resolved to (an index's, for multi-platform images).
    pub resolved_digest: String,
    /// Uncompressed size.
    pub size: u64,
    /// Layer chain ids, bottom first.
    pub layers: Vec<String>,
    /// Blobs to keep.
    pub blobs: Vec<String>,
    /// Config `User`.
    pub user: String,
}

/// Records a pull of `reference`: the image gains the tag (taken from any
/// image that had it) and the repo digest `name@manifest digest`.
pub fn record_pull(
    store: &StateStore,
    reference: &Reference,
    pulled: &PulledImage,
    pinned: bool,
) -> Result<ImageRecord, StoreError> {
    let tag = reference.tagged();
    // Both the digest the name resolved to (what a user pins, an index for
    // multi-platform images) and the platform manifest's find the image.
    let repo_digests = [
        format!("{}@{}", reference.name(), pulled.resolved_digest),
        format!("{}@{}", reference.name(), pulled.manifest_digest),
    ];
    // One transaction: two pulls of tags of one image must not lose a tag.
    store.transact(|txn| {
        let mut record = txn.get::<ImageRecord>(&pulled.id)?.unwrap_or_else(|| ImageRecord {
            id: pulled.id.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: 0,
            pinned: false,
            manifest_digest: String::new(),
            layers: Vec::new(),
            blobs: Vec::new(),
            user: String::new(),
        });
        if let Some(tag) = &tag {
            for mut other in txn.list::<ImageRecord>()? {
                if other.id != pulled.id && other.repo_tags.contains(tag) {
                    other.repo_tags.retain(|t| t != tag);
                    txn.put(&other)?;
                }
            }
            push_unique(&mut record.repo_tags, tag);
        }
        for repo_digest in &repo_digests {
            push_unique(&mut record.repo_digests, repo_digest);
        }
        record.size = pulled.size;
        record.manifest_digest.clone_from(&pulled.manifest_digest);
        record.layers.clone_from(&pulled.layers);
        for blob in &pulled.blobs {
            push_unique(&mut record.blobs, blob);
        }
        record.user.clone_from(&pulled.user);
        record.pinned |= pinned;
        txn.put(&record)?;
        Ok::<_, StoreError>(record)
    })
}

/// Finds an image by id (`sha256:<hex>`, bare hex, or an unambiguous hex
/// prefix of at least 12 characters), tag or digest reference.
pub fn find(store: &StateStore, query: &str) -> Result<Option<ImageRecord>, StoreError> {
    let query = query.trim();
    if query.is_empty() {
        return Ok(None);
    }
    let images = store.list::<ImageRecord>()?;
    if let Some(hex) = id_hex(query) {
        let matches: Vec<&ImageRecord> =
            images.iter().filter(|i| i.id.strip_prefix("sha256:").is_some_and(|h| h.starts_with(hex))).collect();
        if let [only] = matches.as_slice()
            && (hex.len() == 64 || hex.len() >= 12)
        {
            return Ok(Some((*only).clone()));
        }
        if hex.len() == 64 || query.starts_with("sha256:") {
            return Ok(None);
        }
    }
    let Ok(reference) = query.parse::<Reference>() else { return Ok(None) };
    let found = match &reference.digest {
        Some(digest) => {
            let wanted = format!("{}@{digest}", reference.name());
            images.into_iter().find(|i| i.repo_digests.contains(&wanted) || i.id == digest.to_string())
        }
        None => {
            let wanted = reference.tagged();
            images.into_iter().find(|i| wanted.as_ref().is_some_and(|t| i.repo_tags.contains(t)))
        }
    };
    Ok(found)
}

/// `sha256:<hex>` or bare lowercase hex: the hex part.
fn id_hex(query: &str) -> Option<&str> {
    let hex = query.strip_prefix("sha256:").unwrap_or(query);
    let is_hex =
        !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    is_hex.then_some(hex)
}

/// Everything garbage collection must keep: blobs and layers of every image
/// record, and the layers of every container.
pub fn keep_sets(store: &StateStore) -> Result<(HashSet<String>, HashSet<String>), StoreError> {
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for image in store.list::<ImageRecord>()? {
        blobs.extend(image.blobs);
        layers.extend(image.layers);
    }
    for container in store.list::<ContainerRecord>()? {
        layers.extend(container.image_layers);
    }
    Ok((blobs, layers))
}

/// The uid or user name an image runs as by default, from its config `User`
/// (`1002`, `www-data`, `1003:1004`, `www-data:1004`): a numeric user gives a
/// uid, a name gives a username.
pub fn image_user(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

fn push_unique(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const M: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn pulled(id: &str) -> PulledImage {
        PulledImage {
            id: id.into(),
            manifest_digest: M.into(),
            resolved_digest: M.into(),
            size: 42,
            layers: vec!["sha256:l1".into()],
            blobs: vec![M.into(), id.into()],
            user: "www-data:1004".into(),
        }
    }

    fn reference(text: &str) -> Reference {
        text.parse().expect("reference")
    }

    #[test]
    fn a_pull_records_tag_and_digest_and_a_repull_moves_the_tag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("store");
        let first = record_pull(&store, &reference("busybox"), &pulled(A), false).expect("pull");
        assert_eq!(first.repo_tags, ["docker.io/library/busybox:latest"]);
        assert_eq!(first.repo_digests, [format!("docker.io/library/busybox@{M}")]);

        record_pull(&store, &reference("busybox:latest"), &pulled(B), false).expect("pull again");
        let old = store.get::<ImageRecord>(A).expect("get").expect("old image kept");
        assert!(old.repo_tags.is_empty(), "the tag moved");
        let new = find(&store, "busybox").expect("find").expect("found");
        assert_eq!(new.id, B);
    }

    #[test]
    fn concurrent_pulls_of_tags_of_one_image_keep_every_tag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("store");
        std::thread::scope(|scope| {
            for tag in 0..8 {
                let store = &store;
                scope.spawn(move || {
                    record_pull(store, &reference(&format!("gcr.io/x/y:{tag}")), &pulled(A), false).expect("pull")
                });
            }
        });
        let image = store.get::<ImageRecord>(A).expect("get").expect("image");
        assert_eq!(image.repo_tags.len(), 8, "a tag was lost: {:?}", image.repo_tags);
    }

    #[test]
    fn find_by_id_prefix_tag_and_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("store");
        record_pull(&store, &reference("gcr.io/x/y:1"), &pulled(A), false).expect("pull");
        record_pull(&store, &reference("gcr.io/x/y:2"), &pulled(A), false).expect("pull");
        for query in [A, &A[7..], &A[..19], "gcr.io/x/y:1", "gcr.io/x/y:2", &format!("gcr.io/x/y@{M}")] {
            assert_eq!(find(&store, query).expect("find").map(|i| i.id), Some(A.to_owned()), "{query}");
        }
        for query in ["", "gcr.io/x/y:3", "sha256:abc", B, "aaaa", "UPPER/case"] {
            assert!(find(&store, query).expect("find").is_none(), "{query}");
        }
        let image = find(&store, "gcr.io/x/y:1").expect("find").expect("found");
        assert_eq!(image.repo_tags, ["gcr.io/x/y:1", "gcr.io/x/y:2"]);
    }

    #[test]
    fn keep_sets_cover_images_and_containers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("store");
        record_pull(&store, &reference("busybox"), &pulled(A), false).expect("pull");
        let (blobs, layers) = keep_sets(&store).expect("keep");
        assert!(blobs.contains(M) && blobs.contains(A));
        assert!(layers.contains("sha256:l1"));
    }

    #[test]
    fn image_users() {
        assert_eq!(image_user(""), (None, String::new()));
        assert_eq!(image_user("1002"), (Some(1002), String::new()));
        assert_eq!(image_user("1003:1004"), (Some(1003), String::new()));
        assert_eq!(image_user("www-data"), (None, "www-data".to_owned()));
        assert_eq!(image_user("www-data:1004"), (None, "www-data".to_owned()));
    }
}
