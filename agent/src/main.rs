//! The `crius` binary: parses flags, loads the config and serves CRI.

use std::process::ExitCode;

use clap::Parser;

use crius::cli::{Cli, Command};
use crius::{config, error, logging, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
