//! The records kept in the state store. They are stored as JSON so that a
//! later crius can add fields (with `#[serde(default)]`) without a migration.

use std::collections::BTreeMap;
use std::fmt;

use redb::TableDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Which table a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Pod sandboxes.
    Pod,
    /// Containers.
    Container,
    /// Images.
    Image,
}

impl RecordKind {
    /// Every kind, for creating tables.
    pub const ALL: [Self; 3] = [Self::Pod, Self::Container, Self::Image];

    pub(super) fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Self::Pod => TableDefinition::new("pods"),
            Self::Container => TableDefinition::new("containers"),
            Self::Image => TableDefinition::new("images"),
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pod => "pod",
            Self::Container => "container",
            Self::Image => "image",
        })
    }
}

/// A type stored in its own table, keyed by its id.
pub trait Record: Serialize + DeserializeOwned {
    /// The table.
    const KIND: RecordKind;
    /// The key.
    fn id(&self) -> &str;
}

/// CRI sandbox states, plus the step before READY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// Being set up: a crash here means the next start must clean it up.
    Creating,
    /// `SANDBOX_READY`.
    Ready,
    /// `SANDBOX_NOTREADY`.
    NotReady,
}

/// CRI container states, plus the step before CREATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Being set up: a crash here means the next start must clean it up.
    Creating,
    /// `CONTAINER_CREATED`.
    Created,
    /// `CONTAINER_RUNNING`.
    Running,
    /// `CONTAINER_EXITED`.
    Exited,
    /// `CONTAINER_UNKNOWN`: crius could not tell or clean up what became of
    /// the container (a failed teardown, an unreadable record, a bundle
    /// that is gone); the record's `problem` says why, ContainerStatus
    /// reports it, and RemoveContainer retries the cleanup.
    Unknown,
}

/// A pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Sandbox id.
    pub id: String,
    /// Metadata name.
    pub name: String,
    /// Metadata namespace.
    pub namespace: String,
    /// Metadata uid.
    pub uid: String,
    /// Metadata attempt.
    pub attempt: u32,
    /// RuntimeClass handler ("" for the default).
    #[serde(default)]
    pub runtime_handler: String,
    /// Lifecycle state.
    pub state: PodState,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at_ns: i64,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The original request config (serialised CRI message), for status and restart.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Why the pod is not what it should be (a cleanup that failed, a record
    /// part that could not be read); empty when nothing is wrong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Owning sandbox id.
    pub pod_id: String,
    /// Metadata name.
    pub name: String,
    /// Metadata attempt.
    pub attempt: u32,
    /// The image reference the container was created from.
    pub image: String,
    /// The resolved image id.
    #[serde(default)]
    pub image_id: String,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at_ns: i64,
    /// Start time, nanoseconds since the Unix epoch (0 before start).
    #[serde(default)]
    pub started_at_ns: i64,
    /// Exit time, nanoseconds since the Unix epoch (0 while running).
    #[serde(default)]
    pub finished_at_ns: i64,
    /// Exit code once exited.
    #[serde(default)]
    pub exit_code: i32,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Layer chain ids of the container's rootfs: kept while the container exists.
    #[serde(default)]
    pub image_layers: Vec<String>,
    /// The original request config, for status and restart.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Why the container is `Unknown` (or what its last cleanup could not
    /// do); empty when nothing is wrong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub problem: String,
}

/// An image in the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id: the config digest (`sha256:…`).
    pub id: String,
    /// Tags that point at it (`docker.io/library/busybox:latest`).
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// Digests that point at it (`docker.io/library/busybox@sha256:…`).
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Unpacked size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Pinned images are never garbage collected.
    #[serde(default)]
    pub pinned: bool,
    /// Digest of the manifest the image was pulled as (platform-specific).
    #[serde(default)]
    pub manifest_digest: String,
    /// Layer chain ids, bottom first: the rootfs lowerdirs.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Every blob the image needs kept: index, manifest, config, layers.
    #[serde(default)]
    pub blobs: Vec<String>,
    /// The config's `User` (`name`, `uid`, `uid:gid`, `name:group`).
    #[serde(default)]
    pub user: String,
}

impl Record for PodRecord {
    const KIND: RecordKind = RecordKind::Pod;
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for ContainerRecord {
    const KIND: RecordKind = RecordKind::Container;
    fn id(&self) -> &str {
        &self.id
    }
}

impl Record for ImageRecord {
    const KIND: RecordKind = RecordKind::Image;
    fn id(&self) -> &str {
        &self.id
    }
}
