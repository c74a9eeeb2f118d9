//! Whether the client still waits for an RPC.
//!
//! Handlers run on blocking threads that finish even when the client gives
//! up, so that a mutation is never cut in half. A handler that waits on
//! something for the client (StopContainer's grace period) can ask instead
//! whether anyone still waits, and abandon the wait as containerd does: the
//! client reset the stream, or the deadline it sent in `grpc-timeout` passed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set once the client gave up on the request.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token nobody cancels (internal callers).
    pub fn never() -> Self {
        Self::default()
    }

    /// Whether the client gave up.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(super) fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Cancels the token when dropped unless [`CancelOnDrop::disarm`]ed: the
    /// RPC's future is dropped when the client resets the stream.
    pub(super) fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

/// See [`Cancel::on_drop`].
#[derive(Debug)]
pub(super) struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel();
        }
    }
}

/// The deadline a gRPC client sent (`grpc-timeout`: at most 8 digits and a
/// unit, H M S m u n); `None` when absent or malformed.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().expect("ascii"));
        grpc_timeout(&metadata)
    }

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(timeout("10n"), Some(Duration::from_nanos(10)));
        for bad in ["", "S", "123456789S", "5s", "-1S", "1.5S", "5"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn dropping_the_guard_cancels_and_disarming_does_not() {
        let cancel = Cancel::default();
        cancel.on_drop().disarm();
        assert!(!cancel.is_cancelled());
        drop(cancel.on_drop());
        assert!(cancel.is_cancelled());
    }
}
