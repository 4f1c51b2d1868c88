//! The store's transfers end to end in one process: the real server (`rafty_store::run` on a
//! loopback socket) and the real client, with a TCP proxy in between where a test needs a connection
//! cut part-way. The proxy is the one stand-in here: a real network cut is made in tests/store.rs
//! (network namespaces); here it makes short bodies and cuts at exact offsets, which a link pulled by
//! hand cannot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rafty_core::config::Container;
use rafty_core::output::Sidecar;
use rafty_store::api::OutputOffer;
use rafty_store::client::{Uploaded, sha256_of};
use rafty_store::{StoreClient, StoreError, StoreSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Store {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    shutdown: rafty_program::Shutdown,
}

impl Store {
    async fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("iso");
        let media = dir.path().join("media");
        std::fs::create_dir_all(&iso).unwrap();
        std::fs::create_dir_all(&media).unwrap();
        std::fs::write(dir.path().join("tokens"), format!("{TOKEN}\n")).unwrap();
        let settings = StoreSettings {
            roots: vec![iso.canonicalize().unwrap()],
            path_map: Default::default(),
            output_dir: media,
            token_file: dir.path().join("tokens"),
            host: "nas".into(),
            movie_name: "{name}".into(),
            title_name: "{name} - t{title}".into(),
            container: Container::Mkv,
            stall_timeout: Duration::from_secs(2),
            tls: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = rafty_program::Shutdown::new();
        let s = shutdown.clone();
        tokio::spawn(async move { rafty_store::run(settings, listener, s).await.unwrap() });
        Store {
            dir,
            addr,
            shutdown,
        }
    }

    fn iso_dir(&self) -> PathBuf {
        self.dir.path().join("iso").canonicalize().unwrap()
    }

    fn media(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    fn client(&self, addr: SocketAddr) -> StoreClient {
        StoreClient::new(
            &format!("http://{addr}"),
            TOKEN.into(),
            None,
            Duration::from_secs(2),
            Duration::from_secs(20),
        )
        .unwrap()
    }

    /// An image of `len` bytes that are not all alike.
    fn image(&self, name: &str, len: usize) -> (PathBuf, String) {
        let path = self.iso_dir().join(name);
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let url = rafty_core::store::image_url_path(&path);
        (path, url)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown.drain.cancel();
    }
}

/// A proxy to `target` that, on its first `cuts` connections, passes `cut_after` bytes from the
/// target and then closes; later connections pass untouched. Counts every byte it passed down.
async fn proxy(target: SocketAddr, cut_after: u64, cuts: u32) -> (SocketAddr, Arc<AtomicU64>) {
    cutting_proxy(target, cut_after, u64::MAX, cuts).await
}

/// [`proxy`], also cutting the first `cuts` connections after `up_after` bytes toward the target.
async fn cutting_proxy(
    target: SocketAddr,
    cut_after: u64,
    up_after: u64,
    cuts: u32,
) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let passed = Arc::new(AtomicU64::new(0));
    let counter = passed.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            n += 1;
            let cut = n <= cuts;
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut moved = 0u64;
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let n = if cut {
                            n.min((up_after - moved) as usize)
                        } else {
                            n
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        moved += n as u64;
                        if cut && moved >= up_after {
                            return;
                        }
                    }
                };
                let down = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut moved = 0u64;
                    loop {
                        let n = sr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        let n = if cut {
                            n.min((cut_after - moved) as usize)
                        } else {
                            n
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        moved += n as u64;
                        counter.fetch_add(n as u64, Ordering::SeqCst);
                        if cut && moved >= cut_after {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (addr, passed)
}

fn sidecar(job: uuid::Uuid, output: &str, size: u64) -> Sidecar {
    Sidecar {
        job_id: job.to_string(),
        source_path: "/srv/iso/x.iso".into(),
        source_size: 1,
        source_sha256: None,
        source_label: None,
        title: 1,
        preset: "p".into(),
        handbrake: "HandBrake 1.6.1".into(),
        output: output.into(),
        output_size: size,
        output_sha256: None,
        output_duration_secs: 1.0,
        title_duration_secs: 1.0,
        host: "laptop".into(),
        finished_at: "2026-12-02T00:00:00Z".into(),
    }
}

fn nothing(_: rafty_store::client::TransferProgress) {}

#[tokio::test]
async fn a_short_body_is_resumed_from_where_it_stopped_not_from_zero() {
    let store = Store::start().await;
    let (_, url) = store.image("film.iso", 3 << 20);
    let (path, _) = (store.iso_dir().join("film.iso"), ());
    let sha = sha256_of(&path).await.unwrap();
    // Two cuts: the first answer ends after 1 MiB, the second (a resumed one) after 1 more.
    let (via, passed) = proxy(store.addr, 1 << 20, 2).await;
    let dest = store.dir.path().join("fetched.iso");
    let got = store
        .client(via)
        .fetch(&url, &dest, &sha, &nothing, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(got.bytes, 3 << 20);
    assert_eq!(got.resumed, 2, "{got:?}");
    assert_eq!(
        got.resent, 0,
        "the resumes continued where each cut stopped"
    );
    assert_eq!(sha256_of(&dest).await.unwrap(), sha);
    // What went down the wire: the image once, plus three answers' headers.
    let over = passed.load(Ordering::SeqCst) - (3 << 20);
    assert!(over < 2048, "only headers beyond the image: {over} bytes");
}

#[tokio::test]
async fn an_image_that_changes_during_a_resume_is_fetched_again_from_zero() {
    let store = Store::start().await;
    let (path, url) = store.image("changing.iso", 2 << 20);
    let sha_before = sha256_of(&path).await.unwrap();
    let (via, _) = proxy(store.addr, 1 << 20, 1).await;
    // The image is replaced (a new inode: a new ETag) before the resume asks for the rest.
    let replaced = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let bytes: Vec<u8> = (0..(2usize << 20)).map(|i| (i * 13) as u8).collect();
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        })
    };
    let dest = store.dir.path().join("fetched.iso");
    let result = store
        .client(via)
        .fetch(
            &url,
            &dest,
            &sha_before,
            &nothing,
            &CancellationToken::new(),
        )
        .await;
    replaced.await.unwrap();
    // The job's digest is the old image's: both downloads of the new image differ from it.
    match result {
        Err(StoreError::Digest { expected, got, .. }) => {
            assert_eq!(expected, sha_before);
            assert_eq!(got, sha256_of(&path).await.unwrap(), "names what arrived");
        }
        other => panic!("a changed image is refused: {other:?}"),
    }
    assert!(!dest.exists(), "nothing left behind");
}

#[tokio::test]
async fn a_flipped_byte_is_fetched_twice_then_refused_naming_both_digests() {
    let store = Store::start().await;
    let (path, url) = store.image("flipped.iso", 1 << 20);
    let sha = sha256_of(&path).await.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4242] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let dest = store.dir.path().join("fetched.iso");
    let err = store
        .client(store.addr)
        .fetch(&url, &dest, &sha, &nothing, &CancellationToken::new())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Digest { .. }), "{text}");
    assert!(text.contains(&sha), "names the job's digest: {text}");
    assert!(
        text.contains(&sha256_of(&path).await.unwrap()),
        "names the fetched digest: {text}"
    );
    assert!(!dest.exists());
}

#[tokio::test]
async fn an_upload_cut_twice_resumes_and_lands_once_verified() {
    let store = Store::start().await;
    let file = store.dir.path().join("out.mkv");
    // Larger than what the kernel's socket buffers hold on loopback, so a cut is mid-upload.
    let bytes: Vec<u8> = (0..(64usize << 20)).map(|i| (i * 31) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let sha = sha256_of(&file).await.unwrap();
    let job = uuid::Uuid::new_v4();
    let offer = OutputOffer {
        job,
        output: "Shows/Film.mkv".into(),
        size: bytes.len() as u64,
        sha256: sha.clone(),
        sidecar: sidecar(job, "Shows/Film.mkv", bytes.len() as u64),
    };
    // Two connections cut toward the store after 8 MiB each: mid-PATCH.
    let (via, _) = cutting_proxy(store.addr, u64::MAX, 8 << 20, 2).await;
    let done = store
        .client(via)
        .upload(&offer, &file, &nothing, &CancellationToken::new())
        .await
        .unwrap();
    let path = store.media().join("Shows/Film.mkv");
    match &done {
        Uploaded::Committed(at, t) => {
            assert_eq!(at, &path);
            assert_eq!(t.bytes, bytes.len() as u64);
            assert!(t.resumed >= 2, "resumed after each cut: {t:?}");
            // What a cut loses is what the connection held (the kernel's buffers, a few MiB on
            // loopback), never the upload so far: each resume went on from the store's offset.
            assert!(
                t.resent < t.bytes / 2,
                "resumed from the store's offset: {t:?}"
            );
        }
        Uploaded::InPlace(..) => panic!("committed by this upload: {done:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let side: Sidecar = serde_json::from_slice(
        &std::fs::read(store.media().join("Shows/Film.mkv.rafty.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(side.job_id, job.to_string());
    let leftovers: Vec<_> = std::fs::read_dir(store.media().join("Shows"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary file left: {leftovers:?}"
    );
}

#[tokio::test]
async fn two_workers_with_one_job_make_one_output_and_another_job_cannot_take_its_name() {
    let store = Store::start().await;
    let file = store.dir.path().join("out.mkv");
    std::fs::write(&file, vec![7u8; 512 * 1024]).unwrap();
    let sha = sha256_of(&file).await.unwrap();
    let job = uuid::Uuid::new_v4();
    let offer = OutputOffer {
        job,
        output: "Twice.mkv".into(),
        size: 512 * 1024,
        sha256: sha.clone(),
        sidecar: sidecar(job, "Twice.mkv", 512 * 1024),
    };
    let (a, b) = (store.client(store.addr), store.client(store.addr));
    let cancel = CancellationToken::new();
    let (ra, rb) = tokio::join!(
        a.upload(&offer, &file, &nothing, &cancel),
        b.upload(&offer, &file, &nothing, &cancel)
    );
    let results = [ra.unwrap(), rb.unwrap()];
    let committed = results
        .iter()
        .filter(|r| matches!(r, Uploaded::Committed(..)))
        .count();
    assert!(
        committed <= 1,
        "at most one upload is the output: {results:?}"
    );
    let names: Vec<String> = std::fs::read_dir(store.media())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "one video and one sidecar: {names:?}");

    // Another job's output under the same name is refused, and the file stays.
    let other = uuid::Uuid::new_v4();
    let mut theirs = offer.clone();
    theirs.job = other;
    theirs.sidecar = sidecar(other, "Twice.mkv", 512 * 1024);
    theirs.sidecar.source_path = "/srv/iso/another.iso".into();
    theirs.sidecar.title = 2;
    let err = a
        .upload(&theirs, &file, &nothing, &cancel)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        err.to_string().contains(&job.to_string()),
        "names whose file it is: {err}"
    );
}

#[tokio::test]
async fn declared_bytes_that_differ_are_refused_and_never_reach_the_library() {
    let store = Store::start().await;
    let file = store.dir.path().join("out.mkv");
    std::fs::write(&file, vec![1u8; 100_000]).unwrap();
    let job = uuid::Uuid::new_v4();
    let offer = OutputOffer {
        job,
        output: "Lie.mkv".into(),
        size: 100_000,
        // The digest of other bytes.
        sha256: "0".repeat(64),
        sidecar: sidecar(job, "Lie.mkv", 100_000),
    };
    let err = store
        .client(store.addr)
        .upload(&offer, &file, &nothing, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused { status: 422, .. }),
        "sent twice, refused twice: {err}"
    );
    assert!(!store.media().join("Lie.mkv").exists());
    assert_eq!(
        std::fs::read_dir(store.media()).unwrap().count(),
        0,
        "no temp left"
    );
}

#[tokio::test]
async fn a_token_is_needed_and_a_deleted_line_revokes_it() {
    let store = Store::start().await;
    let (_, url) = store.image("a.iso", 1000);
    let stranger = StoreClient::new(
        &format!("http://{}", store.addr),
        "not-the-token-0123456789".into(),
        None,
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = stranger.health().await.unwrap_err();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("http://{}", store.addr)),
        "names the store: {err}"
    );
    let ours = store.client(store.addr);
    assert_eq!(ours.health().await.unwrap().host, "nas");
    // Revoke: the file changes, the next request is refused.
    let tokens = store.dir.path().join("tokens");
    std::fs::write(&tokens, "someone-else-0123456789abcdef\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&tokens)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let dest = store.dir.path().join("x.iso");
    let err = ours
        .fetch(
            &url,
            &dest,
            &"0".repeat(64),
            &nothing,
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn paths_that_could_leave_the_roots_are_refused() {
    let store = Store::start().await;
    store.image("ok.iso", 10);
    std::fs::write(store.dir.path().join("secret.iso"), b"secret").unwrap();
    std::os::unix::fs::symlink(
        store.dir.path().join("secret.iso"),
        store.iso_dir().join("link.iso"),
    )
    .unwrap();
    let iso = store.iso_dir().display().to_string();
    // A request written by hand: an HTTP client would normalise `..` and `%2e%2e` away before
    // sending, and the point is what the store does with them.
    let addr = store.addr;
    let get = |path: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: store\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no status in {answer:?}"))
    };
    assert_eq!(get(format!("/v1/images{iso}/ok.iso")).await, 200);
    for (path, want) in [
        (format!("/v1/images{iso}/../secret.iso"), 400),
        (format!("/v1/images{iso}/%2e%2e/secret.iso"), 400),
        (format!("/v1/images{iso}/%2E%2E/secret.iso"), 400),
        (format!("/v1/images{iso}/..%2fsecret.iso"), 400),
        (format!("/v1/images/{iso}/ok.iso"), 400),
        (format!("/v1/images{iso}//ok.iso"), 400),
        (format!("/v1/images{iso}/a%00.iso"), 400),
        ("/v1/images/etc/passwd".to_owned(), 403),
        (format!("/v1/images{iso}/link.iso"), 403),
        (format!("/v1/images{iso}/missing.iso"), 404),
    ] {
        assert_eq!(get(path.clone()).await, want, "{path}");
    }
}
