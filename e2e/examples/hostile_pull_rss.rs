//! Hostile pulls against a crius binary: its peak RSS during each pull over
//! its idle RSS, what each pull leaves in the image store, and whether crius
//! still answers afterwards. A streaming fake registry serves the images
//! ([`crius_e2e::fake_registry`]); crius runs with default settings on
//! throwaway directories. See `e2e/bench/README.md`; run it with
//! `e2e/bench/hostile-pull-rss.sh [CASE...]`.
//!
//! Cases (all by default):
//! - `long-name`: a 1 GiB GNU long name in a ~1 MB gzip layer
//! - `long-link`: the same as a GNU long link name
//! - `pax`: a 2 GiB PAX header in a ~2 MB gzip layer
//! - `config`: an image config of 2 GiB (valid JSON, correct digest)
//! - `bomb`: 32 GiB of zeros in a ~34 MB gzip layer
//! - `honest`: a 256 MiB uncompressed layer, pulled and removed 3 times
//!
//! Peak RSS is the larger of `VmHWM` (reset through `clear_refs` before each
//! pull) and `VmRSS` sampled every 10 ms. Exits 1 when a hostile pull is not
//! refused, peaks 100 MB or more above idle, leaves anything in the store,
//! or crius stops answering.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::{ImageSpec, ListImagesRequest, PullImageRequest, RemoveImageRequest, VersionRequest};
use crius_e2e::fake_registry::FakeRegistry;
use crius_e2e::hostile::{self, Part, Parts};
use crius_e2e::registry::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, host_arch};
use crius_e2e::{Crius, CriusDirs};
use tonic::transport::Channel;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Most a hostile pull may add to crius's RSS.
const BUDGET_MB: f64 = 100.0;
const PULL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const ALL: [&str; 6] = ["long-name", "long-link", "pax", "config", "bomb", "honest"];

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases: Vec<&str> = if args.is_empty() { ALL.to_vec() } else { args.iter().map(String::as_str).collect() };
    if let Some(unknown) = cases.iter().find(|c| !ALL.contains(c)) {
        bail!("unknown case {unknown:?}; cases: {}", ALL.join(" "));
    }
    let registry = FakeRegistry::start().await?;
    let dirs = CriusDirs::new()?;
    let crius = Crius::start(&dirs, &[]).await?;
    let pid = u32::try_from(crius.pid().as_raw()).context("pid")?;
    let images = crius.images().await?;
    println!("crius {} (pid {pid}), registry {}", crius_e2e::crius_binary()?.display(), registry.host());
    // Warm up (first RPCs, first registry client), then measure idle.
    let mut runtime = crius.runtime().await?;
    runtime.version(VersionRequest::default()).await?;
    images.clone().list_images(ListImagesRequest::default()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = status_kb(pid, "VmRSS")?;
    println!("idle RSS {:.1} MB\n", mb(idle));

    let mut rows = Vec::new();
    for case in cases {
        let prepared = Instant::now();
        let image = prepare(&registry, case)?;
        eprintln!("{case}: prepared in {:.0} s", prepared.elapsed().as_secs_f64());
        let rounds = if case == "honest" { 3 } else { 1 };
        for round in 0..rounds {
            let row = measure(&images, &mut runtime, pid, idle, &image, &dirs.root).await?;
            eprintln!("{case} #{round}: {row:?}");
            rows.push(row);
        }
    }
    print_table(&rows);
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.ok()).collect();
    drop(crius);
    if !failed.is_empty() {
        bail!("{} pull(s) failed the checks", failed.len());
    }
    Ok(())
}

/// An image served by the fake registry.
#[derive(Debug)]
struct Image {
    case: &'static str,
    reference: String,
    /// What the registry serves, for the table.
    served: String,
    hostile: bool,
}

fn prepare(registry: &FakeRegistry, case: &str) -> Result<Image> {
    let name = format!("bench/{case}");
    let small = hostile::bomb_tar(0);
    let (case, layer, media_type, diff_id, config, served): (&'static str, Parts, _, _, Option<Parts>, String) =
        match case {
            "long-name" | "long-link" => {
                let (case, kind) = if case == "long-name" {
                    ("long-name", tar::EntryType::GNULongName)
                } else {
                    ("long-link", tar::EntryType::GNULongLink)
                };
                let tar = hostile::long_name_tar(kind, GIB);
                let gz = tar.gzip();
                let served = format!("{} MB gzip, {} GiB header body", gz.len() / 1_000_000, GIB >> 30);
                (case, Parts(vec![Part::Bytes(gz)]), OCI_LAYER_GZIP, tar.sha256(), None, served)
            }
            "pax" => {
                let tar = hostile::pax_tar(2 * GIB);
                let gz = tar.gzip();
                let served = format!("{} MB gzip, 2 GiB PAX header", gz.len() / 1_000_000);
                ("pax", Parts(vec![Part::Bytes(gz)]), OCI_LAYER_GZIP, tar.sha256(), None, served)
            }
            "config" => {
                let diff_id = small.sha256();
                let config = hostile::config_of_size(2 * GIB, host_arch(), std::slice::from_ref(&diff_id));
                ("config", small.clone(), OCI_LAYER_TAR, diff_id, Some(config), "2 GiB config".to_owned())
            }
            "bomb" => {
                let tar = hostile::bomb_tar(32 * GIB);
                let gz = tar.gzip();
                let served = format!("{} MB gzip, 32 GiB of zeros", gz.len() / 1_000_000);
                // Hashing 32 GiB takes minutes and the diff id is only
                // compared after a complete unpack, which a bomb never gets.
                let diff_id = crius_e2e::images::sha256(b"never compared");
                ("bomb", Parts(vec![Part::Bytes(gz)]), OCI_LAYER_GZIP, diff_id, None, served)
            }
            "honest" => {
                let tar = honest_tar(256 * MIB);
                let diff_id = crius_e2e::images::sha256(&tar);
                ("honest", Parts(vec![Part::Bytes(tar)]), OCI_LAYER_TAR, diff_id, None, "256 MiB tar layer".to_owned())
            }
            other => bail!("unknown case {other}"),
        };
    let layer_digest = layer.sha256();
    let layer_size = layer.len();
    registry.blob(&name, &layer_digest, layer);
    let config = config.unwrap_or_else(|| {
        let json = serde_json::json!({
            "architecture": host_arch(), "os": "linux", "config": {},
            "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        });
        Parts(vec![Part::Bytes(serde_json::to_vec(&json).expect("json"))])
    });
    let (config_digest, config_size) = (config.sha256(), config.len());
    registry.blob(&name, &config_digest, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config_size },
        "layers": [{ "mediaType": media_type, "digest": layer_digest.to_string(), "size": layer_size }],
    });
    registry.manifest(&name, "1", OCI_MANIFEST, &serde_json::to_vec(&manifest)?);
    Ok(Image { case, reference: format!("{}/{name}:1", registry.host()), served, hostile: case != "honest" })
}

/// A tar of one file of `size` pseudo-random (incompressible) bytes.
fn honest_tar(size: u64) -> Vec<u8> {
    let mut data = vec![0u8; usize::try_from(size).expect("usize")];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut tar = hostile::header(tar::EntryType::Regular, "data.bin", size);
    tar.extend(data);
    tar.resize(tar.len().next_multiple_of(512) + 1024, 0);
    tar
}

#[derive(Debug)]
struct Row {
    case: &'static str,
    served: String,
    hostile: bool,
    code: tonic::Code,
    message_bytes: usize,
    /// The start of the message.
    message: String,
    secs: f64,
    idle_kb: u64,
    peak_kb: u64,
    left: usize,
    serving: bool,
}

impl Row {
    fn ok(&self) -> bool {
        let refused = matches!(self.code, tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted);
        let result = if self.hostile { refused } else { self.code == tonic::Code::Ok };
        let within = !self.hostile || mb(self.peak_kb.saturating_sub(self.idle_kb)) < BUDGET_MB;
        result && within && self.left == 0 && self.serving && self.message_bytes < 4096
    }
}

async fn measure(
    images: &ImageServiceClient<Channel>,
    runtime: &mut cri_api::v1::runtime_service_client::RuntimeServiceClient<Channel>,
    pid: u32,
    idle_kb: u64,
    image: &Image,
    root: &Path,
) -> Result<Row> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("reset VmHWM (needs root)")?;
    let sampled = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sampled, stop) = (Arc::clone(&sampled), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kb) = status_kb(pid, "VmRSS") {
                    sampled.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let spec = Some(ImageSpec { image: image.reference.clone(), ..ImageSpec::default() });
    let request = PullImageRequest { image: spec.clone(), auth: None, sandbox_config: None };
    let started = Instant::now();
    let pulled = tokio::time::timeout(PULL_TIMEOUT, images.clone().pull_image(request)).await;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = status_kb(pid, "VmHWM")?;
    let (code, message_bytes, message) = match pulled {
        Err(_) => (tonic::Code::DeadlineExceeded, 0, "timed out".to_owned()),
        Ok(Ok(_)) => (tonic::Code::Ok, 0, String::new()),
        Ok(Err(status)) => (status.code(), status.message().len(), status.message().chars().take(300).collect()),
    };
    if code == tonic::Code::Ok {
        images.clone().remove_image(RemoveImageRequest { image: spec }).await?;
    }
    let serving = runtime.version(VersionRequest::default()).await.is_ok()
        && images
            .clone()
            .list_images(ListImagesRequest::default())
            .await
            .is_ok_and(|r| r.into_inner().images.is_empty());
    let store = root.join("images");
    let left = ["content/blobs/sha256", "content/ingest", "layers"].iter().map(|d| count(&store.join(d))).sum();
    Ok(Row {
        case: image.case,
        served: image.served.clone(),
        hostile: image.hostile,
        code,
        message_bytes,
        message,
        secs,
        idle_kb,
        peak_kb: hwm.max(sampled.load(Ordering::Relaxed)),
        left,
        serving,
    })
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<10} {:<36} {:<18} {:>9} {:>8} {:>8} {:>8} {:>11} {:>5} {:>7} {:>5}",
        "case", "served", "result", "msg_bytes", "secs", "idle_MB", "peak_MB", "peak-idle", "left", "serving", "ok"
    );
    for r in rows {
        println!(
            "{:<10} {:<36} {:<18} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>11.1} {:>5} {:>7} {:>5}",
            r.case,
            r.served,
            format!("{:?}", r.code),
            r.message_bytes,
            r.secs,
            mb(r.idle_kb),
            mb(r.peak_kb),
            mb(r.peak_kb.saturating_sub(r.idle_kb)),
            r.left,
            if r.serving { "yes" } else { "NO" },
            if r.ok() { "ok" } else { "FAIL" }
        );
    }
    println!();
    for r in rows.iter().filter(|r| !r.message.is_empty()) {
        println!("{}: {}", r.case, r.message);
    }
}

/// A `kB` field of `/proc/PID/status`.
fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("read status")?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).context("no such field")?;
    line.split_whitespace().nth(1).context("no value")?.parse().context("not a number")
}

fn mb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

/// Entries in `dir` (0 when it does not exist).
fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(Iterator::count).unwrap_or(0)
}
