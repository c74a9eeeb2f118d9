//! Plain reads and writes of cgroup files, with the path and value in every
//! error.

use std::io::{self, Write};
use std::path::Path;

use super::CgroupError;

/// Reads a whole cgroup file.
pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })
}

/// Reads a cgroup file that may be absent (controller or feature missing).
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path: path.to_owned(), source }),
    }
}

/// Writes `value` to an existing cgroup file in one `write(2)`. The file is
/// never created: cgroupfs files exist or the controller is missing.
pub(super) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_io(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

pub(super) fn write_io(path: &Path, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Parses one unsigned number file (`memory.usage_in_bytes`, `pids.current`).
/// `max` reads as `None`.
pub(super) fn parse_u64_or_max(path: &Path, text: &str) -> Result<Option<u64>, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| CgroupError::Parse { path: path.to_owned(), reason: format!("not a number: {t:?}") })
}

/// The value of `key` in a flat keyed file (`memory.stat`, `memory.events`,
/// `cpu.stat`, `memory.oom_control`): lines of `key value`.
pub(super) fn keyed_value(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            let v = it.next().unwrap_or("");
            return v.parse().map(Some).map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                reason: format!("{key}: not a number: {v:?}"),
            });
        }
    }
    Ok(None)
}

/// Parses `cgroup.procs`: one pid per line.
pub(super) fn parse_pids(path: &Path, text: &str) -> Result<Vec<i32>, CgroupError> {
    text.split_whitespace()
        .map(|t| t.parse().map_err(|_| CgroupError::Parse { path: path.to_owned(), reason: format!("bad pid {t:?}") }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_and_numbers_parse() {
        let p = Path::new("memory.stat");
        let text = "cache 10\ninactive_file 4096\ntotal_inactive_file 8192\n";
        assert_eq!(keyed_value(p, text, "inactive_file").expect("keyed value"), Some(4096));
        assert_eq!(keyed_value(p, text, "total_inactive_file").expect("keyed value"), Some(8192));
        assert_eq!(keyed_value(p, text, "nope").expect("keyed value"), None);
        assert!(keyed_value(p, "x y", "x").is_err());
        assert_eq!(parse_u64_or_max(p, "max\n").expect("parse u64 or max"), None);
        assert_eq!(parse_u64_or_max(p, "42\n").expect("parse u64 or max"), Some(42));
        assert!(parse_u64_or_max(p, "-").is_err());
        assert_eq!(parse_pids(p, "1\n22\n").expect("parse pids"), vec![1, 22]);
        assert!(parse_pids(p, "1\nx\n").is_err());
    }

    #[test]
    fn write_never_creates_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("cpu.max");
        let err = write(&missing, "max").expect_err("write should fail");
        assert!(matches!(err, CgroupError::Write { ref value, .. } if value == "max"));
        assert!(!missing.exists());
        std::fs::write(&missing, "100000 100000\n").expect("write");
        write(&missing, "max").expect("write");
        assert_eq!(std::fs::read_to_string(&missing).expect("read to string"), "max");
    }
}
