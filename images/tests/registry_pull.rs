//! Pulling from a real local registry (distribution 2.8).

use std::time::Duration;

use crius_e2e::registry::{OCI_INDEX, TestRegistry};
use crius_images::Digest;
use crius_images::digest::Hasher;
use crius_images::reference::Reference;
use crius_images::registry::manifest::{self, Manifest};
use crius_images::registry::{Credentials, RegistryClient, RegistryConfig, RegistryError, select_platform};
use futures_util::StreamExt;

fn client(hosts_dir: Option<&std::path::Path>) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        hosts_dir: hosts_dir.map(ToOwned::to_owned),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        user_agent: "crius-test".to_owned(),
    })
}

fn reference(text: &str) -> Reference {
    text.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic, poorly compressible test data.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed) | 0x9e37_0000;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect()
}

async fn read_all(mut blob: crius_images::registry::BlobResponse) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = blob.stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

#[tokio::test]
async fn resolve_by_tag_and_by_digest() {
    let Some(registry) = TestRegistry::start("resolve_by_tag_and_by_digest") else { return };
    let layer = data(2048, 1);
    let image = registry.push_image("team/app", "v1", "amd64", &[&layer], false).await;
    let client = client(None);
    let creds = Credentials::Anonymous;

    let by_tag = reference(&format!("{}/team/app:v1", registry.host()));
    let resolved = client.resolve(&by_tag, &creds).await.expect("resolve by tag");
    assert_eq!(resolved.digest, image.digest);
    assert_eq!(resolved.media_type, manifest::OCI_MANIFEST);
    assert_eq!(resolved.bytes.as_ref(), image.manifest.as_slice());
    assert_eq!(resolved.endpoint.as_str(), format!("{}/v2", registry.url()));
    let Manifest::Image(parsed) = resolved.manifest().expect("parse") else { panic!("not an image manifest") };
    assert_eq!(parsed.layers()[0].digest().to_string(), image.layers[0].to_string());

    let by_digest = reference(&format!("{}/team/app@{}", registry.host(), image.digest));
    let resolved = client.resolve(&by_digest, &creds).await.expect("resolve by digest");
    assert_eq!(resolved.digest, image.digest);

    let fetched = client.fetch_manifest(&by_tag, &image.digest, &creds).await.expect("fetch by digest");
    assert_eq!(fetched.bytes, resolved.bytes);

    // A digest the tag does not have: the registry answers 404.
    let other = Digest::of(b"not a manifest");
    let err = client.fetch_manifest(&by_tag, &other, &creds).await.expect_err("unknown digest");
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn index_and_manifest_list_select_amd64() {
    let Some(registry) = TestRegistry::start("index_and_manifest_list_select_amd64") else { return };
    let client = client(None);
    let creds = Credentials::Anonymous;
    for docker in [false, true] {
        let name = if docker { "multi/docker" } else { "multi/oci" };
        let arm = registry.push_image(name, "arm64", "arm64", &[&data(100, 2)], docker).await;
        let amd = registry.push_image(name, "amd64", "amd64", &[&data(100, 3)], docker).await;
        let amd_v3 = registry.push_image(name, "amd64v3", "amd64", &[&data(100, 4)], docker).await;
        let entries = [(&arm, "arm64", Some("v8")), (&amd_v3, "amd64", Some("v3")), (&amd, "amd64", None)];
        let (index_digest, _) = registry.push_index(name, "latest", &entries, docker).await;

        let image = reference(&format!("{}/{name}", registry.host()));
        let resolved = client.resolve(&image, &creds).await.expect("resolve index");
        assert_eq!(resolved.digest, index_digest);
        assert_eq!(resolved.media_type, if docker { manifest::DOCKER_MANIFEST_LIST } else { OCI_INDEX });
        let Manifest::Index(index) = resolved.manifest().expect("parse index") else { panic!("not an index") };
        let chosen = select_platform(&index, "linux", "amd64", None).expect("amd64 entry");
        let chosen_digest: Digest = chosen.digest().to_string().parse().expect("digest");
        assert_eq!(chosen_digest, amd.digest, "plain amd64 preferred over v3");
        let v3 = select_platform(&index, "linux", "amd64", Some("v3")).expect("v3 entry");
        assert_eq!(v3.digest().to_string(), amd_v3.digest.to_string());

        let fetched = client.fetch_manifest(&image, &chosen_digest, &creds).await.expect("platform manifest");
        assert_eq!(fetched.media_type, amd.media_type);
        let Manifest::Image(platform) = fetched.manifest().expect("parse") else { panic!("not an image") };
        let config = client.fetch_blob(&image, &amd.config, 0, &creds).await.expect("config blob");
        let config = manifest::parse_config(&read_all(config).await).expect("config");
        assert_eq!(config.architecture().to_string(), "amd64");
        assert_eq!(platform.layers().len(), 1);
    }
}

#[tokio::test]
async fn fetch_blob_streams_and_resumes() {
    let Some(registry) = TestRegistry::start("fetch_blob_streams_and_resumes") else { return };
    let blob = data(300_000, 5);
    let digest = registry.push_blob("blobs/test", &blob).await;
    let client = client(None);
    let image = reference(&format!("{}/blobs/test:unused", registry.host()));
    let creds = Credentials::Anonymous;

    let response = client.fetch_blob(&image, &digest, 0, &creds).await.expect("fetch");
    assert_eq!(response.content_length, Some(blob.len() as u64));
    assert!(!response.partial);
    let mut hasher = Hasher::new();
    let bytes = read_all(response).await;
    hasher.update(&bytes);
    assert_eq!(hasher.finish(), digest, "digest checked by the caller");

    let response = client.fetch_blob(&image, &digest, 1000, &creds).await.expect("ranged fetch");
    assert!(response.partial, "distribution honours ranges");
    assert_eq!(response.offset, 1000);
    assert_eq!(response.content_length, Some(blob.len() as u64 - 1000));
    assert_eq!(read_all(response).await, blob[1000..]);

    assert_eq!(registry.blob_get_count(&digest), 2);
    let missing = Digest::of(b"missing");
    let err = client.fetch_blob(&image, &missing, 0, &creds).await.expect_err("missing blob");
    match err {
        RegistryError::NotFound { reference } => assert_eq!(reference, image.with_digest(&missing)),
        other => panic!("{other}"),
    }
    assert_eq!(registry.blob_get_count(&missing), 1);
}

#[tokio::test]
async fn missing_tag_and_repository_are_not_found() {
    let Some(registry) = TestRegistry::start("missing_tag_and_repository_are_not_found") else { return };
    registry.push_image("present", "v1", "amd64", &[&data(10, 6)], false).await;
    let client = client(None);
    for text in ["present:v2", "absent:latest"] {
        let image = reference(&format!("{}/{text}", registry.host()));
        let err = client.resolve(&image, &Credentials::Anonymous).await.expect_err(text);
        match &err {
            RegistryError::NotFound { reference } => assert_eq!(reference, &image.to_string()),
            other => panic!("{text}: {other}"),
        }
        assert!(err.to_string().contains("not found"), "{err}");
    }
}

#[tokio::test]
async fn unreachable_mirror_falls_back_to_server() {
    let Some(registry) = TestRegistry::start("unreachable_mirror_falls_back_to_server") else { return };
    let image = registry.push_image("mirrored/app", "v1", "amd64", &[&data(500, 7)], false).await;
    let hosts = tempfile::tempdir().expect("tempdir");
    let host_dir = hosts.path().join(registry.host());
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"{}\"\n\n[host.\"https://example.invalid\"]\ncapabilities = [\"pull\", \"resolve\"]\n\n\
             [host.\"http://127.0.0.1:1\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            registry.url()
        ),
    )
    .expect("hosts.toml");
    let client = client(Some(hosts.path()));
    let endpoints = client.endpoints(&registry.host()).expect("endpoints");
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0].url.as_str(), "https://example.invalid/v2");

    let app = reference(&format!("{}/mirrored/app:v1", registry.host()));
    let resolved = client.resolve(&app, &Credentials::Anonymous).await.expect("fallback to server");
    assert_eq!(resolved.digest, image.digest);
    assert_eq!(resolved.endpoint.as_str(), format!("{}/v2", registry.url()));
    let blob = client.fetch_blob(&app, &image.layers[0], 0, &Credentials::Anonymous).await.expect("blob");
    assert_eq!(blob.endpoint, resolved.endpoint, "the endpoint that served the manifest is tried first");
    assert_eq!(Digest::of(&read_all(blob).await), image.layers[0]);

    // Nothing answers: one line per endpoint.
    let missing = reference(&format!("{}/mirrored/app:v2", registry.host()));
    let resolved_url = registry.url();
    drop(registry);
    let err = client.resolve(&missing, &Credentials::Anonymous).await.expect_err("all down");
    match err {
        RegistryError::AllEndpointsFailed { ref attempts, .. } => {
            println!("{err}");
            assert_eq!(attempts.len(), 3, "{attempts:?}");
            // The server answered last time, so it is tried first now.
            assert!(
                attempts[0].starts_with(&format!("{}/v2/mirrored/app/manifests/v2: ", resolved_url)),
                "{attempts:?}"
            );
            let mirror = "https://example.invalid/v2/mirrored/app/manifests/v2?ns=127.0.0.1%3A";
            assert!(attempts[1].starts_with(mirror), "{attempts:?}");
        }
        other => panic!("{other}"),
    }
}
