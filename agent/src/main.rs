//! The `crius` binary: parses flags, loads the config and serves CRI (or
//! prints the config, or asks a running crius for its health).

use std::process::ExitCode;

use clap::Parser;

use crius::cli::{Cli, Command};
use crius::{config, error, logging, server};

fn main() -> ExitCode {
    // `crius internal …`: processes crius starts itself (namespace helpers,
    // container monitor, init, exec, a VM's VMM), before any config,
    // logging or thread.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "internal") {
        if args.get(2).is_some_and(|a| a == "vmm") {
            return run_vmm(&args[3..]);
        }
        return crius_sandbox::ns::internal::run("crius", &args[2..]);
    }
    let cli = Cli::parse();
    if let Some(Command::Vm(vm)) = &cli.command {
        return crius::vm_cli::run(vm);
    }
    let config = match cli.effective_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("crius: error: {}", error::chain(&e));
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Health { wait } => health(&config.socket, std::time::Duration::from_secs(wait)),
        Command::Vm(_) => ExitCode::FAILURE,
        Command::Serve => {
            logging::init(config.log.level, config.log.format);
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("crius failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("crius").build()?;
    runtime.block_on(server::serve(config))?;
    // Blocking tasks (store writes) have finished with their RPCs; do not wait on strays.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// `crius health`: one line on stdout when crius answers, the reason on stderr when not.
fn health(socket: &std::path::Path, wait: std::time::Duration) -> ExitCode {
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(crius::health::wait(socket, wait)).map_err(|e| error::chain(&e)));
    match answer {
        Ok(health) => {
            println!("{}: {}", socket.display(), health.summary());
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("crius health: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `crius internal vmm DIR`: one VM (crius's VMM) from `<DIR>/config.json`,
/// serving `<DIR>/control.sock`.
fn run_vmm(args: &[std::ffi::OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("crius internal vmm: usage: crius internal vmm DIR");
        return ExitCode::from(2);
    };
    match crius_vmm::process::run(std::path::Path::new(dir)) {
        Ok(record) if record.clean => ExitCode::SUCCESS,
        Ok(record) => {
            eprintln!("crius internal vmm: {}", record.reason);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("crius internal vmm: {}", error::chain(&e));
            ExitCode::FAILURE
        }
    }
}
