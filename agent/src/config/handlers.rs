//! `[runtime.handlers.NAME]`: the RuntimeClass handlers crius serves besides
//! the default handler `""` (always the namespace runtime).
//!
//! ```toml
//! [runtime.handlers.runc]      # a RuntimeClass whose handler is "runc"
//! type = "namespaces"
//! ```
//!
//! The types are `namespaces`, `kvm` and `kvm-test`:
//!
//! ```toml
//! [runtime.handlers.kvm-test]  # the guest agent as a host process, no VM
//! type = "kvm-test"
//! guest_agent = "/usr/local/lib/crius/crius-guest"   # default: crius-guest beside crius
//! ```
//!
//! `kvm` (crius's VMM) is not built into this crius yet: configuring it is
//! refused at start, so no pod can land on another runtime than the one it
//! asked for. `kvm-test` is never used unless configured.

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
    KvmTest {
        /// The guest agent binary; default `crius-guest` beside crius.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guest_agent: Option<std::path::PathBuf>,
    },
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
        if let HandlerConfig::Kvm {} = handler {
            return Err(ConfigError::Invalid {
                key: "runtime.handlers",
                value: format!("{name} = {handler:?}"),
                allowed: "type = \"namespaces\" or \"kvm-test\" (the kvm runtime is not built into this crius yet)"
                    .into(),
            });
        }
        if let HandlerConfig::KvmTest { guest_agent: Some(path) } = handler
            && !path.is_absolute()
        {
            return Err(ConfigError::Invalid {
                key: "runtime.handlers.guest_agent",
                value: format!("{:?}", path.display().to_string()),
                allowed: "an absolute path".into(),
            });
        }
    }
    Ok(())
}
