//! The `dashboard` group: `raftyctl dashboard` with a history of 10 000 jobs, under 20 simulated
//! workers each publishing one progress event a second.
//!
//! - Event → browser latency: each progress event's publish (on the bench's broker) to the moment
//!   an SSE client on loopback reads the delta that carries it; p50 and p99, target p99 ≤ 250 ms.
//! - The dashboard's RSS (target ≤ 32 MiB) and CPU over that load.
//! - First render: headless chromium (driven by chromedriver) loads the page; the page records
//!   `performance.now()` once the first snapshot (the whole history) is in the DOM and laid out
//!   (`data-first-render-ms`), read back over WebDriver. The page puts the newest 200 rows of the
//!   history in the DOM (the rest behind "Show older"). Target ≤ 300 ms.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rafty_core::names::EVENTS_EXCHANGE;
use rafty_core::wire::{Event, Progress};
use rafty_testkit::{Env, bin, wait_for};
use raftyctl::dashboard::history::{self, Entry};
use uuid::Uuid;

use crate::{cpu_secs, rss_kib, verdict};

/// How big the group runs.
pub struct Params {
    workers: usize,
    secs: u64,
    renders: usize,
    history: usize,
}

impl Params {
    /// `--quick`: 3 s of load and one render; else 30 s and five renders.
    pub fn new(quick: bool) -> Params {
        Params {
            workers: 20,
            secs: if quick { 3 } else { 30 },
            renders: if quick { 1 } else { 5 },
            history: history::CAP,
        }
    }

    /// For the page.
    pub fn describe(&self) -> String {
        format!(
            "{} simulated workers × 1 progress event/s for {} s, a history of {} jobs, {} first render(s)",
            self.workers, self.secs, self.history, self.renders
        )
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Load the page `p.renders` times in headless chromium (one browser, a fresh navigation each
/// time) and read the `data-first-render-ms` it records.
fn first_renders(url: &str, p: &Params) -> anyhow::Result<Vec<f64>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _driver = Running(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("chromedriver (chromium-driver, scripts/install-deps): {e}")
            })?,
    );
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let base = format!("http://127.0.0.1:{port}");
    let call =
        |method: &str, path: &str, body: serde_json::Value| -> anyhow::Result<serde_json::Value> {
            let url = format!("{base}{path}");
            let mut r = if method == "DELETE" {
                http.delete(&url).call()?
            } else {
                http.post(&url)
                    .header("content-type", "application/json")
                    .send(body.to_string())?
            };
            let status = r.status().as_u16();
            let v: serde_json::Value = serde_json::from_str(&r.body_mut().read_to_string()?)?;
            anyhow::ensure!(status == 200, "WebDriver {method} {path}: {v}");
            Ok(v["value"].clone())
        };
    wait_for("chromedriver", Duration::from_secs(30), || {
        http.get(format!("{base}/status"))
            .call()
            .ok()
            .filter(|r| r.status() == 200)
    });
    let session = call(
        "POST",
        "/session",
        serde_json::json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                // --no-sandbox: root.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]}}}}),
    )?;
    let id = session["sessionId"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no WebDriver session: {session}"))?
        .to_owned();
    let s = format!("/session/{id}");
    let mut renders = Vec::new();
    for _ in 0..p.renders {
        call(
            "POST",
            &format!("{s}/url"),
            serde_json::json!({"url": "about:blank"}),
        )?;
        call("POST", &format!("{s}/url"), serde_json::json!({"url": url}))?;
        let t0 = Instant::now();
        let (ms, rows) = loop {
            let v = call(
                "POST",
                &format!("{s}/execute/sync"),
                serde_json::json!({"script": "return [document.documentElement.dataset.firstRenderMs || null, document.querySelectorAll('#history tbody tr').length];", "args": []}),
            )?;
            if let Some(ms) = v[0].as_str().and_then(|m| m.parse::<f64>().ok()) {
                break (ms, v[1].as_u64().unwrap_or(0));
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "the page recorded no first render"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // The page puts the newest 200 in the DOM ("Show older" adds more).
        anyhow::ensure!(
            rows as usize >= p.history.min(200),
            "the history was not rendered: {rows} rows"
        );
        renders.push(ms);
    }
    let _ = call("DELETE", &s, serde_json::Value::Null);
    Ok(renders)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Run the group.
pub fn bench(env: &Env, p: &Params) -> anyhow::Result<Vec<String>> {
    let out = env.raftyctl(&["setup"]);
    anyhow::ensure!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = env.path().join("dashboard-state");
    std::fs::create_dir_all(&state)?;
    let mut file = std::fs::File::create(state.join(history::FILE))?;
    for n in 0..p.history {
        let mut line = serde_json::to_vec(&Entry::sample(&format!("Film {n}"), n as u64))?;
        line.push(b'\n');
        file.write_all(&line)?;
    }
    drop(file);

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(env.path().join("dashboard.log"))?;
    let dash = Running(
        Command::new(bin("raftyctl"))
            .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&state)
            .env("RAFTY_CONFIG", env.config())
            .env_remove("RAFTY_AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    let url = format!("http://127.0.0.1:{port}/");
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    wait_for("the dashboard", Duration::from_secs(30), || {
        http.get(&url).call().ok()
    });

    // First render of the 10 000-job history in headless chromium, driven by chromedriver: a
    // `--dump-dom` would print the page at its load event, before the snapshot comes.
    let mut renders = first_renders(&url, p)?;

    // An SSE client: each delta's jobs, matched to the publish that made them.
    let sent: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stream_agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let response = stream_agent.get(format!("{url}events")).call()?;
    let reader = BufReader::new(response.into_body().into_reader());
    {
        let sent = sent.clone();
        let latencies = latencies.clone();
        std::thread::spawn(move || {
            let mut event = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ")
                    && event == "delta"
                {
                    let at = Instant::now();
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                        continue;
                    };
                    let Some(jobs) = v["jobs"].as_object() else {
                        continue;
                    };
                    let sent = sent.lock().unwrap();
                    let mut l = latencies.lock().unwrap();
                    for (id, job) in jobs {
                        let Some(tick) = job["percent"].as_f64() else {
                            continue;
                        };
                        if let Some(t0) = sent.get(&(id.clone(), tick as u64)) {
                            l.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
                        }
                    }
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));

    let pid = dash.0.id();
    let amqp = env.amqp();
    let jobs: Vec<Uuid> = (0..p.workers).map(|_| Uuid::new_v4()).collect();
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    for tick in 0..p.secs {
        for (w, id) in jobs.iter().enumerate() {
            // Each worker once a second, the fleet spread over the second.
            let due = t0
                + Duration::from_secs(tick)
                + Duration::from_millis((w as u64 * 1000) / p.workers as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let event = Event::Progress(Progress {
                id: *id,
                host: format!("sim-{w}"),
                title: 1,
                percent: tick as f64 + 0.5,
                fps: Some(240.0),
                eta_secs: Some(600 - tick),
            });
            sent.lock()
                .unwrap()
                .insert((id.to_string(), tick), Instant::now());
            let props = lapin::BasicProperties::default()
                .with_content_type("application/json".into())
                .with_type(event.message_type().as_str().into());
            amqp.publish(
                EVENTS_EXCHANGE,
                event.routing_key(),
                &event.to_json(),
                props,
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_secs(pid) - cpu0) / wall * 100.0;
    let rss = rss_kib(pid, "VmRSS:") as f64 / 1024.0;
    let hwm = rss_kib(pid, "VmHWM:") as f64 / 1024.0;
    drop(dash);

    let mut l = latencies.lock().unwrap().clone();
    let expected = p.workers * p.secs as usize;
    anyhow::ensure!(
        l.len() * 10 >= expected * 9,
        "only {} of {expected} events reached the SSE client",
        l.len()
    );
    l.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
    renders.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let render = renders[renders.len() / 2];
    let spread = |v: &[f64]| format!("({:.0}–{:.0})", v[0], v[v.len() - 1]);
    Ok(vec![
        format!(
            "| dashboard: event → SSE client p50 / p99 (ms), {} events | {p50:.1} / {p99:.1} | target p99 250 | {:.2}× | ≤ 1.00× | {} |",
            l.len(),
            p99 / 250.0,
            verdict(p99 <= 250.0)
        ),
        format!(
            "| dashboard RSS under load, now / peak (MiB) | {rss:.1} / {hwm:.1} | target 32 | {:.2}× | ≤ 1.00× | {} |",
            hwm / 32.0,
            verdict(hwm <= 32.0)
        ),
        format!(
            "| dashboard CPU, {} workers × 1 event/s (% of a core) | {cpu:.1} | (no target) | | | |",
            p.workers
        ),
        format!(
            "| dashboard first render, a history of {} jobs (newest 200 rows in the DOM), chromium (ms) | {render:.0} {} | target 300 | {:.2}× | ≤ 1.00× | {} |",
            p.history,
            spread(&renders),
            render / 300.0,
            verdict(render <= 300.0)
        ),
    ])
}
