//! Image references: parsing and normalisation the way containerd and docker
//! do it (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The registry that short names refer to.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Longest repository path docker accepts (registry excluded).
const MAX_NAME_LEN: usize = 255;
/// Longest tag.
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port when one was given (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    /// Tag; `latest` when the reference named neither tag nor digest.
    pub tag: Option<String>,
    /// Digest, when the reference pins one.
    pub digest: Option<Digest>,
}

/// A string that is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("invalid image reference {input:?}: empty")]
    Empty {
        /// The refused text.
        input: String,
    },
    /// The registry part is not a host name with an optional port.
    #[error("invalid image reference {input:?}: bad registry host {registry:?}")]
    Registry {
        /// The refused text.
        input: String,
        /// The registry part.
        registry: String,
    },
    /// The repository path breaks the naming rules.
    #[error("invalid image reference {input:?}: repository {repository:?} {reason}")]
    Repository {
        /// The refused text.
        input: String,
        /// The repository part.
        repository: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The tag breaks the naming rules.
    #[error("invalid image reference {input:?}: tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag {
        /// The refused text.
        input: String,
        /// The tag part.
        tag: String,
    },
    /// The digest part is not a valid digest.
    #[error("invalid image reference {input:?}")]
    Digest {
        /// The refused text.
        input: String,
        /// Why the digest was refused.
        #[source]
        source: DigestError,
    },
}

impl Reference {
    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest` for another digest of the same repository.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// `registry/repository:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|tag| format!("{}:{tag}", self.name()))
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_owned();
        if input.is_empty() {
            return Err(ReferenceError::Empty { input: owned() });
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest.parse().map_err(|source| ReferenceError::Digest { input: owned(), source })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A colon after the last slash starts the tag; one before it is a port.
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if rest.rfind('/').is_none_or(|slash| colon > slash) => {
                (&rest[..colon], Some(rest[colon + 1..].to_owned()))
            }
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty { input: owned() });
        }
        if is_hex64(name) {
            return Err(ReferenceError::Repository {
                input: owned(),
                repository: name.to_owned(),
                reason: "may not be a 64-character hex string (an image id)",
            });
        }
        let (registry, repository) = split_registry(name);
        if !valid_registry(registry) {
            return Err(ReferenceError::Registry { input: owned(), registry: registry.to_owned() });
        }
        let registry = if registry == "index.docker.io" { DOCKER_HUB } else { registry };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        check_repository(&repository).map_err(|reason| ReferenceError::Repository {
            input: owned(),
            repository: repository.clone(),
            reason,
        })?;
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(ReferenceError::Tag { input: owned(), tag: tag.clone() });
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Self { registry: registry.to_owned(), repository, tag, digest })
    }
}

/// Splits `name` into registry and repository like docker's
/// `splitDockerDomain`: the first component is a registry when it holds a
/// `.` or `:`, is `localhost`, or has upper-case letters.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':']) || first == "localhost" || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // [IPv6]:port
        let Some((addr, after)) = rest.split_once(']') else { return false };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("ok", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Repository rules from the distribution spec: lowercase path components
/// separated by `/`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_repository(repository: &str) -> Result<(), &'static str> {
    if repository.len() > MAX_NAME_LEN {
        return Err("is longer than 255 characters");
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lowercase");
    }
    for component in repository.split('/') {
        if !valid_component(component) {
            return Err("must be lowercase letters and digits separated by '.', '_', '__', '-' or '/'");
        }
    }
    Ok(())
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else { return false };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[start..i];
        let ok = matches!(run, "." | "_" | "__") || run.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_like_docker() {
        let digest = format!("sha256:{HEX}");
        let cases: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/img", "docker.io/user/img:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
            ("index.docker.io/user/img", "docker.io/user/img:latest"),
            ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
            ("localhost/img", "localhost/img:latest"),
            ("localhost:5000/a/b/c:tag", "localhost:5000/a/b/c:tag"),
            ("127.0.0.1:5000/img", "127.0.0.1:5000/img:latest"),
            ("[::1]:5000/img:x", "[::1]:5000/img:x"),
            ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
            ("my-registry.example.com/a.b/c_d/e__f/g--h:T_a.g-1", "my-registry.example.com/a.b/c_d/e__f/g--h:T_a.g-1"),
            ("Registry.Example/img", "Registry.Example/img:latest"),
        ];
        for (input, want) in cases {
            let got: Reference = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.to_string(), *want, "{input}");
        }
        let pinned = format!("busybox@{digest}");
        let r: Reference = pinned.parse().expect("digest ref");
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{digest}"));
        assert_eq!(r.object(), digest);
        let both = format!("localhost:5000/x/y:v1@{digest}");
        let r: Reference = both.parse().expect("tag and digest");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.to_string(), both);
        assert_eq!(r.object(), digest);
    }

    #[test]
    fn helpers() {
        let r: Reference = "busybox:1.36".parse().expect("valid");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.tagged().as_deref(), Some("docker.io/library/busybox:1.36"));
        assert_eq!(r.object(), "1.36");
        let digest = Digest::of(b"x");
        assert_eq!(r.with_digest(&digest), format!("docker.io/library/busybox@{digest}"));
        let round: Reference = r.to_string().parse().expect("round trip");
        assert_eq!(round, r);
    }

    #[test]
    fn refuses_invalid() {
        let long_tag = format!("img:{}", "a".repeat(129));
        let long_name = format!("{}/img", "a".repeat(256));
        let cases: &[&str] = &[
            "",
            ":tag",
            "@sha256:abc",
            "img@sha256:abc",
            "img@md5:abc",
            "UPPER",
            "user/Img",
            "img:",
            "img:-tag",
            "img:.tag",
            "img:ta/g",
            &long_tag,
            &long_name,
            "a//b",
            "/img",
            "img/",
            "a/-b",
            "a/b-",
            "a/b..c",
            "a/b___c",
            "a/b.-c",
            "host:port/img",
            "host:/img",
            "-host.com/img",
            "ho_st.com/img",
            "a b",
            HEX,
        ];
        for input in cases {
            let err = input.parse::<Reference>().expect_err(input);
            assert!(err.to_string().contains(&format!("{input:?}")), "{input}: {err}");
        }
    }
}
