//! The `store` group: workers without shared storage (docs/store.md). The real `rafty-store` on
//! loopback serves an image; Rafty's client fetches it (streamed SHA-256, fsync) and `curl` fetches
//! the same image from the same store, in turns; uploads likewise (offer, PATCH, commit: the same three
//! requests by curl). A cut: a proxy between client and store drops the connection part-way, and the
//! bytes sent twice are counted (by the client: what it received beyond the image; by the store: what
//! its log says it sent beyond the image, which includes what the kernel's socket buffers held when
//! the connection died). One job through a fetching worker against the same job read from a local
//! path. The store's peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rafty_core::job::{Origin, Source};
use rafty_core::names::{JOB_TYPE, RIP_EXCHANGE};
use rafty_core::output::Sidecar;
use rafty_core::{Job, Media};
use rafty_store::StoreClient;
use rafty_store::api::OutputOffer;
use rafty_store::client::{Uploaded, sha256_of};
use rafty_testkit::{Env, bin, fixture_iso};
use tokio_util::sync::CancellationToken;

use crate::{median, rss_kib, verdict};

const TOKEN: &str = "bench-token-0123456789abcdef";

/// Sizes of one run.
pub struct Params {
    /// The transferred image, MiB.
    pub mib: u64,
    /// Repetitions of each transfer.
    pub reps: usize,
    /// Title length of the job comparison, seconds.
    pub title_secs: u32,
    /// Repetitions of the job comparison.
    pub job_reps: usize,
}

impl Params {
    /// CI's short run or the full one.
    pub fn new(quick: bool) -> Params {
        if quick {
            Params {
                mib: 64,
                reps: 1,
                title_secs: 20,
                job_reps: 1,
            }
        } else {
            Params {
                mib: 1024,
                reps: 5,
                title_secs: 60,
                job_reps: 3,
            }
        }
    }

    /// For the page.
    pub fn describe(&self) -> String {
        format!(
            "a {} MiB image over loopback, {} repetitions each way; a {} s title, {} jobs each way",
            self.mib, self.reps, self.title_secs, self.job_reps
        )
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A file of `mib` MiB of incompressible bytes.
fn write_image(path: &Path, mib: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create image"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("write image");
    }
    f.flush().expect("flush image");
}

fn curl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
        ])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sidecar(job: uuid::Uuid, output: &str, size: u64) -> Sidecar {
    Sidecar {
        job_id: job.to_string(),
        source_path: "/bench.iso".into(),
        source_size: size,
        source_sha256: None,
        source_label: None,
        title: 1,
        preset: "bench".into(),
        handbrake: "none".into(),
        output: output.into(),
        output_size: size,
        output_sha256: None,
        output_duration_secs: 1.0,
        title_duration_secs: 1.0,
        host: "bench".into(),
        finished_at: "2026-01-01T00:00:00Z".into(),
    }
}

/// Sum of `sent` over the store's `image served` log lines that name `image`.
fn served_bytes(log: &str, image: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("image served") && l.contains(image))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["sent"].as_u64().or_else(|| v["sent"].as_u64()))
        .sum()
}

/// A TCP proxy to `target` that cuts its first connection once `cut_after` bytes went from the
/// target to the client; later connections pass untouched.
async fn cutting_proxy(target: std::net::SocketAddr, cut_after: u64) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy");
    let addr = listener.local_addr().expect("proxy address");
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let cut = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut moved = 0u64;
                    loop {
                        let n = sr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if cut && moved + n as u64 >= cut_after {
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        moved += n as u64;
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    addr
}

/// The store rows.
pub fn bench(env: &Env, p: &Params) -> anyhow::Result<Vec<String>> {
    let port = free_port();
    let tokens = env.path().join("store-tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n"))?;
    let store_config = env.write_config("store.toml", Some("nas"), &[]);
    let mut text = std::fs::read_to_string(&store_config)?;
    text.push_str(&format!(
        "[store]\nlisten = \"127.0.0.1:{port}\"\ntoken-file = \"{}\"\nstall-timeout = \"5s\"\n",
        tokens.display()
    ));
    std::fs::write(&store_config, text)?;
    let mut store = env.worker_with(
        Command::new(bin("rafty-store")),
        &store_config,
        &["--log-format", "json"],
    );
    store.wait_log("rafty-store serving", Duration::from_secs(30));
    let base = format!("http://127.0.0.1:{port}");
    let image = env.iso_dir.join("transfer.iso");
    write_image(&image, p.mib);
    let size = p.mib << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = StoreClient::new(
        &base,
        TOKEN.into(),
        None,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )?;
    let sha = runtime.block_on(sha256_of(&image))?;
    let url_path = rafty_core::store::image_url_path(&image.canonicalize()?);
    let scratch = env.path().join("bench-scratch");
    std::fs::create_dir_all(&scratch)?;
    let dest = scratch.join("fetched.iso");
    let cancel = CancellationToken::new();
    let none = |_| {};

    // Downloads, in turns.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..p.reps {
        let t0 = Instant::now();
        runtime.block_on(client.fetch(&url_path, &dest, &sha, &none, &cancel))?;
        ours.push(size as f64 / t0.elapsed().as_secs_f64() / 1e6);
        std::fs::remove_file(&dest)?;
        let t0 = Instant::now();
        curl(&["-o", &dest.to_string_lossy(), &format!("{base}{url_path}")])?;
        // curl does not fsync: sync its file too, as the worker must before HandBrake reads it.
        std::fs::File::open(&dest)?.sync_all()?;
        theirs.push(size as f64 / t0.elapsed().as_secs_f64() / 1e6);
        std::fs::remove_file(&dest)?;
    }
    let (down, down_curl) = (median(&mut ours), median(&mut theirs));

    // Uploads, in turns.
    let offer_of = |name: String| {
        let job = uuid::Uuid::new_v4();
        let offer = OutputOffer {
            job,
            output: name.clone(),
            size,
            sha256: sha.clone(),
            sidecar: sidecar(job, &name, size),
        };
        (name, offer)
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..p.reps {
        let (name, offer) = offer_of(format!("up-{i}.bin"));
        let t0 = Instant::now();
        let done = runtime.block_on(client.upload(&offer, &image, &none, &cancel))?;
        anyhow::ensure!(
            matches!(done, Uploaded::Committed(..)),
            "upload {i}: {done:?}"
        );
        ours.push(size as f64 / t0.elapsed().as_secs_f64() / 1e6);
        let _ = std::fs::remove_file(env.media_dir.join(&name));
        let _ = std::fs::remove_file(env.media_dir.join(format!("{name}.rafty.json")));

        let (name, offer) = offer_of(format!("curl-{i}.bin"));
        let t0 = Instant::now();
        let answer = curl(&[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &serde_json::to_string(&offer)?,
            &format!("{base}/v1/outputs"),
        ])?;
        let id = serde_json::from_str::<serde_json::Value>(&answer)?["upload"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        curl(&[
            "-X",
            "PATCH",
            "-H",
            "upload-offset: 0",
            "-H",
            "content-type: application/offset+octet-stream",
            // Streamed from the file: `--data-binary @FILE` reads it whole into memory first
            // (refused with "out of memory" for the full run's 1 GiB image). No 100-continue
            // round trip, as the product's client makes none.
            "-H",
            "expect:",
            "--upload-file",
            &image.display().to_string(),
            &format!("{base}/v1/uploads/{id}"),
        ])?;
        curl(&["-X", "POST", &format!("{base}/v1/uploads/{id}/commit")])?;
        theirs.push(size as f64 / t0.elapsed().as_secs_f64() / 1e6);
        let _ = std::fs::remove_file(env.media_dir.join(&name));
        let _ = std::fs::remove_file(env.media_dir.join(format!("{name}.rafty.json")));
    }
    let (up, up_curl) = (median(&mut ours), median(&mut theirs));

    // A cut part-way through a download.
    let served_before = served_bytes(&store.log(), "transfer.iso");
    let (got, resent_client, resumed) = runtime.block_on(async {
        let proxy = cutting_proxy(([127, 0, 0, 1], port).into(), size * 2 / 5).await;
        let via = StoreClient::new(
            &format!("http://{proxy}"),
            TOKEN.into(),
            None,
            Duration::from_secs(5),
            Duration::from_secs(60),
        )?;
        let t = via.fetch(&url_path, &dest, &sha, &none, &cancel).await?;
        anyhow::Ok((t.bytes, t.resent, t.resumed))
    })?;
    anyhow::ensure!(
        got == size && resumed >= 1,
        "the cut was not resumed: {resumed} resumes, {got} bytes"
    );
    std::fs::remove_file(&dest)?;
    // The store logs each response when its body is dropped: give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let served = served_bytes(&store.log(), "transfer.iso") - served_before;
    let resent_store = served.saturating_sub(size);
    let hwm = rss_kib(store.pid(), "VmHWM:") as f64 / 1024.0;

    // One job through a fetching worker vs through a worker that reads the image where it is.
    let iso = env.add_iso(
        &fixture_iso("STOREBENCH", &[p.title_secs]),
        "storebench.iso",
    );
    let iso_sha = runtime.block_on(sha256_of(&iso))?;
    let worker_tokens = env.path().join("worker-token");
    std::fs::write(&worker_tokens, format!("{TOKEN}\n"))?;
    let remote_config = env.write_config(
        "remote-worker.toml",
        Some("laptop"),
        &[
            ("source-roots", "[\"/nonexistent/rafty-bench\"]"),
            (
                "output-dir",
                &format!("\"{}\"", env.path().join("laptop-media").display()),
            ),
            (
                "scratch-dir",
                &format!("\"{}\"", env.path().join("laptop-scratch").display()),
            ),
        ],
    );
    let mut text = std::fs::read_to_string(&remote_config)?;
    text.push_str(&format!(
        "[store]\nurl = \"{base}\"\ntoken-file = \"{}\"\n",
        worker_tokens.display()
    ));
    std::fs::write(&remote_config, text)?;
    let amqp = env.amqp();
    let tap = amqp.tap();
    let run_jobs = |config: &Path, tag: &str| -> anyhow::Result<Vec<f64>> {
        let mut worker = env.worker(config, &[]);
        worker.wait_log("waiting for jobs", Duration::from_secs(60));
        let mut walls = Vec::new();
        for i in 0..p.job_reps {
            let job = Job::new(
                Source {
                    path: iso.clone(),
                    media: Media::Dvd,
                    size: None,
                    sha256: Some(iso_sha.clone()),
                    label: None,
                    unreadable_sectors: None,
                    url: None,
                },
                format!("{tag}-{i}"),
                Origin::default(),
            );
            let props = rafty_testkit::job_properties(&job.id.to_string(), JOB_TYPE);
            let t0 = Instant::now();
            amqp.publish(
                RIP_EXCHANGE,
                "rafty.rip.iso.dvd",
                &serde_json::to_vec(&job)?,
                props,
            );
            let id = job.id.to_string();
            amqp.wait_event(&tap, "done", Duration::from_secs(900), |v| {
                v["id"] == id.as_str()
            });
            walls.push(t0.elapsed().as_secs_f64());
            let out: PathBuf = env.media_dir.join(format!("{tag}-{i}.mkv"));
            anyhow::ensure!(out.exists(), "{} missing: {}", out.display(), worker.log());
        }
        Ok(walls)
    };
    let mut local = run_jobs(&env.config(), "local")?;
    let mut remote = run_jobs(&remote_config, "remote")?;
    let (local, remote) = (median(&mut local), median(&mut remote));
    let iso_bytes = std::fs::metadata(&iso)?.len() as f64;
    let out_bytes = std::fs::metadata(env.media_dir.join("remote-0.mkv"))?.len() as f64;
    let transfer = iso_bytes / (down * 1e6) + out_bytes / (up * 1e6);
    let allowed = local * 1.05 + transfer;
    drop(store);

    let chunk = 256.0 * 1024.0;
    Ok(vec![
        format!(
            "| store download (MB/s) | {down:.0} | curl from the same store {down_curl:.0} | {:.2}× | ≥ 0.9× | {} |",
            down / down_curl,
            verdict(down / down_curl >= 0.9)
        ),
        format!(
            "| store upload (MB/s) | {up:.0} | curl, same three requests {up_curl:.0} | {:.2}× | ≥ 0.9× | {} |",
            up / up_curl,
            verdict(up / up_curl >= 0.9)
        ),
        format!(
            "| bytes received twice after a cut at 40 % (client) | {resent_client} | limit 1 MiB + one 256 KiB chunk | {:.3}× | ≤ 1.00× | {} |",
            resent_client as f64 / (1048576.0 + chunk),
            verdict((resent_client as f64) <= 1048576.0 + chunk)
        ),
        format!(
            "| diagnosis: bytes the store sent twice after that cut (its log) | {resent_store} | what the proxy's socket had taken but not passed on when it cut | | | |"
        ),
        format!(
            "| rafty-store peak RSS while serving (MiB) | {hwm:.1} | target 32 | {:.2}× | ≤ 1.00× | {} |",
            hwm / 32.0,
            verdict(hwm <= 32.0)
        ),
        format!(
            "| one job, fetching worker (s) | {remote:.2} | local worker {local:.2}; + transfer at the measured rates {transfer:.2} | {:.3}× of local × 1.05 + transfer | ≤ 1.00× | {} |",
            remote / allowed,
            verdict(remote <= allowed)
        ),
    ])
}
