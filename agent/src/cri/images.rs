//! The ImageService RPCs: PullImage, ImageStatus, ListImages, RemoveImage,
//! ImageFsInfo.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use cri_api::v1::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoResponse, ImageSpec, ImageStatusRequest,
    ImageStatusResponse, Int64Value, ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse,
    RemoveImageRequest, RemoveImageResponse, UInt64Value,
};
use crius_images::digest::Digest;
use crius_images::reference::Reference;
use crius_images::registry::Credentials;
use crius_images::store::{FsUsage, Pulled};

use super::AgentState;
use crate::error::AgentError;
use crate::image_index::{self, PulledImage};
use crate::store::ImageRecord;

/// Pulls an image (unless every blob is present already) and records its name.
pub async fn pull_image(
    state: std::sync::Arc<AgentState>,
    request: PullImageRequest,
) -> Result<PullImageResponse, AgentError> {
    let spec = request.image.unwrap_or_default();
    let reference = parse_reference("image.image", &spec.image)?;
    let credentials = credentials(request.auth.as_ref())?;
    let _no_gc = state.image_gc.read().await;
    let pulled = state.images.pull(&reference, credentials).await?;
    let pinned = state.config.images.pinned_images.iter().any(|p| p.parse::<Reference>().is_ok_and(|p| p == reference));
    // The record's commit syncs the store: on a blocking thread.
    let pulled = pulled_image(&pulled);
    let recorded = std::sync::Arc::clone(&state);
    let reference_for_record = reference.clone();
    let record = tokio::task::spawn_blocking(move || {
        image_index::record_pull(&recorded.store, &reference_for_record, &pulled, pinned)
    })
    .await
    .map_err(|e| AgentError::Runtime(format!("record the pull: {e}")))??;
    tracing::info!(image = %reference, id = %record.id, size = record.size, "image pulled");
    Ok(PullImageResponse { image_ref: record.id })
}

/// Describes one image; an unknown image is not an error (CRI: `image` unset).
pub fn image_status(state: &AgentState, request: ImageStatusRequest) -> Result<ImageStatusResponse, AgentError> {
    let query = request.image.map(|s| s.image).unwrap_or_default();
    if query.trim().is_empty() {
        return Err(AgentError::InvalidArgument { field: "image.image", reason: "empty image reference".into() });
    }
    let Some(record) = image_index::find(&state.store, &query)? else {
        return Ok(ImageStatusResponse { image: None, info: HashMap::new() });
    };
    let mut info = HashMap::new();
    if request.verbose {
        let config = record.id.parse::<Digest>().ok().and_then(|id| state.images.config_json(&id).ok());
        let config: serde_json::Value =
            config.and_then(|c| serde_json::from_slice(&c).ok()).unwrap_or(serde_json::Value::Null);
        let verbose = serde_json::json!({
            "imageSpec": config,
            "manifestDigest": record.manifest_digest,
            "chainIDs": record.layers,
            "pinned": record.pinned,
        });
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(ImageStatusResponse { image: Some(to_cri(&record)), info })
}

/// Lists images, optionally only the one a filter names.
pub fn list_images(state: &AgentState, request: ListImagesRequest) -> Result<ListImagesResponse, AgentError> {
    let filter = request.filter.and_then(|f| f.image).map(|s| s.image).unwrap_or_default();
    let images = if filter.trim().is_empty() {
        state.store.list::<ImageRecord>()?
    } else {
        image_index::find(&state.store, &filter)?.into_iter().collect()
    };
    Ok(ListImagesResponse { images: images.iter().filter(|i| is_listed(i)).map(to_cri).collect() })
}

/// Removes an image and every name it has; removing a missing image is fine.
/// Blobs and layers that nothing needs any more are deleted; layers that a
/// container still uses stay.
pub fn remove_image(state: &AgentState, request: RemoveImageRequest) -> Result<RemoveImageResponse, AgentError> {
    let query = request.image.map(|s| s.image).unwrap_or_default();
    if query.trim().is_empty() {
        return Err(AgentError::InvalidArgument { field: "image.image", reason: "empty image reference".into() });
    }
    let _gc = state.image_gc.blocking_write();
    let Some(record) = image_index::find(&state.store, &query)? else {
        return Ok(RemoveImageResponse {});
    };
    state.store.delete::<ImageRecord>(&record.id)?;
    tracing::info!(id = %record.id, tags = ?record.repo_tags, "image removed");
    collect_garbage_locked(state)?;
    Ok(RemoveImageResponse {})
}

/// Deletes blobs and layers that no image and no container needs (run at
/// start, to finish what a crash interrupted). Blocking.
pub fn collect_garbage(state: &AgentState) -> Result<(), AgentError> {
    let _gc = state.image_gc.blocking_write();
    collect_garbage_locked(state)
}

fn collect_garbage_locked(state: &AgentState) -> Result<(), AgentError> {
    let (blobs, layers) = image_index::keep_sets(&state.store)?;
    let parse = |set: std::collections::HashSet<String>| set.iter().filter_map(|d| d.parse::<Digest>().ok()).collect();
    let stats = state.images.collect_garbage(&parse(blobs), &parse(layers))?;
    if stats.blobs_removed + stats.layers_removed > 0 {
        tracing::info!(blobs = stats.blobs_removed, layers = stats.layers_removed, "image garbage collected");
    }
    Ok(())
}

/// Bytes and inodes of the image filesystem and of the containers' writable layers.
pub fn image_fs_info(state: &AgentState) -> Result<ImageFsInfoResponse, AgentError> {
    let usage = state.images.usage()?;
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let timestamp = i64::try_from(timestamp).unwrap_or(i64::MAX);
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![fs_usage(timestamp, state.images.image_root(), usage.images)],
        container_filesystems: vec![fs_usage(timestamp, state.images.container_root(), usage.containers)],
    })
}

fn fs_usage(timestamp: i64, root: &Path, usage: FsUsage) -> FilesystemUsage {
    FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier { mountpoint: root.display().to_string() }),
        used_bytes: Some(UInt64Value { value: usage.bytes }),
        inodes_used: Some(UInt64Value { value: usage.inodes }),
    }
}

/// An image without any name is kept (a container may use it) but not listed.
fn is_listed(record: &ImageRecord) -> bool {
    !record.repo_tags.is_empty() || !record.repo_digests.is_empty()
}

fn to_cri(record: &ImageRecord) -> Image {
    let (uid, username) = image_index::image_user(&record.user);
    Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec { image: record.id.clone(), ..ImageSpec::default() }),
        pinned: record.pinned,
    }
}

fn pulled_image(pulled: &Pulled) -> PulledImage {
    PulledImage {
        id: pulled.id.to_string(),
        manifest_digest: pulled.manifest_digest.to_string(),
        resolved_digest: pulled.resolved_digest.to_string(),
        size: pulled.size,
        layers: pulled.chain_ids.iter().map(ToString::to_string).collect(),
        blobs: pulled.blobs.iter().map(ToString::to_string).collect(),
        user: pulled.user.clone(),
    }
}

fn parse_reference(field: &'static str, text: &str) -> Result<Reference, AgentError> {
    if text.trim().is_empty() {
        return Err(AgentError::InvalidArgument { field, reason: "empty image reference".into() });
    }
    text.parse::<Reference>().map_err(|e| AgentError::InvalidArgument { field, reason: e.to_string() })
}

/// CRI credentials: a token, a username and password, or docker's base64
/// `auth` field. `None` lets the image store use the configured auth file.
fn credentials(auth: Option<&AuthConfig>) -> Result<Option<Credentials>, AgentError> {
    let Some(auth) = auth else { return Ok(None) };
    if !auth.registry_token.is_empty() {
        return Ok(Some(Credentials::RegistryToken(auth.registry_token.clone())));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some(Credentials::IdentityToken(auth.identity_token.clone())));
    }
    if !auth.username.is_empty() || !auth.password.is_empty() {
        return Ok(Some(Credentials::Basic { username: auth.username.clone(), password: auth.password.clone() }));
    }
    if !auth.auth.is_empty() {
        let (username, password) = crius_images::registry::decode_basic_auth(&auth.auth)
            .map_err(|reason| AgentError::InvalidArgument { field: "auth.auth", reason: reason.to_owned() })?;
        return Ok(Some(Credentials::Basic { username, password }));
    }
    Ok(None)
}
