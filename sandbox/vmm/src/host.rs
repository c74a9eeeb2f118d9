//! Can a guest run here? Checked before anything boots, answered in one line.
//!
//! Two hosts cannot boot a stock Linux guest: one without a usable
//! `/dev/kvm`, and one whose KVM is PVM (`kvm_pvm`: guest kernel code runs
//! through KVM's instruction emulator, where a stock kernel stops early in
//! boot) unless the guest kernel is built for PVM (`CONFIG_PVM_GUEST`).
//! Raw guests (hand-written code) run on both kinds of KVM.

use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// Why a guest cannot run here, in one line each.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No `/dev/kvm`, or it does not open.
    #[error("{path} is missing or cannot be opened ({source}): this host cannot run KVM guests")]
    NoKvm {
        /// The device path.
        path: PathBuf,
        /// Why it did not open.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM lacks something the VMM needs.
    #[error("/dev/kvm lacks {0}, which crius's VMM needs")]
    MissingCap(&'static str),
    /// PVM with a kernel that is not PVM-enabled.
    #[error(
        "this host's /dev/kvm is PVM (kvm_pvm: guest kernel code runs through KVM's instruction emulator) and {kernel} is not a PVM guest kernel ({why}): it would stop early in boot; use a kernel built with CONFIG_PVM_GUEST=y, or the KVM lab (e2e/kvm-lab)"
    )]
    PvmNeedsPvmGuest {
        /// The guest kernel.
        kernel: PathBuf,
        /// What was found about it.
        why: String,
    },
}

/// What kind of KVM this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Hardware-assisted (kvm_intel / kvm_amd).
    Hardware,
    /// PVM (`kvm_pvm`).
    Pvm,
}

/// The device node crius opens.
pub const KVM_DEV: &str = "/dev/kvm";

/// Whether the running kernel's KVM is PVM.
pub fn kvm_kind() -> KvmKind {
    kvm_kind_at(Path::new("/sys/module"))
}

fn kvm_kind_at(sys_module: &Path) -> KvmKind {
    if sys_module.join("kvm_pvm").exists() { KvmKind::Pvm } else { KvmKind::Hardware }
}

/// Opens `/dev/kvm` and checks the capabilities the VMM uses.
pub fn open_kvm() -> Result<Kvm, HostError> {
    let kvm = Kvm::new().map_err(|source| HostError::NoKvm { path: KVM_DEV.into(), source })?;
    let needed = [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
    ];
    for (cap, name) in needed {
        if !kvm.check_extension(cap) {
            return Err(HostError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Whether `kernel` is built for PVM: `Some(true)`/`Some(false)` from its
/// config (`config-<release>` beside a `vmlinuz-<release>`, or
/// `<kernel>.config`), with the file read; `None` when there is no config.
pub fn kernel_is_pvm_guest(kernel: &Path) -> Option<(bool, PathBuf)> {
    let config = kernel_config(kernel)?;
    let text = std::fs::read_to_string(&config).ok()?;
    Some((text.lines().any(|l| l.trim() == "CONFIG_PVM_GUEST=y"), config))
}

fn kernel_config(kernel: &Path) -> Option<PathBuf> {
    let name = kernel.file_name()?.to_str()?;
    let dir = kernel.parent().unwrap_or(Path::new("."));
    let candidates = [
        name.strip_prefix("vmlinuz-")
            .or_else(|| name.strip_prefix("vmlinux-"))
            .map(|r| dir.join(format!("config-{r}"))),
        Some(dir.join(format!("{name}.config"))),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// The default guest kernel: the newest installed Debian cloud kernel
/// (`/boot/vmlinuz-*-cloud-amd64`, package `linux-image-cloud-amd64`).
pub fn default_guest_kernel() -> Option<PathBuf> {
    newest_cloud_kernel(Path::new("/boot"))
}

fn newest_cloud_kernel(boot: &Path) -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        })
        .collect();
    kernels.sort_by_key(|p| version_key(&p.to_string_lossy()));
    kernels.pop()
}

/// Orders "6.1.0-9" before "6.1.0-10": numbers compare as numbers.
fn version_key(text: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits > 0 {
            key.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let word = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            key.push((0, rest[..word].to_owned()));
            rest = &rest[word..];
        }
    }
    key
}

/// Checks that a Linux guest with `kernel` can boot here: `/dev/kvm` opens
/// with what the VMM needs, and on PVM the kernel is a PVM guest kernel.
pub fn check_linux_guest(kernel: &Path) -> Result<Kvm, HostError> {
    let kvm = open_kvm()?;
    if kvm_kind() == KvmKind::Pvm {
        let why = match kernel_is_pvm_guest(kernel) {
            Some((true, _)) => return Ok(kvm),
            Some((false, config)) => format!("{} has no CONFIG_PVM_GUEST=y", config.display()),
            None => "no kernel config beside it says CONFIG_PVM_GUEST=y".to_owned(),
        };
        return Err(HostError::PvmNeedsPvmGuest { kernel: kernel.to_path_buf(), why });
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_told_by_the_kvm_pvm_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(kvm_kind_at(dir.path()), KvmKind::Hardware);
        std::fs::create_dir(dir.path().join("kvm_pvm")).expect("mkdir");
        assert_eq!(kvm_kind_at(dir.path()), KvmKind::Pvm);
    }

    #[test]
    fn the_kernel_config_beside_it_tells_a_pvm_guest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz-6.1.0-57-cloud-amd64");
        std::fs::write(&kernel, b"").expect("write");
        assert_eq!(kernel_is_pvm_guest(&kernel), None);
        let config = dir.path().join("config-6.1.0-57-cloud-amd64");
        std::fs::write(&config, "CONFIG_KVM_GUEST=y\n# CONFIG_PVM_GUEST is not set\n").expect("write");
        assert_eq!(kernel_is_pvm_guest(&kernel), Some((false, config.clone())));
        std::fs::write(&config, "CONFIG_PVM_GUEST=y\n").expect("write");
        assert_eq!(kernel_is_pvm_guest(&kernel), Some((true, config)));
        let other = dir.path().join("bzImage");
        std::fs::write(dir.path().join("bzImage.config"), "CONFIG_PVM_GUEST=y\n").expect("write");
        assert!(matches!(kernel_is_pvm_guest(&other), Some((true, _))));
    }

    #[test]
    fn the_newest_cloud_kernel_is_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(newest_cloud_kernel(dir.path()), None);
        for name in [
            "vmlinuz-6.1.0-9-cloud-amd64",
            "vmlinuz-6.1.0-10-cloud-amd64",
            "vmlinuz-6.1.0-11-amd64",
            "config-6.1.0-12-cloud-amd64",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        assert_eq!(newest_cloud_kernel(dir.path()), Some(dir.path().join("vmlinuz-6.1.0-10-cloud-amd64")));
    }

    #[test]
    fn the_pvm_refusal_is_one_line() {
        let e = HostError::PvmNeedsPvmGuest { kernel: "/boot/vmlinuz-x".into(), why: "no config".into() };
        let text = e.to_string();
        assert!(!text.contains('\n') && text.contains("PVM") && text.contains("/boot/vmlinuz-x"), "{text}");
    }
}
