//! Manifest media types, parsing (OCI and docker schema2 share the OCI
//! structs) and platform selection from an index.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema1 signed manifest (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema1 manifest (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// The `Accept` header for manifest requests: every type crius can pull.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Schema1 or an unknown media type.
    #[error("unsupported manifest media type {media_type:?}")]
    Unsupported {
        /// The media type.
        media_type: String,
    },
    /// The JSON does not fit the media type.
    #[error("invalid {media_type} document")]
    Parse {
        /// The media type it was parsed as.
        media_type: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(Box<ImageManifest>),
    /// A multi-platform index or manifest list.
    Index(Box<ImageIndex>),
}

/// Whether `media_type` is an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// Whether `media_type` is a single-image manifest.
pub fn is_image_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// Media type to use for a manifest: the `Content-Type` (parameters
/// stripped) unless it is missing or generic JSON, else the document's own
/// `mediaType`, else guessed from its shape (`manifests` means an index).
pub fn detect_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let header = content_type.map(|ct| ct.split(';').next().unwrap_or(ct).trim().to_ascii_lowercase());
    if let Some(header) = header.filter(|h| !matches!(h.as_str(), "" | "application/json" | "text/plain"))
        && header != "application/octet-stream"
    {
        return header;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default, rename = "mediaType")]
        media_type: Option<String>,
        #[serde(default, rename = "schemaVersion")]
        schema_version: Option<u32>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe { media_type: Some(media_type), .. }) => media_type,
        Ok(Probe { schema_version: Some(1), .. }) => DOCKER_SCHEMA1.to_owned(),
        Ok(Probe { manifests: Some(_), .. }) => OCI_INDEX.to_owned(),
        _ => OCI_MANIFEST.to_owned(),
    }
}

/// Refuses media types crius cannot pull (schema1 and anything unknown).
pub fn check_supported(media_type: &str) -> Result<(), ManifestError> {
    if is_index(media_type) || is_image_manifest(media_type) {
        Ok(())
    } else {
        Err(ManifestError::Unsupported { media_type: crate::shown::cut(media_type) })
    }
}

/// Parses `bytes` as `media_type`.
pub fn parse_manifest(media_type: &str, bytes: &[u8]) -> Result<Manifest, ManifestError> {
    check_supported(media_type)?;
    let parse_err = |source| ManifestError::Parse { media_type: crate::shown::cut(media_type), source };
    if is_index(media_type) {
        serde_json::from_slice(bytes).map(|index| Manifest::Index(Box::new(index))).map_err(parse_err)
    } else {
        serde_json::from_slice(bytes).map(|image| Manifest::Image(Box::new(image))).map_err(parse_err)
    }
}

/// Largest image config accepted, checked against the manifest's descriptor
/// before the config is downloaded. The same as containers/image's
/// `MaxConfigBodySize` (CRI-O, podman): real configs are kilobytes, the
/// largest (long histories) a few hundred.
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// Parses an image configuration blob (OCI or docker; same JSON).
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ManifestError> {
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
        media_type: "application/vnd.oci.image.config.v1+json".into(),
        source,
    })
}

/// Picks the manifest for `os`/`arch`(/`variant`) from `index`.
///
/// Entries without a variant count as the architecture's default (`v1` on
/// amd64, `v8` on arm64, `v7` on arm). With no variant asked for, the
/// default is asked for. An exact variant match wins; otherwise the highest
/// older variant the machine can run (`v7` asked: `v6` before `v5`).
pub fn select_platform(index: &ImageIndex, os: &str, arch: &str, variant: Option<&str>) -> Option<Descriptor> {
    let arch = normalise_arch(arch);
    let wanted = variant.map(str::to_owned).or_else(|| default_variant(arch).map(str::to_owned));
    let mut best: Option<(Rank, &Descriptor)> = None;
    for descriptor in index.manifests() {
        let Some(platform) = descriptor.platform() else { continue };
        if platform.os().to_string() != os || normalise_arch(&platform.architecture().to_string()) != arch {
            continue;
        }
        let have = platform.variant().clone().or_else(|| default_variant(arch).map(str::to_owned));
        let rank = match (&wanted, &have) {
            (None, None) => Rank::Exact,
            (None, Some(_)) => Rank::Other,
            (Some(w), Some(h)) if w == h => Rank::Exact,
            (Some(w), Some(h)) => match (variant_level(w), variant_level(h)) {
                (Some(w), Some(h)) if h < w => Rank::Compatible(h),
                _ => continue,
            },
            (Some(_), None) => Rank::Other,
        };
        if best.as_ref().is_none_or(|(b, _)| rank > *b) {
            best = Some((rank, descriptor));
        }
    }
    best.map(|(_, d)| d.clone())
}

/// How well an entry fits; larger is better.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Rank {
    /// Some variant we cannot judge.
    Other,
    /// An older variant of the one asked for, with its level.
    Compatible(f64),
    /// The variant asked for.
    Exact,
}

fn normalise_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "armhf" | "armel" => "arm",
        "i386" | "i686" => "386",
        other => other,
    }
}

fn default_variant(arch: &str) -> Option<&'static str> {
    match arch {
        "amd64" => Some("v1"),
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    }
}

/// `v8.2` -> 8.2.
fn variant_level(variant: &str) -> Option<f64> {
    variant.strip_prefix('v')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                let mut platform = serde_json::json!({ "os": os, "architecture": arch });
                if let Some(v) = variant {
                    platform["variant"] = serde_json::json!(v);
                }
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": format!("sha256:{:064x}", i),
                    "size": 1,
                    "platform": platform,
                })
            })
            .collect();
        let json = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        serde_json::from_value(json).expect("index")
    }

    fn pick(idx: &ImageIndex, arch: &str, variant: Option<&str>) -> Option<usize> {
        let d = select_platform(idx, "linux", arch, variant)?;
        usize::from_str_radix(d.digest().digest(), 16).ok()
    }

    #[test]
    fn selects_platform() {
        let idx = index(&[
            ("linux", "arm", Some("v5")),
            ("linux", "amd64", Some("v3")),
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("windows", "amd64", None),
            ("linux", "arm64", Some("v8")),
            ("unknown", "unknown", None),
            ("linux", "arm", Some("v7")),
        ]);
        assert_eq!(pick(&idx, "amd64", None), Some(2));
        assert_eq!(pick(&idx, "x86_64", Some("v1")), Some(2));
        assert_eq!(pick(&idx, "amd64", Some("v3")), Some(1));
        assert_eq!(pick(&idx, "amd64", Some("v2")), Some(2), "v2 asked: v1 is compatible, v3 is not");
        assert_eq!(pick(&idx, "arm64", None), Some(5));
        assert_eq!(pick(&idx, "arm", None), Some(7));
        assert_eq!(pick(&idx, "arm", Some("v6")), Some(3));
        assert_eq!(pick(&idx, "riscv64", None), None);
        assert_eq!(select_platform(&idx, "windows", "amd64", None).map(|d| d.size()), Some(1));

        let only_v5 = index(&[("linux", "arm", Some("v5")), ("linux", "arm", Some("v8"))]);
        assert_eq!(pick(&only_v5, "arm", Some("v7")), Some(0));
        let only_v3 = index(&[("linux", "amd64", Some("v3"))]);
        assert_eq!(pick(&only_v3, "amd64", None), None, "a v1 machine cannot run v3");
    }

    #[test]
    fn media_types() {
        assert_eq!(detect_media_type(Some("application/vnd.oci.image.index.v1+json; charset=x"), b"{}"), OCI_INDEX);
        let docker = format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}"}}"#);
        assert_eq!(detect_media_type(Some("application/json"), docker.as_bytes()), DOCKER_MANIFEST);
        assert_eq!(detect_media_type(None, br#"{"schemaVersion":1,"name":"x"}"#), DOCKER_SCHEMA1);
        assert_eq!(detect_media_type(None, br#"{"schemaVersion":2,"manifests":[]}"#), OCI_INDEX);
        for refused in [DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1, "text/html"] {
            assert!(matches!(check_supported(refused), Err(ManifestError::Unsupported { .. })), "{refused}");
        }
    }

    #[test]
    fn parses_docker_schema2() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
                "config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,
                  "digest":"sha256:{0}"}},
                "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":3,
                  "digest":"sha256:{0}"}}]}}"#,
            "a".repeat(64)
        );
        let Manifest::Image(m) = parse_manifest(DOCKER_MANIFEST, json.as_bytes()).expect("parse") else {
            panic!("not an image manifest")
        };
        assert_eq!(m.layers().len(), 1);
        assert!(matches!(parse_manifest(DOCKER_MANIFEST_LIST, b"{}"), Err(ManifestError::Parse { .. })));
        let config = parse_config(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#)
            .expect("config");
        assert_eq!(config.architecture().to_string(), "amd64");
    }
}
