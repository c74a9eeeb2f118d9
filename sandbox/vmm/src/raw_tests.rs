use std::path::Path;
use std::process::Command;

use super::*;

fn kvm_here(test: &str) -> bool {
    testkit::require_kvm(test)
}

fn config(image: &[u8], mode: RawMode) -> RawConfig {
    RawConfig { image: image.to_vec(), mode, mem_mib: 4, vcpus: 1, timeout: Duration::from_secs(10) }
}

#[test]
fn real_mode_guest_says_hello_and_halts() {
    if !kvm_here("real_mode_guest_says_hello_and_halts") {
        return;
    }
    let out = run(&config(guests::HELLO_REAL, RawMode::Real), Box::new(|_| {})).expect("run");
    assert_eq!(String::from_utf8_lossy(&out.serial), "Hello from VM\n");
    assert_eq!(out.reasons, vec![StopReason::Halted]);
    assert_eq!(out.stats.counts.get("IoOut"), Some(&14));
    assert_eq!(out.stats.counts.get("Hlt"), Some(&1));
}

#[test]
fn long_mode_guest_runs_64_bit_code() {
    if !kvm_here("long_mode_guest_runs_64_bit_code") {
        return;
    }
    let out = run(&config(guests::HELLO_LONG, RawMode::Long), Box::new(|_| {})).expect("run");
    assert_eq!(String::from_utf8_lossy(&out.serial), "Hello from 64-bit long mode\n");
    assert_eq!(out.reasons, vec![StopReason::Halted]);
    let text = report(&out);
    assert!(text.contains("IoOut") && text.contains("Hlt") && text.contains("run time"), "{text}");
}

#[test]
fn every_vcpu_runs_the_image() {
    if !kvm_here("every_vcpu_runs_the_image") {
        return;
    }
    let mut c = config(guests::HELLO_REAL, RawMode::Real);
    c.vcpus = 2;
    let out = run(&c, Box::new(|_| {})).expect("run");
    assert_eq!(out.reasons, vec![StopReason::Halted, StopReason::Halted]);
    assert_eq!(out.serial.len(), 28);
}

#[test]
fn a_guest_that_never_halts_is_stopped_at_the_deadline() {
    if !kvm_here("a_guest_that_never_halts_is_stopped_at_the_deadline") {
        return;
    }
    let mut c = config(&[0xeb, 0xfe], RawMode::Real); // jmp .
    c.timeout = Duration::from_millis(300);
    let start = Instant::now();
    let out = run(&c, Box::new(|_| {})).expect("run");
    assert_eq!(out.reasons, vec![StopReason::Stopped]);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[test]
fn images_that_do_not_fit_are_refused() {
    let mut c = config(&vec![0; 2 << 20], RawMode::Real);
    c.mem_mib = 1;
    // Checked before KVM is touched only when KVM opens; either way no run.
    assert!(run(&c, Box::new(|_| {})).is_err());
    c.vcpus = 0;
    assert!(matches!(run(&c, Box::new(|_| {})), Err(RawError::Vcpus(0))));
}

/// The byte arrays are the assembled `guests/*.S`.
#[test]
fn guest_bytes_match_their_assembly_source() {
    let test = "guest_bytes_match_their_assembly_source";
    if !testkit::require_tool(test, "as", "binutils") || !testkit::require_tool(test, "ld", "binutils") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests");
    for (name, bytes) in [("hello_real", guests::HELLO_REAL), ("hello_long", guests::HELLO_LONG)] {
        let obj = dir.path().join(format!("{name}.o"));
        let bin = dir.path().join(format!("{name}.bin"));
        let ok = Command::new("as").arg("--64").arg("-o").arg(&obj).arg(src.join(format!("{name}.S"))).status();
        assert!(ok.expect("as").success(), "as {name}");
        let ok = Command::new("ld").args(["-Ttext=0", "--oformat=binary", "-o"]).arg(&bin).arg(&obj).status();
        assert!(ok.expect("ld").success(), "ld {name}");
        assert_eq!(std::fs::read(&bin).expect("read"), bytes, "{name}");
    }
}
