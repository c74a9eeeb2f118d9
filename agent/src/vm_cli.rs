//! `crius vm run`: crius's VMM in the foreground, for KVM checks and demos.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use crius_vmm::raw::{self, RawConfig, RawMode};
use crius_vmm::vcpu::StopReason;

use crate::cli::{RawModeArg, VmCommand, VmRunArgs};

/// Runs a `crius vm` subcommand.
pub fn run(command: &VmCommand) -> ExitCode {
    match command {
        VmCommand::Run(args) => run_raw(args),
    }
}

/// `crius vm run --raw FILE`: prints the guest's serial output as it comes,
/// then why each vCPU stopped, the exit counts and the run time. Exit code
/// 0 when every vCPU halted.
fn run_raw(args: &VmRunArgs) -> ExitCode {
    let image = match std::fs::read(&args.raw) {
        Ok(image) => image,
        Err(e) => {
            eprintln!("crius vm run: read {}: {e}", args.raw.display());
            return ExitCode::from(2);
        }
    };
    let config = RawConfig {
        image,
        mode: match args.mode {
            RawModeArg::Real => RawMode::Real,
            RawModeArg::Long => RawMode::Long,
        },
        mem_mib: args.mem_mib,
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
