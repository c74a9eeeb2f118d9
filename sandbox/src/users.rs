//! Who a container's process runs as: CRI's `run_as_*` first, else the
//! image's `User`; names are looked up in the image's `/etc/passwd` and
//! `/etc/group`, read inside the container's root filesystem (a backend
//! calls this once it has one: on the node for namespace pods, in the guest
//! for VM pods).

use std::path::Path;

use crate::backend::{BackendError, UserRequest};
use crate::mounts::resolve_in_root;
use crate::ns::spec::UserSpec;

/// The identity `request` asks for, in the root filesystem at `rootfs`.
/// The primary group is a supplementary group too (as runc, crun and
/// containerd set it: `id` lists it). Merge (the default) adds the groups
/// the image's `/etc/group` gives the user; Strict only the ones the
/// request lists.
pub fn resolve(request: &UserRequest, rootfs: &Path) -> Result<UserSpec, BackendError> {
    resolve_from(request, &read_in_rootfs(rootfs, "/etc/passwd"), &read_in_rootfs(rootfs, "/etc/group"))
}

fn resolve_from(request: &UserRequest, passwd: &str, group: &str) -> Result<UserSpec, BackendError> {
    let (image_user, image_group) = request.image_user.split_once(':').unwrap_or((request.image_user.as_str(), ""));
    let invalid = |reason: String| BackendError::InvalidArgument {
        field: "config.linux.security_context.run_as_username",
        reason,
    };
    if request.run_as_group.is_some() && request.run_as_user.is_none() && request.run_as_username.is_empty() {
        return Err(BackendError::InvalidArgument {
            field: "config.linux.security_context.run_as_group",
            reason: "run_as_group needs run_as_user or run_as_username".into(),
        });
    }
    let (uid, name, primary_gid) = if let Some(uid) = request.run_as_user {
        let uid = u32::try_from(uid).map_err(|_| invalid(format!("uid {uid} out of range")))?;
        let entry = passwd_by_uid(passwd, uid);
        (uid, entry.as_ref().map(|e| e.0.clone()), entry.map(|e| e.2))
    } else {
        let wanted = if request.run_as_username.is_empty() { image_user } else { request.run_as_username.as_str() };
        match wanted.parse::<u32>() {
            Ok(uid) => {
                let entry = passwd_by_uid(passwd, uid);
                (uid, entry.as_ref().map(|e| e.0.clone()), entry.map(|e| e.2))
            }
            Err(_) if wanted.is_empty() => (0, Some("root".to_owned()), Some(0)),
            Err(_) => {
                let entry = passwd_by_name(passwd, wanted)
                    .ok_or_else(|| invalid(format!("user {wanted:?} is not in the image's /etc/passwd")))?;
                (entry.1, Some(entry.0), Some(entry.2))
            }
        }
    };
    let gid = match (request.run_as_group, image_group) {
        (Some(gid), _) => u32::try_from(gid).map_err(|_| invalid(format!("gid {gid} out of range")))?,
        (None, "") => primary_gid.unwrap_or(0),
        (None, group_name) => group_name
            .parse::<u32>()
            .ok()
            .or_else(|| group_by_name(group, group_name))
            .ok_or_else(|| invalid(format!("group {group_name:?} is not in the image's /etc/group")))?,
    };
    let mut additional_gids: Vec<u32> = vec![gid];
    if !request.strict_groups {
        additional_gids.extend(name.map(|n| groups_of(group, &n)).unwrap_or_default());
    }
    additional_gids.extend(request.supplemental_groups.iter().filter_map(|g| u32::try_from(*g).ok()));
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(UserSpec { uid, gid, additional_gids })
}

/// [`resolve`] without a mounted rootfs: `/etc/passwd` and `/etc/group` are
/// read from the topmost of the image's `layers` (bottom first) that has
/// them, as the mounted overlay would show them.
pub fn resolve_in_layers(request: &UserRequest, layers: &[std::path::PathBuf]) -> Result<UserSpec, BackendError> {
    let topmost = |file: &str| {
        layers
            .iter()
            .rev()
            .find(|layer| resolve_in_root(layer, Path::new(file)).is_ok_and(|p| p.is_file()))
            .map(|layer| read_in_rootfs(layer, file))
            .unwrap_or_default()
    };
    resolve_from(request, &topmost("/etc/passwd"), &topmost("/etc/group"))
}

fn read_in_rootfs(rootfs: &Path, path: &str) -> String {
    resolve_in_root(rootfs, Path::new(path)).ok().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
}

/// (name, uid, gid) of a passwd line.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (String, u32, u32)> + '_ {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some((fields.first()?.to_string(), fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
    })
}

fn passwd_by_uid(passwd: &str, uid: u32) -> Option<(String, u32, u32)> {
    passwd_entries(passwd).find(|e| e.1 == uid)
}

fn passwd_by_name(passwd: &str, name: &str) -> Option<(String, u32, u32)> {
    passwd_entries(passwd).find(|e| e.0 == name)
}

fn group_by_name(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name)).then(|| fields.get(2)?.parse().ok()).flatten()
    })
}

/// gids of the groups that list `user` as a member.
fn groups_of(group: &str, user: &str) -> Vec<u32> {
    group
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let members = fields.get(3)?;
            members.split(',').any(|m| m.trim() == user).then(|| fields.get(2)?.parse().ok()).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rootfs with the passwd and group files of the harness's busybox image.
    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/false\n\
             default-user:x:1000:1000::/home/default-user:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root\nwww-data:x:33:\ngroup-defined-in-image:x:50000:default-user\n",
        )
        .expect("group");
        dir
    }

    fn user(image_user: &str, f: impl FnOnce(&mut UserRequest)) -> Result<UserSpec, BackendError> {
        let root = rootfs();
        let mut request = UserRequest { image_user: image_user.into(), ..UserRequest::default() };
        f(&mut request);
        resolve(&request, root.path())
    }

    #[test]
    fn users_come_from_cri_then_the_image() {
        // The primary group is listed with the others, as runc and containerd
        // do: `id` in a root busybox container prints groups=0(root),10(wheel).
        assert_eq!(user("", |_| {}).expect("root"), UserSpec { uid: 0, gid: 0, additional_gids: vec![0, 10] });
        assert_eq!(user("www-data", |_| {}).expect("name"), UserSpec { uid: 33, gid: 33, additional_gids: vec![33] });
        assert_eq!(
            user("1003:1004", |_| {}).expect("ids"),
            UserSpec { uid: 1003, gid: 1004, additional_gids: vec![1004] }
        );
        assert_eq!(user("www-data:1004", |_| {}).expect("mixed").gid, 1004);
        let predefined = user("1000", |_| {}).expect("image group membership");
        assert_eq!(predefined, UserSpec { uid: 1000, gid: 1000, additional_gids: vec![1000, 50000] });
        let cri = user("www-data", |r| {
            r.run_as_user = Some(1000);
            r.run_as_group = Some(2000);
            r.supplemental_groups = vec![3000];
        });
        assert_eq!(cri.expect("cri"), UserSpec { uid: 1000, gid: 2000, additional_gids: vec![2000, 3000, 50000] });
        let strict = user("www-data", |r| {
            r.run_as_user = Some(1000);
            r.supplemental_groups = vec![1234];
            r.strict_groups = true;
        });
        assert_eq!(
            strict.expect("strict"),
            UserSpec { uid: 1000, gid: 1000, additional_gids: vec![1000, 1234] },
            "Strict leaves out the image's group 50000"
        );
        let err = user("", |r| r.run_as_group = Some(5)).expect_err("group without user");
        assert!(err.to_string().contains("run_as_group"), "{err}");
        let err = user("nobody-here", |_| {}).expect_err("unknown user");
        assert!(err.to_string().contains("nobody-here"), "{err}");
    }
}
