//! `crius vm run --kernel`: the host check, and the Debian cloud kernel
//! through crius's own boot path on this host's `/dev/kvm`.

use std::path::PathBuf;

use crius_e2e::run_crius;

/// The installed Debian cloud kernel (`.ci/setup-host` installs it).
fn cloud_kernel(test: &str) -> Option<PathBuf> {
    let found = std::fs::read_dir("/boot").ok().and_then(|d| {
        d.flatten().map(|e| e.path()).find(|p| {
            let name = p.to_string_lossy();
            name.contains("/vmlinuz-") && name.ends_with("-cloud-amd64")
        })
    });
    if found.is_none() {
        testkit::skip(
            test,
            testkit::TOOLS,
            "needs /boot/vmlinuz-*-cloud-amd64 (Debian package linux-image-cloud-amd64)",
        );
    }
    found
}

fn on_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

#[test]
fn the_stock_kernel_prints_its_banner_and_crius_says_why_it_stops() -> anyhow::Result<()> {
    let test = "the_stock_kernel_prints_its_banner_and_crius_says_why_it_stops";
    if !testkit::require_kvm(test) {
        return Ok(());
    }
    let Some(kernel) = cloud_kernel(test) else { return Ok(()) };
    let kernel = kernel.to_str().expect("utf8");
    // Without --force the host check answers, in one line, before booting.
    let refused = run_crius(&["vm", "run", "--kernel", kernel, "--timeout", "5"])?;
    let stderr = String::from_utf8(refused.stderr)?;
    if on_pvm() {
        assert!(!refused.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("PVM") && stderr.contains("CONFIG_PVM_GUEST"), "{stderr}");
        assert!(refused.stdout.is_empty(), "nothing booted");
    }
    // With --force the kernel boots through crius's path as far as it can.
    // Not crius's default command line: `quiet` hides the banner, and only
    // the early console prints before PVM stops the kernel.
    let cmdline = "console=ttyS0 earlyprintk=serial reboot=t panic=-1";
    let args =
        ["vm", "run", "--kernel", kernel, "--cmdline", cmdline, "--force", "--until", "BIOS-e820", "--timeout", "60"];
    let forced = run_crius(&args)?;
    let stdout = String::from_utf8_lossy(&forced.stdout);
    let stderr = String::from_utf8(forced.stderr)?;
    assert!(stdout.contains("Linux version"), "{stdout}\n{stderr}");
    assert!(stdout.contains("BIOS-e820"), "the e820 map reached the kernel: {stdout}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("crius vm run: the console printed \"BIOS-e820\""), "{stderr}");
    Ok(())
}
