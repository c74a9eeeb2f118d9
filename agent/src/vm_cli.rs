//! `crius vm run`: crius's VMM in the foreground, for KVM checks and demos.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crius_vmm::raw::{self, RawConfig, RawMode};
use crius_vmm::vcpu::StopReason;
use crius_vmm::vm::{self, Vm, VmConfig};

use crate::cli::{RawModeArg, VmCommand, VmRunArgs};

/// Runs a `crius vm` subcommand.
pub fn run(command: &VmCommand) -> ExitCode {
    match command {
        VmCommand::Run(args) => match (&args.raw, &args.kernel) {
            (Some(raw), _) => run_raw(raw, args),
            (None, Some(kernel)) => run_kernel(kernel, args),
            (None, None) => match crius_vmm::host::default_guest_kernel() {
                Some(kernel) => run_kernel(&kernel, args),
                None => {
                    eprintln!(
                        "crius vm run: no --kernel and no /boot/vmlinuz-*-cloud-amd64 (Debian package linux-image-cloud-amd64)"
                    );
                    ExitCode::from(2)
                }
            },
        },
    }
}

/// `crius vm run --raw FILE`: prints the guest's serial output as it comes,
/// then why each vCPU stopped, the exit counts and the run time. Exit code
/// 0 when every vCPU halted.
fn run_raw(file: &Path, args: &VmRunArgs) -> ExitCode {
    let image = match std::fs::read(file) {
        Ok(image) => image,
        Err(e) => {
            eprintln!("crius vm run: read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let config = RawConfig {
        image,
        mode: match args.mode {
            RawModeArg::Real => RawMode::Real,
            RawModeArg::Long => RawMode::Long,
        },
        mem_mib: args.mem_mib.unwrap_or(16),
        vcpus: args.vcpus,
        timeout: Duration::from_secs(args.timeout),
    };
    let sink = Box::new(|bytes: &[u8]| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    });
    match raw::run(&config, sink) {
        Ok(outcome) => {
            if outcome.serial.last().is_some_and(|b| *b != b'\n') {
                println!();
            }
            print!("{}", raw::report(&outcome));
            if outcome.reasons.iter().all(|r| *r == StopReason::Halted) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("crius vm run: {}", crate::error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `crius vm run --kernel FILE`: checks the host, boots the kernel with its
/// console on stdout, and says in one line (on stderr) how the guest ended.
/// Exit code 0 when the guest powered off.
fn run_kernel(kernel: &Path, args: &VmRunArgs) -> ExitCode {
    let kvm = match crius_vmm::host::check_linux_guest(kernel) {
        Ok(kvm) => kvm,
        Err(e) if args.force => {
            eprintln!("crius vm run: host check: {e} (--force: booting anyway)");
            match crius_vmm::host::open_kvm() {
                Ok(kvm) => kvm,
                Err(e) => {
                    eprintln!("crius vm run: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Err(e) => {
            eprintln!("crius vm run: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        mem_mib: args.mem_mib.unwrap_or(256),
        vcpus: args.vcpus,
        console_log: None,
        extract_vmlinux: None,
        devices: Default::default(),
    };
    let (console, seen) = Watch::new(args.until.clone());
    let mut vm = match Vm::start_with_console(&kvm, &config, Box::new(console)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("crius vm run: {}", crate::error::chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let kind = vm.kvm_kind();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let stopped = loop {
        if let Some(reason) = vm.wait(Some(Duration::from_millis(50))) {
            break Some(reason);
        }
        if seen.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break None;
        }
    };
    let exit = vm.shutdown();
    let _ = std::io::stdout().flush();
    let line = match (&stopped, &args.until) {
        (Some(reason), _) => vm::explain(reason, kind),
        (None, Some(text)) if seen.load(Ordering::SeqCst) => format!("the console printed {text:?}: stopped by crius"),
        (None, _) => format!("guest still running after {} s: stopped by crius", args.timeout),
    };
    eprintln!("crius vm run: {line} ({} exits, {:.1} s)", exit.stats.total(), exit.elapsed.as_secs_f64());
    if stopped == Some(StopReason::PowerOff) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Stdout that notices when the guest's console prints a text.
struct Watch {
    text: Option<Vec<u8>>,
    tail: Vec<u8>,
    seen: Arc<AtomicBool>,
}

impl Watch {
    fn new(text: Option<String>) -> (Self, Arc<AtomicBool>) {
        let seen = Arc::new(AtomicBool::new(false));
        (Self { text: text.map(String::into_bytes), tail: Vec::new(), seen: Arc::clone(&seen) }, seen)
    }
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(text) = &self.text {
            self.tail.extend_from_slice(buf);
            if self.tail.windows(text.len().max(1)).any(|w| w == text.as_slice()) {
                self.seen.store(true, Ordering::SeqCst);
            }
            let keep = self.tail.len().saturating_sub(text.len());
            self.tail.drain(..keep);
        }
        std::io::stdout().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}
