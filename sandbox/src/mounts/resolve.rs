//! Resolving container paths inside the rootfs, and opening them there
//! without following symlinks.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, mkdirat};

use super::MountError;

/// Symlinks followed while resolving one path before giving up (`ELOOP`).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// Resolve the container path `path` inside `root`, like
/// `filepath-securejoin`: symlinks are read and followed component by
/// component, absolute targets restart at `root`, `..` never climbs above
/// `root`. Components that do not exist are appended as they are. The result
/// is always `root` joined with a path of plain components, none of which was
/// a symlink when it was checked.
///
/// `root` itself is taken as given (pass a canonical path).
pub fn resolve_in_root(root: &Path, path: impl AsRef<Path>) -> Result<PathBuf, MountError> {
    Ok(root.join(resolve_rel(root, path.as_ref())?))
}

enum Part {
    Root,
    Parent,
    Name(OsString),
}

/// The parts of `path`, last first (a stack).
fn parts(path: &Path) -> Vec<Part> {
    let mut out: Vec<Part> = path
        .components()
        .filter_map(|c| match c {
            Component::Prefix(_) | Component::RootDir => Some(Part::Root),
            Component::CurDir => None,
            Component::ParentDir => Some(Part::Parent),
            Component::Normal(name) => Some(Part::Name(name.to_owned())),
        })
        .collect();
    out.reverse();
    out
}

/// [`resolve_in_root`], relative to `root`.
pub(crate) fn resolve_rel(root: &Path, path: &Path) -> Result<PathBuf, MountError> {
    let mut current = PathBuf::new();
    let mut pending = parts(path);
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        let name = match part {
            Part::Root => {
                current = PathBuf::new();
                continue;
            }
            Part::Parent => {
                current.pop();
                continue;
            }
            Part::Name(name) => name,
        };
        let candidate = current.join(&name);
        let host = root.join(&candidate);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(MountError::SymlinkLoop { root: root.to_owned(), path: display(path) });
                }
                let target = fs::read_link(&host).map_err(|source| MountError::Resolve {
                    root: root.to_owned(),
                    path: display(path),
                    source,
                })?;
                pending.extend(parts(&target));
            }
            Ok(_) => current = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => {
                current = candidate;
            }
            Err(source) => return Err(MountError::Resolve { root: root.to_owned(), path: display(path), source }),
        }
    }
    Ok(current)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// What to create for a missing last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    /// A directory (mount point of a directory or a filesystem).
    Dir,
    /// An empty file (mount point of a file or device).
    File,
}

/// Open `rel` (plain components, as from [`resolve_rel`]) under `root` with
/// `O_PATH`, one component at a time, refusing any symlink. Missing
/// components are created when `create` is set (directories, and `create`
/// for the last one); otherwise a missing component gives `Ok(None)`.
pub(crate) fn walk(root: &Path, rel: &Path, create: Option<NodeKind>) -> Result<Option<OwnedFd>, MountError> {
    let host = root.join(rel);
    let mut cur = open(root, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|source| MountError::Open { path: root.to_owned(), source })?;
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    for (i, name) in names.iter().enumerate() {
        let next = match open_component(&cur, name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let Some(kind) = create else { return Ok(None) };
                let kind = if i + 1 == names.len() { kind } else { NodeKind::Dir };
                create_at(&cur, name, kind).map_err(|source| MountError::Create { path: host.clone(), source })?;
                open_component(&cur, name).map_err(|source| MountError::Open { path: host.clone(), source })?
            }
            Err(source) => return Err(MountError::Open { path: host, source }),
        };
        cur = next;
    }
    Ok(Some(cur))
}

/// Open one name under `dir`: `O_PATH`, crossing mounts, failing with `ELOOP`
/// on a symlink.
fn open_component(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    openat2(dir, name, how)
}

fn create_at(dir: &OwnedFd, name: &OsStr, kind: NodeKind) -> nix::Result<()> {
    let res = match kind {
        NodeKind::Dir => mkdirat(dir, name, Mode::from_bits_truncate(0o755)),
        NodeKind::File => openat(
            dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match res {
        Err(Errno::EEXIST) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonicalize").join("rootfs");
        fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        fs::create_dir_all(root.join("mnt")).expect("mkdir");
        (dir, root)
    }

    #[test]
    fn plain_and_missing_paths() {
        let (_d, root) = root();
        assert_eq!(resolve_in_root(&root, "/usr/lib").expect("resolve"), root.join("usr/lib"));
        assert_eq!(resolve_in_root(&root, "usr/./lib/x/y").expect("resolve"), root.join("usr/lib/x/y"));
        assert_eq!(resolve_in_root(&root, "/").expect("resolve"), root);
        assert_eq!(resolve_in_root(&root, "/../../../etc").expect("resolve"), root.join("etc"));
        assert_eq!(resolve_in_root(&root, "/usr/../../x").expect("resolve"), root.join("x"));
    }

    #[test]
    fn hostile_symlinks_stay_inside() {
        let (_d, root) = root();
        symlink("/", root.join("etc")).expect("symlink");
        symlink("../../..", root.join("a")).expect("symlink");
        symlink("/usr/../../../lib", root.join("usr/up")).expect("symlink");
        symlink("/chain2", root.join("chain1")).expect("symlink");
        symlink("/mnt/../../chain3", root.join("chain2")).expect("symlink");
        symlink("usr/lib", root.join("chain3")).expect("symlink");
        symlink("/", root.join("mnt/evil")).expect("symlink");
        let cases = [
            ("/etc/passwd", root.join("passwd")),
            ("/etc/etc/etc/shadow", root.join("shadow")),
            ("/a/tmp/pwned", root.join("tmp/pwned")),
            ("/a/../../a/a", root.clone()),
            ("/usr/up/x", root.join("lib/x")),
            ("/chain1/file", root.join("usr/lib/file")),
            ("/mnt/evil/pwned", root.join("pwned")),
            ("/mnt/evil/../../../pwned", root.join("pwned")),
        ];
        for (path, want) in cases {
            let got = resolve_in_root(&root, path).expect("resolve");
            assert!(got.starts_with(&root), "{path} escaped to {}", got.display());
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn symlink_loops_are_errors() {
        let (_d, root) = root();
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("/loop1", root.join("loop2")).expect("symlink");
        symlink("self", root.join("self")).expect("symlink");
        for path in ["/loop1", "/loop2/x", "/self", "/usr/../self/a"] {
            let err = resolve_in_root(&root, path).expect_err(path);
            assert!(matches!(err, MountError::SymlinkLoop { .. }), "{path}: {err}");
        }
    }

    #[test]
    fn forty_hops_are_fine_forty_one_are_not() {
        let (_d, root) = root();
        for i in 0..41 {
            symlink(format!("l{}", i + 1), root.join(format!("l{i}"))).expect("symlink");
        }
        fs::create_dir(root.join("l41")).expect("mkdir");
        assert_eq!(resolve_in_root(&root, "/l1").expect("40 hops"), root.join("l41"));
        assert!(matches!(resolve_in_root(&root, "/l0"), Err(MountError::SymlinkLoop { .. })));
    }

    #[test]
    fn walk_creates_and_refuses_symlinks() {
        let (_d, root) = root();
        let rel = resolve_rel(&root, Path::new("/a/b/file")).expect("resolve");
        assert!(walk(&root, &rel, None).expect("walk").is_none());
        walk(&root, &rel, Some(NodeKind::File)).expect("walk").expect("created");
        assert!(root.join("a/b").is_dir());
        assert!(root.join("a/b/file").is_file());
        walk(&root, &rel, Some(NodeKind::File)).expect("walk again").expect("exists");

        // A symlink appearing after resolution is refused, not followed.
        symlink("/", root.join("late")).expect("symlink");
        let err = walk(&root, Path::new("late/x"), Some(NodeKind::Dir)).expect_err("symlink");
        assert!(matches!(err, MountError::Open { source: Errno::ELOOP, .. }), "{err}");
    }
}
