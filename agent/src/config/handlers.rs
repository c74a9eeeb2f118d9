//! `[runtime.handlers.NAME]`: the RuntimeClass handlers crius serves besides
//! the default handler `""` (always the namespace runtime).
//!
//! ```toml
//! [runtime.handlers.runc]      # a RuntimeClass whose handler is "runc"
//! type = "namespaces"
//! ```
//!
//! The types are `namespaces`, `kvm` and `kvm-test`. The KVM backends are
//! not built into this crius yet: configuring them is refused at start, so
//! no pod can silently land on another runtime than the one it asked for.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// One handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HandlerConfig {
    /// Linux namespaces on the node.
    Namespaces {},
    /// A VM per pod.
    Kvm {},
    /// The KVM backend with the VM replaced by a host process.
    KvmTest {},
}

/// Checks the handler names and types.
pub(super) fn validate(handlers: &std::collections::BTreeMap<String, HandlerConfig>) -> Result<(), ConfigError> {
    for (name, handler) in handlers {
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid_name {
            return Err(ConfigError::Invalid {
                key: "runtime.handlers",
                value: format!("{name:?}"),
                allowed: "handler names as RuntimeClass takes them: 1 to 63 of [a-z0-9-], not starting or \
                          ending with '-' (the default handler \"\" needs no entry)"
                    .into(),
            });
        }
        if let HandlerConfig::Kvm {} | HandlerConfig::KvmTest {} = handler {
            return Err(ConfigError::Invalid {
                key: "runtime.handlers",
                value: format!("{name} = {handler:?}"),
                allowed: "type = \"namespaces\" (the kvm and kvm-test runtimes are not built into this crius yet)"
                    .into(),
            });
        }
    }
    Ok(())
}
