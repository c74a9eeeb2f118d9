//! The free-space reserve of the image filesystem: a pull fails rather than
//! fill the disk that kubelet, logs and every container on the node share.
//!
//! Before a blob is downloaded, the size its descriptor declares must fit
//! above the reserve; while blobs download and layers unpack, the free space
//! is read again every [`CHECK_EVERY`] bytes written, so a decompression
//! bomb stops within a few megabytes of the reserve. Inodes are held to the
//! same share where the filesystem counts them (btrfs reports none).
//!
//! The reserve is a share of the filesystem's size, as kubelet's eviction
//! thresholds are, so one default fits a 20 GB and a 2 TB disk. The default,
//! 5%, is below kubelet's own hard eviction thresholds (`nodefs.available<10%`,
//! `imagefs.available<15%`): on a node, kubelet's image garbage collection
//! and evictions act first, and the reserve is the last line when a
//! decompression bomb or a burst of pulls outruns them. (10% refused every
//! pull on a build machine at 90% disk usage.) It counts the space available
//! to unprivileged users (`f_bavail`): ext4's root reserve stays untouched on
//! top of it.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fd::AsFd;

/// Bytes written between two reads of the free space.
pub const CHECK_EVERY: u64 = 4 << 20;

/// The default reserve, in percent of the filesystem.
pub const DEFAULT_RESERVE_PERCENT: u8 = 5;

/// The share of the image filesystem that pulls leave free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceReserve {
    /// Percent of the filesystem's bytes and inodes kept free (0 turns the
    /// check off, 100 refuses every write).
    pub percent: u8,
}

impl Default for SpaceReserve {
    fn default() -> Self {
        Self { percent: DEFAULT_RESERVE_PERCENT }
    }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// Writing would leave fewer free bytes than the reserve.
    #[error(
        "the image filesystem has {free} bytes free; {incoming} more would leave less than the reserve of \
         {reserve} bytes ({percent}% of {total}, images.min_free_percent)"
    )]
    Bytes {
        /// Bytes free now.
        free: u64,
        /// Bytes about to be written.
        incoming: u64,
        /// Bytes kept free.
        reserve: u64,
        /// Size of the filesystem.
        total: u64,
        /// The configured share.
        percent: u8,
    },
    /// Fewer inodes are free than the reserve.
    #[error(
        "the image filesystem has {free} inodes free, under the reserve of {reserve} \
         ({percent}% of {total}, images.min_free_percent)"
    )]
    Inodes {
        /// Inodes free now.
        free: u64,
        /// Inodes kept free.
        reserve: u64,
        /// Inodes of the filesystem.
        total: u64,
        /// The configured share.
        percent: u8,
    },
    /// The free space could not be read.
    #[error("cannot read the free space of {path}")]
    Statvfs {
        /// The directory asked about.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Sizes as `statvfs` reports them, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Inodes of the filesystem (0: not counted).
    pub total_inodes: u64,
    /// Inodes available to unprivileged users.
    pub free_inodes: u64,
}

impl FsSpace {
    fn of(stat: &rustix::fs::StatVfs) -> Self {
        Self {
            total_bytes: stat.f_blocks.saturating_mul(stat.f_frsize),
            free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            total_inodes: stat.f_files,
            free_inodes: stat.f_favail,
        }
    }
}

impl SpaceReserve {
    /// Whether `incoming` more bytes (and an inode) fit above the reserve of
    /// the filesystem holding the open file or directory `fd`.
    pub fn check_fd(&self, fd: impl AsFd, incoming: u64) -> Result<(), SpaceError> {
        if self.percent == 0 {
            return Ok(());
        }
        let stat = rustix::fs::fstatvfs(fd)
            .map_err(|errno| SpaceError::Statvfs { path: PathBuf::from("<layer directory>"), source: errno.into() })?;
        self.allows(FsSpace::of(&stat), incoming)
    }

    /// [`SpaceReserve::check_fd`] for the filesystem holding `path`.
    pub fn check_path(&self, path: &Path, incoming: u64) -> Result<(), SpaceError> {
        if self.percent == 0 {
            return Ok(());
        }
        let stat = rustix::fs::statvfs(path)
            .map_err(|errno| SpaceError::Statvfs { path: path.to_path_buf(), source: errno.into() })?;
        self.allows(FsSpace::of(&stat), incoming)
    }

    /// The decision, on numbers.
    pub fn allows(&self, space: FsSpace, incoming: u64) -> Result<(), SpaceError> {
        let percent = self.percent.min(100);
        if percent == 0 {
            return Ok(());
        }
        let share = |total: u64| u64::try_from(u128::from(total) * u128::from(percent) / 100).unwrap_or(u64::MAX);
        let reserve = share(space.total_bytes);
        if space.free_bytes.saturating_sub(incoming) < reserve {
            return Err(SpaceError::Bytes {
                free: space.free_bytes,
                incoming,
                reserve,
                total: space.total_bytes,
                percent,
            });
        }
        let reserve = share(space.total_inodes);
        if space.total_inodes > 0 && space.free_inodes <= reserve {
            return Err(SpaceError::Inodes { free: space.free_inodes, reserve, total: space.total_inodes, percent });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn space(free_bytes: u64, free_inodes: u64) -> FsSpace {
        FsSpace { total_bytes: 100 * GIB, free_bytes, total_inodes: 1000, free_inodes }
    }

    #[test]
    fn the_reserve_is_a_share_of_the_filesystem() {
        let reserve = SpaceReserve { percent: 10 };
        reserve.allows(space(50 * GIB, 500), 40 * GIB).expect("leaves exactly 10 GiB");
        let err = reserve.allows(space(50 * GIB, 500), 40 * GIB + 1).expect_err("one byte into the reserve");
        assert!(matches!(err, SpaceError::Bytes { reserve, .. } if reserve == 10 * GIB), "{err:?}");
        assert!(err.to_string().contains("images.min_free_percent"), "{err}");
        reserve.allows(space(9 * GIB, 500), 0).expect_err("already under the reserve");
        let err = reserve.allows(space(50 * GIB, 100), 0).expect_err("inodes at the reserve");
        assert!(matches!(err, SpaceError::Inodes { reserve: 100, .. }), "{err:?}");
        let no_inodes = FsSpace { total_inodes: 0, free_inodes: 0, ..space(50 * GIB, 0) };
        reserve.allows(no_inodes, GIB).expect("btrfs counts no inodes");
    }

    #[test]
    fn zero_turns_the_check_off_and_100_refuses_every_write() {
        SpaceReserve { percent: 0 }.allows(space(0, 0), GIB).expect("off");
        let full = SpaceReserve { percent: 100 };
        full.allows(space(100 * GIB, 1000), 1).expect_err("100% refuses");
        let dir = tempfile::tempdir().expect("tempdir");
        SpaceReserve { percent: 0 }.check_path(dir.path(), u64::MAX).expect("off without statvfs");
        full.check_path(dir.path(), 1).expect_err("a real filesystem is never 100% free");
        SpaceReserve { percent: 1 }.check_path(dir.path(), 1).expect("the test machine has 1% free");
    }
}
