//! The `crius` binary: parses flags, loads the config and serves CRI.

use std::process::ExitCode;

use clap::Parser;

use crius::cli::{Cli, Command, Internal};
use crius::{config, error, logging, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Internal processes run before any config, logging or threads.
    if let Some(Command::Internal(internal)) = &cli.command {
        return run_internal(internal);
    }
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
        Command::Internal(_) | Command::Vm(_) => ExitCode::FAILURE,
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

fn run_internal(internal: &Internal) -> ExitCode {
    use crius_sandbox::ns::pod::{PodNamespaces, pin_namespaces};
    let result = match internal {
        Internal::PodInit => crius_sandbox::ns::pod::pod_init().map_err(|e| e.to_string()),
        Internal::PinNs { dir, net, ipc, uts, pid, hostname, sysctls } => {
            let sysctls = sysctls
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<Option<std::collections::BTreeMap<_, _>>>();
            match sysctls {
                Some(sysctls) => pin_namespaces(
                    dir,
                    PodNamespaces { net: *net, ipc: *ipc, uts: *uts, pid: *pid },
                    hostname.as_deref(),
                    &sysctls,
                )
                .map_err(|e| error::chain(&e)),
                None => Err("--sysctl takes KEY=VALUE".to_owned()),
            }
        }
        Internal::Monitor { bundle } => {
            let exe = std::path::PathBuf::from("/proc/self/exe");
            Err(error::chain(&crius_sandbox::ns::monitor::run(bundle, &exe)))
        }
        Internal::Vmm { dir } => match crius_vmm::process::run(dir) {
            Ok(record) if record.clean => Ok(()),
            Ok(record) => Err(record.reason),
            Err(e) => Err(error::chain(&e)),
        },
        Internal::Init { bundle } => Err(error::chain(&crius_sandbox::ns::init::run(bundle))),
        Internal::Exec { bundle, request } => {
            use crius_sandbox::ns::exec;
            let failure = match exec::ExecRequest::load(request) {
                Ok(request) => exec::run(bundle, &request),
                Err(e) => e,
            };
            eprintln!("crius internal exec: {}", failure.report());
            return ExitCode::from(u8::try_from(failure.exit_code()).unwrap_or(255));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("crius internal: {message}");
            ExitCode::FAILURE
        }
    }
}
