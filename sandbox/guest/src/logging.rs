//! The agent's log: plain lines on stderr (`<state>/guest.log` in kvm-test,
//! the console in a VM). `CRIUS_GUEST_LOG` sets the level (`error`, `warn`,
//! `info` (the default), `debug`, `trace`).

use tracing::Level;

/// The environment variable that sets the level.
pub const LEVEL_ENV: &str = "CRIUS_GUEST_LOG";

/// Installs the stderr subscriber; `role` starts every line.
pub fn init() {
    let level = std::env::var(LEVEL_ENV).ok().and_then(|v| parse_level(&v)).unwrap_or(Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false)
        .try_init();
}

fn parse_level(text: &str) -> Option<Level> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("debug"), Some(Level::DEBUG));
        assert_eq!(parse_level(" WARN "), Some(Level::WARN));
        assert_eq!(parse_level("loud"), None);
    }
}
