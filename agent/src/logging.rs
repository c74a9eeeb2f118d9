//! The tracing subscriber: installed once, by the binary, never by libraries.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogLevel};

/// Installs a stderr subscriber. `CRIUS_LOG` (tracing filter syntax), when
/// set, replaces the level for fine-grained debugging.
pub fn init(level: LogLevel, format: LogFormat) {
    let filter = std::env::var("CRIUS_LOG").ok().and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| {
        // Keep the HTTP/2 stack quiet unless everything is asked for.
        let quiet = if level == LogLevel::Trace { "" } else { ",h2=warn,hyper=warn,hyper_util=warn,tower=warn" };
        EnvFilter::new(format!("{}{quiet}", level.as_str()))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("crius: logging already initialised: {e}");
    }
}
