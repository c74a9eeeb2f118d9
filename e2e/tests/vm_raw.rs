//! `crius vm run --raw`: the KVM smoke test of a host, on this host's own
//! `/dev/kvm` (hardware KVM or PVM).

use crius_e2e::run_crius;
use crius_vmm::raw::guests;

fn run_raw(test: &str, image: &[u8], extra: &[&str]) -> anyhow::Result<Option<(bool, String)>> {
    if !testkit::require_kvm(test) {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("guest.bin");
    std::fs::write(&file, image)?;
    let mut args = vec!["vm", "run", "--raw", file.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    let output = run_crius(&args)?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(output.stderr.is_empty(), "{}", String::from_utf8_lossy(&output.stderr));
    Ok(Some((output.status.success(), stdout)))
}

#[test]
fn real_mode_hello_prints_its_serial_output_and_exit_statistics() -> anyhow::Result<()> {
    let test = "real_mode_hello_prints_its_serial_output_and_exit_statistics";
    let Some((ok, stdout)) = run_raw(test, guests::HELLO_REAL, &[])? else { return Ok(()) };
    assert!(ok, "{stdout}");
    assert!(stdout.starts_with("Hello from VM\n"), "{stdout}");
    assert!(stdout.contains("vcpu 0: Halted"), "{stdout}");
    assert!(stdout.lines().any(|l| l.split_whitespace().eq(["IoOut", "14"])), "{stdout}");
    assert!(stdout.lines().any(|l| l.split_whitespace().eq(["Hlt", "1"])), "{stdout}");
    assert!(stdout.contains("run time: "), "{stdout}");
    Ok(())
}

#[test]
fn long_mode_hello_runs_64_bit_code() -> anyhow::Result<()> {
    let test = "long_mode_hello_runs_64_bit_code";
    let Some((ok, stdout)) = run_raw(test, guests::HELLO_LONG, &["--mode", "long", "--mem", "4", "--vcpus", "2"])?
    else {
        return Ok(());
    };
    assert!(ok, "{stdout}");
    assert_eq!(stdout.matches("Hello from 64-bit long mode\n").count(), 2, "{stdout}");
    assert!(stdout.contains("vcpu 1: Halted"), "{stdout}");
    assert!(stdout.lines().any(|l| l.split_whitespace().eq(["IoOut", "56"])), "{stdout}");
    Ok(())
}

#[test]
fn a_guest_that_spins_is_stopped_and_reported() -> anyhow::Result<()> {
    let test = "a_guest_that_spins_is_stopped_and_reported";
    let Some((ok, stdout)) = run_raw(test, &[0xeb, 0xfe], &["--timeout", "1"])? else { return Ok(()) };
    assert!(!ok, "a stopped guest is a failure: {stdout}");
    assert!(stdout.contains("vcpu 0: Stopped"), "{stdout}");
    Ok(())
}
