//! `crius internal vmm`: one detached VMM process per VM, its control
//! socket (status with the VMM's own memory, shutdown) and its exit record.

use std::time::Duration;

use crius_e2e::crius_binary;
use crius_vmm::process::{self, Client, ExitRecord, VmmConfig};
use crius_vmm::virtio::DeviceConfigs;
use crius_vmm::virtio::vsock::VsockConfig;
use crius_vmm::vm::VmConfig;

fn cloud_kernel() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/boot").ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.to_string_lossy();
        name.contains("/vmlinuz-") && name.ends_with("-cloud-amd64")
    })
}

#[test]
fn a_detached_vmm_answers_status_and_shuts_down_cleanly() -> anyhow::Result<()> {
    let test = "a_detached_vmm_answers_status_and_shuts_down_cleanly";
    if !testkit::require_kvm(test) {
        return Ok(());
    }
    let Some(kernel) = cloud_kernel() else {
        testkit::skip(
            test,
            testkit::TOOLS,
            "needs /boot/vmlinuz-*-cloud-amd64 (Debian package linux-image-cloud-amd64)",
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let vm = VmConfig {
        kernel,
        initrd: None,
        cmdline: None,
        mem_mib: 128,
        vcpus: 1,
        console_log: None,
        extract_vmlinux: None,
        devices: DeviceConfigs {
            vsock: Some(VsockConfig { guest_cid: 3, uds_path: dir.path().join("vsock.sock") }),
            rng: true,
            ..Default::default()
        },
    };
    // On a PVM host the stock kernel cannot finish booting, but the VM runs
    // (`force`), which is all the control socket needs.
    let config = VmmConfig { vm, force: true };
    let pid = process::spawn(&crius_binary()?, dir.path(), &config, Duration::from_secs(20))?;
    let status = Client::new(dir.path()).status()?;
    assert_eq!((status.state.as_str(), status.pid), ("running", pid));
    assert_eq!(status.vsock_uds, Some(dir.path().join("vsock.sock")));
    assert!(dir.path().join("vsock.sock").exists());
    assert!(status.pss_kib >= status.guest_pss_kib && status.vmm_pss_kib > 0, "{status:?}");
    eprintln!(
        "vmm memory: {} KiB PSS in all, {} KiB guest RAM, {} KiB the VMM's own",
        status.pss_kib, status.guest_pss_kib, status.vmm_pss_kib
    );
    // Detached: its own session, not crius's.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let session: i32 =
        stat.rsplit(')').next().and_then(|s| s.split_whitespace().nth(3)).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert_eq!(session, pid as i32, "the VMM leads its own session");
    let stopping = Client::new(dir.path()).shutdown()?;
    assert_eq!(stopping.state, "stopping");
    let exit = dir.path().join(process::EXIT_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !exit.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let record: ExitRecord = serde_json::from_slice(&std::fs::read(&exit)?)?;
    assert!(record.clean && record.reason == "shut down on request", "{record:?}");
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))?.contains(") Z ");
    assert!(gone, "the VMM process exited");
    Ok(())
}
