//! A registry with a self-signed certificate, configured through hosts.toml:
//! refused without its CA, accepted with `ca` or with `skip_verify`.

use std::path::Path;
use std::time::Duration;

use crius_e2e::registry::TestRegistry;
use crius_images::reference::Reference;
use crius_images::registry::{Credentials, RegistryClient, RegistryConfig, RegistryError};

fn client(hosts_dir: &Path) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        hosts_dir: Some(hosts_dir.to_owned()),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        user_agent: "crius-test".to_owned(),
    })
}

/// Writes `<dir>/<host>/hosts.toml` and returns `dir`.
fn hosts(registry: &TestRegistry, name: &str, body: &str) -> std::path::PathBuf {
    let dir = registry.dir().join(name);
    let host_dir = dir.join(registry.host());
    std::fs::create_dir_all(&host_dir).expect("hosts dir");
    std::fs::copy(registry.ca_pem(), host_dir.join("ca.pem")).expect("ca");
    std::fs::write(host_dir.join("hosts.toml"), format!("server = \"{}\"\n{body}", registry.url())).expect("hosts");
    dir
}

#[tokio::test]
async fn self_signed_registry_needs_its_ca_or_skip_verify() {
    let Some(registry) = TestRegistry::start_with_tls("self_signed_registry_needs_its_ca_or_skip_verify") else {
        return;
    };
    assert!(registry.url().starts_with("https://"));
    let pushed = registry.push_image("tls/app", "1", "amd64", &[b"layer-data".as_slice()], false).await;
    let reference: Reference = format!("{}/tls/app:1", registry.host()).parse().expect("reference");

    let untrusted = hosts(&registry, "untrusted", "");
    let err = client(&untrusted).resolve(&reference, &Credentials::Anonymous).await.expect_err("unknown CA");
    assert!(matches!(err, RegistryError::AllEndpointsFailed { .. }), "{err}");

    let with_ca = hosts(&registry, "with-ca", "ca = \"ca.pem\"\n");
    let resolved = client(&with_ca).resolve(&reference, &Credentials::Anonymous).await.expect("trusted through ca");
    assert_eq!(resolved.digest, pushed.digest);

    let skip = hosts(&registry, "skip", "skip_verify = true\n");
    let resolved = client(&skip).resolve(&reference, &Credentials::Anonymous).await.expect("skip_verify");
    assert_eq!(resolved.digest, pushed.digest);
}
