//! `raftyctl dashboard` in a real browser: Debian's chromium, headless, driven over W3C WebDriver
//! (chromedriver) with plain JSON calls, while a real `transcoded` runs a real HandBrakeCLI on a
//! fixture ISO. The page must show the job live (name, progress, worker), a dead letter with its
//! reason, the history after the job and after a restart of the dashboard; the requeue button
//! must work with the token and be refused without it; with actions off, every action is refused.
//!
//! `RAFTY_SCREENSHOTS=1` also writes docs/dashboard/*.png (mid-encode, a dead letter, idle, a
//! phone-sized window).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rafty_core::names::{DEAD_QUEUE, WORK_QUEUE};
use rafty_testkit::{Env, bin, fixture_iso, garbage_iso, shared_broker, wait_for};
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A running `raftyctl dashboard`; stopped when dropped.
struct Dashboard {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Dashboard {
    fn start(env: &Env, state: &Path, extra: &[&str], name: &str) -> Dashboard {
        let port = free_port();
        let log = env.path().join(format!("{name}.log"));
        let child = Command::new(bin("raftyctl"))
            .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .env("RAFTY_CONFIG", env.config())
            .env_remove("RAFTY_AMQP_URL")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start raftyctl dashboard");
        let url = format!("http://127.0.0.1:{port}/");
        let d = Dashboard { child, url, log };
        let http = agent();
        wait_for("the dashboard to serve its page", WAIT, || {
            http.get(&d.url).call().ok().filter(|r| r.status() == 200)
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = agent().post(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("X-Rafty-Token", t);
        }
        let mut r = req.send_empty().expect("POST");
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), body)
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "dashboard exit {status}:\n{}", self.log());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the dashboard did not stop on SIGTERM:\n{}", self.log());
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless chromium through chromedriver, by W3C WebDriver JSON calls.
struct Browser {
    driver: Child,
    session: String,
    http: ureq::Agent,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian's chromium-driver, scripts/install-deps) must be installed",
            );
        let http = agent();
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to be ready", WAIT, || {
            let mut r = http.get(format!("{base}/status")).call().ok()?;
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        let mut b = Browser {
            driver,
            session: format!("{base}/session"),
            http,
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // --no-sandbox: the tests run as root, where chromium's sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let v = b.call("POST", "", Some(caps));
        b.session = format!(
            "{}/{}",
            b.session,
            v["sessionId"].as_str().expect("a session id")
        );
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.session);
        let mut r = match method {
            "GET" => self.http.get(&url).call(),
            "DELETE" => self.http.delete(&url).call(),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        }
        .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    fn text(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                "args": [css]
            })),
        );
        v.as_str().unwrap_or_default().to_owned()
    }

    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let t0 = Instant::now();
        while t0.elapsed() < WAIT {
            last = self.text(css);
            if ok(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        panic!("{what}: {css} never showed it; last:\n{last}");
    }

    fn find(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self, name: &str, section: &str) {
        if std::env::var_os("RAFTY_SCREENSHOTS").is_none_or(|v| v != "1") {
            return;
        }
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({
                "script": "const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({block: 'start'});",
                "args": [section]
            })),
        );
        let png = self.call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    fn phone(&self, on: bool) {
        let (cmd, params) = if on {
            (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
            )
        } else {
            ("Emulation.clearDeviceMetricsOverride", json!({}))
        };
        self.call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.session).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn dead_letters(env: &Env) -> String {
    let out = env.raftyctl(&["dead-letter", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_dashboard_shows_the_fleet_live_in_a_browser_and_its_requeue_needs_the_token() {
    let env = Env::new(shared_broker(), "dashboard");
    let out = env.raftyctl(&["setup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let worker_config = env.write_config("worker.toml", Some("dash-host"), &[]);
    let token_file = env.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let state = env.path().join("dashboard-state");

    // Actions refuse to start with a short token.
    let short = env.path().join("short-token");
    std::fs::write(&short, "too-short\n").unwrap();
    let refused = env.raftyctl(&[
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--allow-actions",
        "--token-file",
        short.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("at least 16 characters"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let dash = Dashboard::start(
        &env,
        &state,
        &[
            "--allow-actions",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        "dashboard-1",
    );
    let browser = Browser::start();
    browser.goto(&dash.url);
    let broker = browser.wait_text("#broker", "connected", |t| t.starts_with("live: "));
    let password = env
        .url
        .split('@')
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert!(
        !broker.contains(&format!(":{password}@"))
            && !dash.log().contains(&format!(":{password}@")),
        "the broker password is masked: {broker}"
    );

    let garbage = env.add_iso(&garbage_iso(), "garbage.iso");
    let bad = env.submit(&garbage, &["--media", "dvd"]);
    let iso = env.add_iso(&fixture_iso("DASH_FILM", &[45]), "Dash Film.iso");
    let good = env.submit(&iso, &[]);
    let mut worker = env.worker(&worker_config, &["--max-jobs", "2"]);

    // Mid-encode: the job's name, a progress figure and the worker's host. Looked at by hand
    // rather than with wait_text, so that a miss shows what the dashboard and the worker did.
    let percent_shown = |t: &str| {
        t.split(" %").any(|before| {
            before.rsplit(char::is_whitespace).next().is_some_and(|w| {
                w.contains('.') && w.parse::<f64>().is_ok_and(|p| (0.0..100.0).contains(&p))
            })
        })
    };
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let jobs = loop {
        let t = browser.text("#jobs");
        if t.contains("Dash Film")
            && t.contains("dash-host")
            && t.contains(&good)
            && percent_shown(&t)
        {
            break t;
        }
        if seen.last() != Some(&t) {
            seen.push(t);
        }
        assert!(
            t0.elapsed() < WAIT,
            "the job in flight never showed with its progress; the page showed, in turn:\n{}\n\ndashboard log:\n{}\n\nworker log:\n{}",
            seen.join("\n---\n"),
            dash.log(),
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(jobs.contains(" %"), "{jobs}");
    browser.wait_text("#workers", "the worker and its job", |t| {
        t.contains("dash-host") && t.contains("Dash Film")
    });
    browser.screenshot("mid-encode", "body");

    // Drain and resume the worker through the dashboard (what `raftyctl drain/resume` do): the
    // answers say the worker's new state, and the page shows it.
    let (status, body) = dash.post("api/workers/dash-host/drain", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"draining\"") || body.contains("\"drained\""),
        "{body}"
    );
    browser.wait_text("#workers", "the drain", |t| t.contains("drain"));
    let (status, body) = dash.post("api/workers/dash-host/resume", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"working\"") || body.contains("\"idle\""),
        "{body}"
    );

    let dead = browser.wait_text("#dead", "the dead letter", |t| {
        t.contains(&bad) && t.contains("No title found")
    });
    assert!(dead.contains("permanent"), "{dead}");
    browser.screenshot("dead-letter", "#workers");

    assert!(
        worker.wait(Duration::from_secs(180)).success(),
        "{}",
        worker.log()
    );
    let history = browser.wait_text("#history", "the finished job", |t| {
        t.contains("Dash Film") && t.contains("done")
    });
    assert!(
        history.contains("dead-letter"),
        "the failure too:\n{history}"
    );
    browser.wait_text("#jobs", "nothing in flight", |t| !t.contains("Dash Film"));
    browser.screenshot("idle", "body");
    browser.phone(true);
    browser.screenshot("phone", "body");
    browser.phone(false);

    // Without the token (or with a wrong one) a requeue is refused and nothing moves.
    let (status, body) = dash.post(&format!("api/dead-letters/{bad}/requeue"), None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = dash.post(
        &format!("api/dead-letters/{bad}/requeue"),
        Some("wrong-token-0123456789"),
    );
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(TOKEN));
    browser.click(&format!("button[data-act=requeue][data-id='{bad}']"));
    browser.wait_text("#action-result", "the refusal", |t| {
        t.contains("refused (401)")
    });
    assert!(dead_letters(&env).contains(&bad), "still parked");

    // With the token typed into the page, the same button requeues it.
    browser.type_into("#token", TOKEN);
    browser.click(&format!("button[data-act=requeue][data-id='{bad}']"));
    browser.wait_text("#action-result", "the requeue", |t| {
        t.contains(&format!("requeue {bad}: done"))
    });
    browser.wait_text("#dead", "the dead letter gone", |t| !t.contains(&bad));
    assert!(!dead_letters(&env).contains(&bad), "no longer parked");
    let back = env.amqp().wait_get(WORK_QUEUE, Duration::from_secs(10));
    assert_eq!(
        back.message_id.as_deref(),
        Some(bad.as_str()),
        "back in the work queue"
    );
    assert_eq!(back.header("x-rafty-attempt"), "0");
    let (status, body) = dash.post("api/workers/nobody/drain", Some(TOKEN));
    assert_eq!(status, 404, "no worker on that host: {body}");
    dash.stop();

    // A restart keeps the history; with actions off every action is refused.
    let dash = Dashboard::start(&env, &state, &[], "dashboard-2");
    browser.goto(&dash.url);
    browser.wait_text("#history", "the history after a restart", |t| {
        t.contains("Dash Film") && t.contains("done")
    });
    for path in [
        format!("api/dead-letters/{bad}/requeue"),
        "api/workers/dash-host/drain".to_owned(),
        "api/workers/dash-host/resume".to_owned(),
    ] {
        assert_eq!(dash.post(&path, Some(TOKEN)).0, 403, "{path}");
    }
    assert_eq!(env.amqp().counts(DEAD_QUEUE).0, 0);
    dash.stop();
}
