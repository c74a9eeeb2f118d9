//! The runtime handlers crius serves, each backed by a runtime backend
//! (`crius_sandbox::backend`): the only place concrete backends are made.

use std::collections::BTreeMap;
use std::sync::Arc;

use crius_sandbox::backend::Backend;
use crius_sandbox::cgroups::CgroupMode;
use crius_sandbox::ns::backend::NsBackend;
use crius_sandbox::vm::{KvmBackend, Machine};

use crate::config::{Config, HandlerConfig};
use crate::error::AgentError;

/// Handlers by name; `""` is the default handler.
#[derive(Debug)]
pub struct Backends {
    handlers: BTreeMap<String, Arc<dyn Backend>>,
}

impl Backends {
    /// The handlers the configuration names.
    pub fn from_config(config: &Config, cgroups: &Result<CgroupMode, String>) -> Self {
        // Helper processes are this binary, re-executed.
        let self_exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let namespaces: Arc<dyn Backend> = Arc::new(NsBackend::new(&config.run_root, &self_exe, cgroups.clone()));
        let mut handlers = BTreeMap::from([(String::new(), Arc::clone(&namespaces))]);
        for (name, handler) in &config.runtime.handlers {
            match handler {
                HandlerConfig::Namespaces {} => {
                    handlers.insert(name.clone(), Arc::clone(&namespaces));
                }
                HandlerConfig::KvmTest { guest_agent } => {
                    let guest = guest_agent.clone().unwrap_or_else(|| self_exe.with_file_name("crius-guest"));
                    match tokio::runtime::Handle::try_current() {
                        Ok(runtime) => {
                            let backend = KvmBackend::new(
                                Machine::KvmTest,
                                &config.run_root,
                                &self_exe,
                                &guest,
                                cgroups.clone(),
                                runtime,
                            );
                            handlers.insert(name.clone(), Arc::new(backend));
                        }
                        Err(e) => {
                            tracing::error!(handler = %name, error = %e, "kvm-test needs crius's async runtime; not served")
                        }
                    }
                }
                // Config validation refuses the types that have no backend here.
                HandlerConfig::Kvm {} => {}
            }
        }
        Self { handlers }
    }

    /// The backend of `handler`; InvalidArgument naming the configured
    /// handlers when there is none.
    pub fn get(&self, handler: &str) -> Result<&Arc<dyn Backend>, AgentError> {
        self.handlers.get(handler).ok_or_else(|| AgentError::InvalidArgument {
            field: "runtime_handler",
            reason: format!(
                "runtime handler {handler:?} is not configured; configured: {}",
                self.handlers.keys().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// Every handler, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Backend>)> {
        self.handlers.iter().map(|(name, backend)| (name.as_str(), backend))
    }
}
