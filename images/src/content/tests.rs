use std::sync::atomic::AtomicUsize;

use futures_util::stream;

use super::*;

type Chunks = stream::Iter<std::vec::IntoIter<Result<Bytes, String>>>;

fn chunks(data: &[u8], size: usize) -> Chunks {
    let parts: Vec<Result<Bytes, String>> = data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    stream::iter(parts)
}

async fn serve(data: Vec<u8>, offset: u64, resumable: bool) -> Result<FetchedStream<Chunks>, String> {
    let start = if resumable { usize::try_from(offset).expect("small") } else { 0 };
    Ok(FetchedStream { stream: chunks(&data[start..], 7), resumed: resumable })
}

#[tokio::test]
async fn ingest_verifies_and_stores_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data = b"hello layer".repeat(100);
    let digest = Digest::of(&data);
    let progress = Progress::default();
    let path = store
        .ingest(&digest, data.len() as u64, &progress, |offset| serve(data.clone(), offset, true))
        .await
        .expect("ingest")
        .path;
    assert_eq!(fs::read(&path).expect("read"), data);
    assert!(store.contains(&digest));
    assert_eq!(store.list().expect("list"), vec![digest.clone()]);
    assert_eq!(progress.bytes_done.load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(fs::read_dir(dir.path().join("ingest")).expect("ingest dir").count(), 0);
}

#[tokio::test]
async fn a_lying_source_is_refused_and_leaves_nothing_visible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let claimed = Digest::of(b"what the manifest promised");
    let served = b"something else entirely...".to_vec();
    let err = store
        .ingest(&claimed, served.len() as u64, &Progress::default(), |o| serve(served.clone(), o, true))
        .await
        .expect_err("digest lies");
    assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
    assert!(!store.contains(&claimed));
    assert_eq!(fs::read_dir(dir.path().join("ingest")).expect("ingest dir").count(), 0);

    let err = store
        .ingest(&claimed, 3, &Progress::default(), |o| serve(served.clone(), o, true))
        .await
        .expect_err("longer than the descriptor");
    assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err}");
    assert!(!store.contains(&claimed));
}

#[tokio::test]
async fn an_interrupted_download_is_resumed_by_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data: Vec<u8> = (0..10_000u32).flat_map(u32::to_le_bytes).collect();
    let digest = Digest::of(&data);
    let size = data.len() as u64;

    // First attempt: the connection drops after 1000 bytes.
    let cut = data[..1000].to_vec();
    let err = store
        .ingest(&digest, size, &Progress::default(), |_| {
            let stream = chunks(&cut, 100);
            async move { Ok::<_, String>(FetchedStream { stream, resumed: true }) }
        })
        .await
        .expect_err("short");
    assert!(matches!(err, ContentError::SizeMismatch { .. }));
    assert!(!store.contains(&digest), "a partial blob is never visible");

    // Second attempt asks for the rest only.
    let asked = Arc::new(AtomicU64::new(u64::MAX));
    let seen = Arc::clone(&asked);
    store
        .ingest(&digest, size, &Progress::default(), |offset| {
            seen.store(offset, Ordering::Relaxed);
            serve(data.clone(), offset, true)
        })
        .await
        .expect("resumed");
    assert_eq!(asked.load(Ordering::Relaxed), 1000);
    assert_eq!(fs::read(store.blob_path(&digest)).expect("read"), data);
}

#[tokio::test]
async fn a_source_that_cannot_resume_restarts_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data = b"0123456789".repeat(50);
    let digest = Digest::of(&data);
    fs::write(dir.path().join("ingest").join(digest.hex()), &data[..123]).expect("partial");
    store
        .ingest(&digest, data.len() as u64, &Progress::default(), |o| serve(data.clone(), o, false))
        .await
        .expect("restarted");
    assert_eq!(fs::read(store.blob_path(&digest)).expect("read"), data);
}

#[tokio::test]
async fn concurrent_ingests_fetch_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ContentStore::open(dir.path()).expect("open"));
    let data = Arc::new(b"shared layer".repeat(1000));
    let digest = Digest::of(&data);
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (store, data, digest, fetches) =
            (Arc::clone(&store), Arc::clone(&data), digest.clone(), Arc::clone(&fetches));
        tasks.push(tokio::spawn(async move {
            store
                .ingest(&digest, data.len() as u64, &Progress::default(), |offset| {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    serve(data.to_vec(), offset, true)
                })
                .await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("ingest");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert!(store.ingesting.lock().expect("lock").is_empty(), "locks are released");
}

#[test]
fn write_bytes_checks_the_digest_and_delete_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let digest = Digest::of(b"{}");
    store.write_bytes(&digest, b"{}").expect("write");
    assert_eq!(store.read(&digest, 1 << 20).expect("read"), b"{}");
    let err = store.write_bytes(&Digest::of(b"x"), b"y").expect_err("mismatch");
    assert!(matches!(err, ContentError::DigestMismatch { .. }));
    store.delete(&digest).expect("delete");
    store.delete(&digest).expect("delete again");
    assert!(matches!(store.read(&digest, 1 << 20), Err(ContentError::NotFound(_))));
}

#[tokio::test]
async fn a_size_lie_keeps_the_genuine_blob_for_honest_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data = b"genuine layer bytes".repeat(20);
    let digest = Digest::of(&data);
    let err = store
        .ingest(&digest, data.len() as u64 + 1, &Progress::default(), |o| serve(data.clone(), o, true))
        .await
        .expect_err("the descriptor claims one byte more");
    assert!(matches!(err, ContentError::SizeMismatch { .. }), "{err}");
    // An honest descriptor for the same blob now succeeds without fetching.
    let path = store
        .ingest(&digest, data.len() as u64, &Progress::default(), |_| async {
            Err::<FetchedStream<Chunks>, _>("must not be fetched".to_owned())
        })
        .await
        .expect("honest pull")
        .path;
    assert_eq!(fs::read(path).expect("read"), data);
}

#[tokio::test]
async fn a_refused_resume_restarts_from_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data = b"abcdefghij".repeat(30);
    let digest = Digest::of(&data);
    fs::write(dir.path().join("ingest").join(digest.hex()), b"garbage that will not hash").expect("partial");
    let path = store
        .ingest(&digest, data.len() as u64, &Progress::default(), |offset| {
            let data = data.clone();
            async move {
                if offset > 0 {
                    return Err("416 range not satisfiable".to_owned());
                }
                serve(data, 0, true).await
            }
        })
        .await
        .expect("restarted from zero")
        .path;
    assert_eq!(fs::read(path).expect("read"), data);
}

#[test]
fn concurrent_write_bytes_of_one_blob_all_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ContentStore::open(dir.path()).expect("open"));
    let data = Arc::new(b"{\"schemaVersion\":2}".repeat(100));
    let digest = Digest::of(&data);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (store, data, digest) = (Arc::clone(&store), Arc::clone(&data), digest.clone());
            std::thread::spawn(move || store.write_bytes(&digest, &data))
        })
        .collect();
    for thread in threads {
        thread.join().expect("join").expect("every writer succeeds");
    }
    assert_eq!(store.read(&digest, 1 << 20).expect("read"), *data);
    assert_eq!(fs::read_dir(dir.path().join("ingest")).expect("ingest").count(), 0, "no temp files left");
}

#[tokio::test]
async fn ingest_says_whether_it_stored_the_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data = b"blob".repeat(10);
    let digest = Digest::of(&data);
    let size = data.len() as u64;
    let first = store.ingest(&digest, size, &Progress::default(), |o| serve(data.clone(), o, true)).await;
    assert!(first.expect("first").created);
    let second = store.ingest(&digest, size, &Progress::default(), |o| serve(data.clone(), o, true)).await;
    assert!(!second.expect("second").created);
    assert!(!store.write_bytes(&digest, &data).expect("present"), "already stored");
}

#[test]
fn read_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    let data = vec![b'x'; 4096];
    let digest = Digest::of(&data);
    assert!(store.write_bytes(&digest, &data).expect("write"), "stored");
    assert_eq!(store.read(&digest, 4096).expect("at the limit"), data);
    let err = store.read(&digest, 4095).expect_err("over the limit");
    assert!(matches!(err, ContentError::TooLarge { size: 4096, limit: 4095, .. }), "{err:?}");
}

#[tokio::test]
async fn downloads_stop_at_the_space_reserve_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open_with(dir.path(), SpaceReserve { percent: 100 }).expect("open");
    let data = b"does not fit".repeat(10);
    let digest = Digest::of(&data);
    let err = store
        .ingest(&digest, data.len() as u64, &Progress::default(), |o| serve(data.clone(), o, true))
        .await
        .expect_err("no room");
    assert!(matches!(err, ContentError::LowSpace { .. }), "{err:?}");
    let err = store.write_bytes(&digest, &data).expect_err("no room");
    assert!(matches!(err, ContentError::LowSpace { .. }), "{err:?}");
    assert!(store.list().expect("list").is_empty());
    assert_eq!(fs::read_dir(dir.path().join("ingest")).expect("ingest dir").count(), 0);
}
