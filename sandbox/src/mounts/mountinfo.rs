//! Mount points of the calling thread's mount namespace.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::MountError;

/// `thread-self`, not `self`: a thread that unshared its mount namespace sees
/// its own table, not the thread group leader's.
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Every mount point, in mount order.
pub(crate) fn mount_points() -> Result<Vec<PathBuf>, MountError> {
    let text = fs::read(MOUNTINFO).map_err(|source| MountError::Read { path: MOUNTINFO.into(), source })?;
    Ok(parse_mount_points(&text))
}

/// The mount point holding `path`: the longest mount point that is `path` or
/// one of its ancestors.
pub(crate) fn mount_point_of(path: &Path) -> Result<PathBuf, MountError> {
    Ok(mount_points()?
        .into_iter()
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.components().count())
        .unwrap_or_else(|| PathBuf::from("/")))
}

/// The fifth field of each mountinfo line, unescaped (`\040` and friends).
pub(crate) fn parse_mount_points(text: &[u8]) -> Vec<PathBuf> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal =
            field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let text = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            40 22 0:5 / /tmp/with\\040space\\134x rw - tmpfs tmpfs rw\n\
            41 22 0:6 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n";
        assert_eq!(
            parse_mount_points(text),
            vec![PathBuf::from("/"), PathBuf::from("/tmp/with space\\x"), PathBuf::from("/sys/fs/cgroup")]
        );
    }

    #[test]
    fn unescape_leaves_stray_backslashes() {
        assert_eq!(unescape(b"a\\b\\12"), b"a\\b\\12".to_vec());
        assert_eq!(unescape(b"\\011"), b"\t".to_vec());
    }
}
