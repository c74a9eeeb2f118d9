//! Names for the systemd cgroup driver. kubelet, with `cgroupDriver:
//! systemd`, makes each pod's slice itself (through systemd) and passes its
//! unit name, such as `kubepods-burstable-pod<uid>.slice`, as the cgroup
//! parent; crius places the pod's containers in that slice's directory, as
//! `crius-<container id>.scope`, which is where systemd keeps a slice:
//! each `-` in a slice name is one level (`a-b.slice` is `a.slice/a-b.slice`).

/// The cgroup path, relative to the hierarchy root, of a slice unit name.
pub fn slice_path(unit: &str) -> Result<String, String> {
    let Some(name) = unit.strip_suffix(".slice") else {
        return Err(format!("{unit:?} is not a systemd slice name (NAME.slice)"));
    };
    if name == "-" {
        return Ok(String::new());
    }
    let valid = !name.is_empty()
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || ":_.\\-".contains(c));
    if !valid {
        return Err(format!("{unit:?} is not a valid systemd slice name"));
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path.join("/"))
}

/// The scope name of a container's cgroup.
pub fn container_scope(container_id: &str) -> String {
    format!("crius-{container_id}.scope")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_one_level_per_dash() {
        assert_eq!(slice_path("kubepods.slice").as_deref(), Ok("kubepods.slice"));
        assert_eq!(
            slice_path("kubepods-burstable-pod1234.slice").as_deref(),
            Ok("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice")
        );
        assert_eq!(slice_path("-.slice").as_deref(), Ok(""));
        for bad in ["kubepods", "/kubepods.slice", "a--b.slice", "-a.slice", "a-.slice", ".slice", "a/b.slice"] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
        assert_eq!(container_scope("abc"), "crius-abc.scope");
    }
}
