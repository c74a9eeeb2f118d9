//! A real local registry for tests: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1, a free port, temp storage; and a small
//! image builder to fill it (layer tars, gzip and zstd, manifests, indexes).
//!
//! Without the binary (or `openssl`, for TLS), [`TestRegistry::start`] skips
//! through `testkit` and returns `None`, or panics when `TEST_REQUIRE`
//! names `tools`. The harness panics (with the
//! registry's answer) when the registry refuses an upload: that is a broken
//! test, not a result.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_images::Digest;

/// Where Debian installs distribution's registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// User of the htpasswd instance.
pub const HTPASSWD_USER: &str = "tester";
/// Password of [`HTPASSWD_USER`].
pub const HTPASSWD_PASSWORD: &str = "secret";
/// bcrypt (cost 4) of [`HTPASSWD_PASSWORD`].
const HTPASSWD_LINE: &str = "tester:$2b$04$rGlPaJznePkyhhH0Bgoz/uwE6nRD80IDUPrbrxfW1oDyVcaNKTgti";

/// OCI manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker uncompressed layer media type.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// One layer to push: the blob as the registry stores it (compressed or
/// not), its media type, and the uncompressed tar (whose sha256 is the diff
/// id in the image config).
pub type Layer<'a> = (Vec<u8>, &'a str, Vec<u8>);

/// A running registry; killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    access_log: PathBuf,
    app_log: PathBuf,
    auth: Option<(String, String)>,
    http: reqwest::Client,
    tls: bool,
}

/// What [`TestRegistry::push_image`] pushed.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Manifest digest.
    pub digest: Digest,
    /// Manifest media type.
    pub media_type: String,
    /// Config blob digest.
    pub config: Digest,
    /// Layer blob digests, in order.
    pub layers: Vec<Digest>,
    /// The config's `rootfs.diff_ids`, in order.
    pub diff_ids: Vec<Digest>,
    /// Config bytes.
    pub config_json: Vec<u8>,
}

impl TestRegistry {
    /// An open registry, or `None` (after a skip) without the binary.
    pub fn start(test: &str) -> Option<Self> {
        Self::launch(test, false, false)
    }

    /// A registry requiring basic auth ([`HTPASSWD_USER`]/[`HTPASSWD_PASSWORD`]).
    pub fn start_with_htpasswd(test: &str) -> Option<Self> {
        Self::launch(test, true, false)
    }

    /// A registry serving HTTPS with a self-signed certificate for
    /// 127.0.0.1 ([`TestRegistry::ca_pem`]), made with the `openssl` tool.
    pub fn start_with_tls(test: &str) -> Option<Self> {
        Self::launch(test, false, true)
    }

    /// The PEM certificate of a TLS registry (its own CA).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn launch(test: &str, htpasswd: bool, tls: bool) -> Option<Self> {
        let bin =
            std::env::var_os("CRIUS_TEST_REGISTRY_BIN").map_or_else(|| PathBuf::from(REGISTRY_BIN), PathBuf::from);
        if !testkit::require_tool(test, &bin, "docker-registry")
            || tls && !testkit::require_tool(test, "openssl", "openssl")
        {
            return None;
        }
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::try_launch(&bin, htpasswd, tls) {
                Ok(registry) => return Some(registry),
                Err(e) => last_error = e,
            }
        }
        panic!("{test}: cannot start {}: {last_error}", bin.display());
    }

    fn try_launch(bin: &Path, htpasswd: bool, tls: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: crius-test\n",
            storage.display()
        );
        let mut auth = None;
        if htpasswd {
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{HTPASSWD_LINE}\n")).map_err(|e| e.to_string())?;
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", file.display()));
            auth = Some((HTPASSWD_USER.to_owned(), HTPASSWD_PASSWORD.to_owned()));
        }
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let status = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("run openssl: {e}"))?;
            if !status.success() {
                return Err(format!("openssl failed: {status}"));
            }
            config.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let access_log = dir.path().join("access.log");
        let app_log = dir.path().join("registry.log");
        let stdout = std::fs::File::create(&access_log).map_err(|e| e.to_string())?;
        let stderr = std::fs::File::create(&app_log).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(tls)
            .build()
            .map_err(|e| e.to_string())?;
        let mut registry = Self { child, port, dir, access_log, app_log, auth, http, tls };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = registry.child.try_wait() {
                let log = std::fs::read_to_string(&registry.app_log).unwrap_or_default();
                return Err(format!("exited with {status}: {log}"));
            }
            if registry.answers() {
                return Ok(registry);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&registry.app_log).unwrap_or_default();
                return Err(format!("no answer on port {port} within 15 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v2/` gets an HTTP answer (200, or 401 with auth); for
    /// TLS, whether the registry logged that it listens and accepts connections.
    fn answers(&self) -> bool {
        if self.tls {
            let listening = std::fs::read_to_string(&self.app_log).is_ok_and(|log| log.contains("listening on"));
            return listening && TcpStream::connect(("127.0.0.1", self.port)).is_ok();
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", self.port);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && (head.ends_with(b"200") || head.ends_with(b"401"))
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` (`https://` for a TLS registry).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A scratch directory that lives as long as the registry.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Uploads `data` as a blob of `name` (monolithic upload); returns its digest.
    pub async fn push_blob(&self, name: &str, data: &[u8]) -> Digest {
        let digest = Digest::of(data);
        let start = format!("{}/v2/{name}/blobs/uploads/", self.url());
        let response = self.authed(self.http.post(&start)).send().await.expect("start upload");
        assert_eq!(response.status().as_u16(), 202, "start upload of {name}: {response:?}");
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).expect("upload location");
        let mut url = reqwest::Url::parse(&start).and_then(|base| base.join(location)).expect("upload URL");
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let response = self
            .authed(self.http.put(url))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("finish upload");
        assert_eq!(response.status().as_u16(), 201, "finish upload of {name}: {response:?}");
        digest
    }

    /// Stores `bytes` as manifest `reference` (tag or digest) of `name`; returns its digest.
    pub async fn push_manifest(&self, name: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Digest {
        let url = format!("{}/v2/{name}/manifests/{reference}", self.url());
        let response = self
            .authed(self.http.put(url))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 201, "put manifest {name}:{reference}: {body}");
        Digest::of(bytes)
    }

    /// Pushes a linux/`arch` image with `layers` (gzip when they start with
    /// the gzip magic, else plain tar), OCI or docker schema2 media types.
    /// The diff ids are the digests of the decompressed layers.
    pub async fn push_image(&self, name: &str, tag: &str, arch: &str, layers: &[&[u8]], docker: bool) -> PushedImage {
        let layers: Vec<Layer<'_>> = layers
            .iter()
            .map(|layer| {
                let gzip = layer.starts_with(&[0x1f, 0x8b]);
                let media_type = match (docker, gzip) {
                    (true, true) => DOCKER_LAYER_GZIP,
                    (true, false) => DOCKER_LAYER_TAR,
                    (false, true) => OCI_LAYER_GZIP,
                    (false, false) => OCI_LAYER_TAR,
                };
                let tar = if gzip { gunzip(layer).unwrap_or_else(|| layer.to_vec()) } else { layer.to_vec() };
                (layer.to_vec(), media_type, tar)
            })
            .collect();
        self.push_platform_image(name, tag, arch, &layers, None, !docker).await
    }

    /// Pushes an image for this machine's architecture ([`host_arch`]) with
    /// `layers` as given (blob, media type, uncompressed tar), the config
    /// `User` if any, with OCI (`oci`) or docker schema2 media types for the
    /// manifest and config.
    pub async fn push_image_with(
        &self,
        name: &str,
        tag: &str,
        layers: &[Layer<'_>],
        config_user: Option<&str>,
        oci: bool,
    ) -> PushedImage {
        self.push_platform_image(name, tag, host_arch(), layers, config_user, oci).await
    }

    /// [`TestRegistry::push_image_with`] for a linux/`arch` image.
    pub async fn push_platform_image(
        &self,
        name: &str,
        tag: &str,
        arch: &str,
        layers: &[Layer<'_>],
        config_user: Option<&str>,
        oci: bool,
    ) -> PushedImage {
        let diff_ids: Vec<Digest> = layers.iter().map(|(_, _, tar)| Digest::of(tar)).collect();
        let mut config = serde_json::json!({ "Cmd": ["/bin/sh"] });
        if let Some(user) = config_user {
            config["User"] = serde_json::json!(user);
        }
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>() },
        });
        let config = serde_json::to_vec(&config).expect("config json");
        self.push_image_parts(name, tag, layers, diff_ids, config, oci).await
    }

    /// Pushes `layers` and `config` as they are (the config may contradict
    /// the layers: for tests of what a puller refuses) and a manifest naming
    /// them. `diff_ids` is only recorded in the result.
    pub async fn push_image_parts(
        &self,
        name: &str,
        tag: &str,
        layers: &[Layer<'_>],
        diff_ids: Vec<Digest>,
        config: Vec<u8>,
        oci: bool,
    ) -> PushedImage {
        let mut layer_digests = Vec::new();
        let mut descriptors = Vec::new();
        for (blob, media_type, _) in layers {
            let digest = self.push_blob(name, blob).await;
            descriptors.push(serde_json::json!({
                "mediaType": media_type, "digest": digest.to_string(), "size": blob.len()
            }));
            layer_digests.push(digest);
        }
        let config_digest = self.push_blob(name, &config).await;
        let (media_type, config_type) = if oci { (OCI_MANIFEST, OCI_CONFIG) } else { (DOCKER_MANIFEST, DOCKER_CONFIG) };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": { "mediaType": config_type, "digest": config_digest.to_string(), "size": config.len() },
            "layers": descriptors,
        });
        let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest json");
        let digest = self.push_manifest(name, tag, media_type, &manifest).await;
        PushedImage {
            manifest,
            digest,
            media_type: media_type.to_owned(),
            config: config_digest,
            layers: layer_digests,
            diff_ids,
            config_json: config,
        }
    }

    /// Pushes an index (or docker manifest list) of `images` as `tag`; each
    /// entry is (image, architecture, variant).
    pub async fn push_index(
        &self,
        name: &str,
        tag: &str,
        images: &[(&PushedImage, &str, Option<&str>)],
        docker: bool,
    ) -> (Digest, Vec<u8>) {
        let manifests: Vec<_> = images
            .iter()
            .map(|(image, arch, variant)| {
                let mut platform = serde_json::json!({ "architecture": arch, "os": "linux" });
                if let Some(variant) = variant {
                    platform["variant"] = serde_json::json!(variant);
                }
                serde_json::json!({
                    "mediaType": image.media_type,
                    "digest": image.digest.to_string(),
                    "size": image.manifest.len(),
                    "platform": platform,
                })
            })
            .collect();
        let media_type = if docker { DOCKER_MANIFEST_LIST } else { OCI_INDEX };
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests });
        let bytes = serde_json::to_vec(&index).expect("index json");
        (self.push_manifest(name, tag, media_type, &bytes).await, bytes)
    }

    /// Overwrites the stored bytes of blob `digest` with `bytes` (same
    /// length, so the registry still serves it whole): the registry then
    /// serves content that does not match its digest, which no upload can do.
    pub fn tamper_blob(&self, digest: &Digest, bytes: &[u8]) {
        let hex = digest.hex();
        let data =
            self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data");
        let old = std::fs::metadata(&data).expect("stored blob").len();
        assert_eq!(old, bytes.len() as u64, "tamper_blob keeps the length");
        std::fs::write(&data, bytes).expect("overwrite stored blob");
    }

    /// The access log lines so far (one per request, written after each
    /// response completes; waits briefly for the log to settle).
    pub fn access_log(&self) -> Vec<String> {
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            if now == last || Instant::now() > deadline {
                return now.lines().map(str::to_owned).collect();
            }
            last = now;
        }
    }

    /// Requests whose log line holds `"METHOD <path_fragment>`.
    pub fn request_count(&self, method: &str, path_fragment: &str) -> usize {
        let needle = format!("\"{method} {path_fragment}");
        self.access_log().iter().filter(|line| line.contains(&needle)).count()
    }

    /// How many `GET /v2/<any>/blobs/<digest>` requests the registry served
    /// (any status).
    pub fn blob_get_count(&self, digest: &Digest) -> usize {
        let blob = format!("/blobs/{digest}");
        self.access_log()
            .iter()
            .filter(|line| {
                line.contains("\"GET /v2/")
                    && line.split_once(&blob).is_some_and(|(_, rest)| rest.starts_with(' ') || rest.starts_with('?'))
            })
            .count()
    }

    /// The registry's own log (stderr), for failure messages.
    pub fn app_log(&self) -> String {
        std::fs::read_to_string(&self.app_log).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Go name of this machine's CPU architecture, as image platforms
/// spell it (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A plain tar of regular files `(path, content, mode)`, preceded by the
/// parent directories they need (mode 0755), in the order given. Paths are
/// relative (`etc/hostname`).
pub fn layer_tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for (path, content, mode) in files {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            if !dirs.contains(&dir) {
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_mtime(1_700_000_000);
                header.set_uid(0);
                header.set_gid(0);
                builder.append_data(&mut header, format!("{dir}/"), std::io::empty()).expect("tar directory");
                dirs.push(dir);
            }
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(*mode);
        header.set_size(content.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, *content).expect("tar file");
    }
    builder.into_inner().expect("finish tar")
}

/// `data` gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `data` zstd-compressed.
pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// A layer of `tar` as an OCI gzip layer.
pub fn gzip_layer(tar: &[u8]) -> Layer<'static> {
    (gzip(tar), OCI_LAYER_GZIP, tar.to_vec())
}

/// A layer of `tar` as an OCI zstd layer.
pub fn zstd_layer(tar: &[u8]) -> Layer<'static> {
    (zstd(tar), OCI_LAYER_ZSTD, tar.to_vec())
}

/// A layer of `tar` as an OCI uncompressed layer.
pub fn tar_layer(tar: &[u8]) -> Layer<'static> {
    (tar.to_vec(), OCI_LAYER_TAR, tar.to_vec())
}

/// The decompressed bytes of a gzip stream, or `None` if it is not one.
fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).ok()?;
    Some(out)
}
