//! CNI network configuration: the first valid file of the conf dir, in
//! lexical order (`.conflist`, or a single-plugin `.conf` / `.json`), as
//! libcni and kubelet's runtimes pick it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::NetError;

/// CNI spec versions crius speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The file it came from.
    pub path: PathBuf,
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub version: String,
    /// Each plugin's configuration object, in order.
    pub plugins: Vec<Value>,
}

impl NetworkList {
    /// Parses a `.conflist` (or, with `single`, a one-plugin `.conf`).
    pub fn parse(path: &Path, bytes: &[u8], single: bool) -> Result<Self, NetError> {
        let invalid = |why: String| NetError::Config(format!("{}: {why}", path.display()));
        let value: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let name = text("name").filter(|n| !n.is_empty()).ok_or_else(|| invalid("no \"name\"".into()))?;
        let version = text("cniVersion").ok_or_else(|| invalid("no \"cniVersion\"".into()))?;
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            return Err(invalid(format!(
                "cniVersion {version:?} is not supported ({})",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        let plugins = if single {
            vec![value.clone()]
        } else {
            value
                .get("plugins")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| invalid("no \"plugins\" list".into()))?
        };
        if plugins.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        for (i, plugin) in plugins.iter().enumerate() {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
            let plain = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !plain || kind.starts_with('.') {
                return Err(invalid(format!("plugin {i}: \"type\" {kind:?} is not a plugin name")));
            }
        }
        Ok(Self { path: path.to_owned(), name, version, plugins })
    }

    /// Each plugin's `type`.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().filter_map(|p| p.get("type").and_then(Value::as_str))
    }

    /// Whether the spec version has CHECK and prevResult on DEL (0.4.0 on).
    pub fn has_check(&self) -> bool {
        !self.version.starts_with("0.3.")
    }
}

/// The network list kubelet's runtimes would use: the first file of `dir`
/// that parses, in lexical order. Errors name every file that was refused.
pub fn load(dir: &Path) -> Result<NetworkList, NetError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| NetError::Config(format!("CNI config directory {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    let mut refused = Vec::new();
    for path in files {
        let single = match path.extension().and_then(|e| e.to_str()) {
            Some("conflist") => false,
            Some("conf" | "json") => true,
            _ => continue,
        };
        let parsed = std::fs::read(&path)
            .map_err(|e| NetError::Config(format!("{}: {e}", path.display())))
            .and_then(|bytes| NetworkList::parse(&path, &bytes, single));
        match parsed {
            Ok(list) => return Ok(list),
            Err(e) => refused.push(e.to_string()),
        }
    }
    let mut message = format!("no valid CNI network config in {}", dir.display());
    if !refused.is_empty() {
        message.push_str(&format!(" (refused: {})", refused.join("; ")));
    }
    Err(NetError::Config(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write config");
    }

    #[test]
    fn the_first_valid_file_wins_and_single_plugin_files_become_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "05-broken.conflist", "{ not json");
        write(dir.path(), "10-net.conf", r#"{"cniVersion":"0.4.0","name":"one","type":"bridge"}"#);
        write(dir.path(), "20-net.conflist", r#"{"cniVersion":"1.0.0","name":"two","plugins":[{"type":"bridge"}]}"#);
        write(dir.path(), "README", "ignored");
        let list = load(dir.path()).expect("load");
        assert_eq!(list.name, "one");
        assert_eq!(list.plugin_types().collect::<Vec<_>>(), ["bridge"]);
        assert!(list.has_check());
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load(dir.path()).expect_err("empty dir");
        assert!(err.to_string().contains("no valid CNI network config"), "{err}");
        for (text, why) in [
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#, "no \"name\""),
            (r#"{"cniVersion":"0.2.0","name":"x","plugins":[{"type":"bridge"}]}"#, "not supported"),
            (r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#, "empty"),
            (r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"../../bin/sh"}]}"#, "not a plugin name"),
        ] {
            let err = NetworkList::parse(Path::new("x.conflist"), text.as_bytes(), false).expect_err(text);
            assert!(err.to_string().contains(why), "{err}");
        }
    }
}
