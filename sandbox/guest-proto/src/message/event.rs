//! Guest → host events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::base64;
use crate::codec::StreamId;

/// An unsolicited message from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GuestEvent {
    /// Container output for the CRI log, after a `SubscribeOutput`.
    Output(OutputBatch),
    /// A container's process ended (sent after its last `Output` record).
    ContainerExited {
        /// Container id.
        id: String,
        /// How it ended.
        exit: ExitStatus,
    },
    /// The OOM killer killed a process of the container.
    Oom {
        /// Container id.
        id: String,
    },
    /// An `Exec` process ended; its streams were half-closed before this.
    ExecExited {
        /// The exec's main stream.
        stream: StreamId,
        /// Exit code (128 + n when killed by signal n).
        exit_code: i32,
    },
    /// A log line of the guest agent, for the host to re-emit.
    Log(GuestLog),
}

impl GuestEvent {
    /// The `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestEvent::Output(_) => "output",
            GuestEvent::ContainerExited { .. } => "container_exited",
            GuestEvent::Oom { .. } => "oom",
            GuestEvent::ExecExited { .. } => "exec_exited",
            GuestEvent::Log(_) => "log",
        }
    }

    /// The protocol version that introduced this event.
    pub fn since(&self) -> u16 {
        match self {
            // Version 1: the initial set.
            GuestEvent::Output(_)
            | GuestEvent::ContainerExited { .. }
            | GuestEvent::Oom { .. }
            | GuestEvent::ExecExited { .. }
            | GuestEvent::Log(_) => 1,
        }
    }
}

/// How a container's process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code (128 + n when killed by signal n).
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// When it started, ns since the Unix epoch (guest clock).
    pub started_at_ns: u64,
    /// When it ended, ns since the Unix epoch (guest clock).
    pub finished_at_ns: u64,
    /// Whether the OOM killer killed it.
    pub oom_killed: bool,
    /// A short reason (`OOMKilled`, `Error`, `Completed`).
    pub reason: String,
    /// Details.
    pub message: String,
}

/// Consecutive output records of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputBatch {
    /// Container id.
    pub id: String,
    /// Records in offset order, each starting where the previous ended; at
    /// most [`super::MAX_OUTPUT_BATCH`] data bytes in all.
    pub records: Vec<OutputRecord>,
}

/// Which output stream of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One CRI log entry of a container's output.
///
/// **Offsets.** The guest numbers the bytes of a container's output, stdout
/// and stderr together in the order it read them, from 0. A record holds the
/// bytes `offset .. offset + data.len()`; records never change once made
/// (data, stream, timestamp, split), so a record sent twice is identical.
/// A record whose `offset + data.len()` is at most the host's written offset
/// is a duplicate to skip; one starting beyond it means the guest dropped
/// output (see `crate::output`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Offset of the first byte.
    pub offset: u64,
    /// Stdout or stderr.
    pub stream: OutputStream,
    /// When the guest read it, ns since the Unix epoch (guest clock).
    pub timestamp_ns: u64,
    /// CRI tag P: part of a longer line (split at
    /// [`super::MAX_OUTPUT_RECORD`] bytes). Otherwise tag F: `data` ends
    /// the line, with its `\n` unless the stream ended without one.
    pub partial: bool,
    /// 1 to [`super::MAX_OUTPUT_RECORD`] bytes (base64 in JSON).
    #[serde(with = "base64")]
    pub data: Vec<u8>,
}

impl OutputRecord {
    /// The offset just past this record: what the host acknowledges once the
    /// record is written.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }
}

/// A guest agent log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestLog {
    /// Severity.
    pub level: LogLevel,
    /// The message.
    pub message: String,
    /// Structured fields (container id, ...).
    pub fields: BTreeMap<String, String>,
}

/// Severity of a [`GuestLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}
