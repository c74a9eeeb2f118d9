//! The guest's `unsafe` calls: owning a descriptor the kernel just
//! returned as a number, and registering owned descriptors with tokio.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// Owns a descriptor that `accept4` just returned.
pub fn owned_accepted(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by a successful `accept4` a moment ago and
    // has not been stored, duplicated or closed anywhere: this call is its
    // only owner, and `OwnedFd` closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Registers an owned descriptor with tokio's reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that stays open, and is the
    // same number, until it is dropped, and the `AsyncFd` owns it until then.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}
