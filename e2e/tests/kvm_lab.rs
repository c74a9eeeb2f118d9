//! The KVM lab (`e2e/kvm-lab/`): a Linux L1 under QEMU's software CPU with
//! emulated AMD SVM gets a real `kvm_amd` `/dev/kvm`, and crius's VMM boots
//! the Debian cloud kernel inside it. The lab test `vm-boot`: `crius internal
//! vmm` boots the guest to userspace; vsock both ways, the shared file over
//! virtio-blk, ping through virtio-net and a tap, virtio-rng, power-off
//! through ACPI, the VMM's own memory.
//!
//! Boot time against QEMU (`e2e/kvm-lab/run.sh OUT boot-time`) is a
//! benchmark, run by hand (e2e/bench/README.md): timings are no test
//! assertion on shared machines.
//!
//! Needs no `/dev/kvm` on this host, only the packages `.ci/setup-host`
//! installs. The lab's report is printed whether it passes or not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use crius_e2e::crius_binary;

fn lab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kvm-lab")
}

/// Shows `text` past the test harness's capture (as the skip lines are).
fn show(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn tools_present(test: &str) -> bool {
    let tools = [
        ("qemu-system-x86_64", "qemu-system-x86 (bookworm-backports)"),
        ("mkfs.erofs", "erofs-utils"),
        ("modprobe", "kmod"),
        ("objcopy", "binutils"),
        ("busybox", "busybox-static"),
    ];
    if !tools.iter().all(|(tool, package)| testkit::require_tool(test, tool, package)) {
        return false;
    }
    let kernel = std::fs::read_dir("/boot")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with("-cloud-amd64")))
        .unwrap_or(false);
    if !kernel {
        testkit::skip(
            test,
            testkit::TOOLS,
            "needs /boot/vmlinuz-*-cloud-amd64 (Debian package linux-image-cloud-amd64)",
        );
    }
    kernel
}

fn run_lab_test(out: &Path, test: &str, timeout_s: u32) -> Result<String> {
    let output = Command::new(lab_dir().join("run.sh"))
        .arg(out)
        .arg(test)
        .arg(timeout_s.to_string())
        .output()
        .context("run e2e/kvm-lab/run.sh")?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    show(&format!("---- kvm lab: {test}\n{report}"));
    ensure!(output.status.success(), "lab test {test} failed:\n{report}");
    Ok(report)
}

#[test]
fn crius_vmm_boots_linux_with_its_devices_in_the_kvm_lab() -> Result<()> {
    let test = "crius_vmm_boots_linux_with_its_devices_in_the_kvm_lab";
    if !tools_present(test) {
        return Ok(());
    }
    let crius = crius_binary()?;
    let crius_lab = crius.with_file_name("crius-lab");
    ensure!(
        crius_lab.exists(),
        "{} missing: build it with cargo build -p crius-e2e --bin crius-lab",
        crius_lab.display()
    );
    let dir = tempfile::tempdir()?;
    // Debug information would make L1's initramfs several times larger.
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins)?;
    for (from, name) in [(&crius, "crius"), (&crius_lab, "crius-lab")] {
        let ok = Command::new("objcopy").arg("--strip-debug").arg(from).arg(bins.join(name)).status()?;
        ensure!(ok.success(), "objcopy {}", from.display());
    }
    let out = dir.path().join("out");
    let build = Command::new(lab_dir().join("build.sh"))
        .arg(&out)
        .arg(bins.join("crius"))
        .arg(bins.join("crius-lab"))
        .output()
        .context("run e2e/kvm-lab/build.sh")?;
    ensure!(build.status.success(), "build.sh: {}", String::from_utf8_lossy(&build.stderr));

    let report = run_lab_test(&out, "vm-boot", 300)?;
    for line in ["ok: vsock host to guest", "ok: vsock guest to host", "ok: the guest read the shared file"] {
        assert!(report.contains(line), "{line}");
    }
    assert!(report.contains("ok: ping through virtio-net and the tap"));
    assert!(report.contains("ok: clean shutdown"));
    Ok(())
}
