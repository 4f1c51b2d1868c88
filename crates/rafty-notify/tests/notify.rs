//! The notifier end to end: a real RabbitMQ (a private node for this test binary, a vhost per test), the
//! real `rafty-notify` binary, events published the way `transcoded` and `rip` publish them, and a
//! small HTTP server in the test standing in for a webhook receiver and for ntfy.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use nix::sys::signal::Signal;
use rafty_testkit::{Amqp, Env, Worker, bin, shared_broker, wait_for};
use serde_json::{Value, json};

const QUEUE: &str = "rafty.notify";
const WAIT: Duration = Duration::from_secs(30);
/// How long to keep watching for a duplicate after the expected requests arrived.
const SETTLE: Duration = Duration::from_millis(2500);

// ---------------------------------------------------------------------------------------------------
// A recording HTTP server.

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    /// Header names in lower case.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    /// The status the server answered with.
    status: u16,
    at: Instant,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// Path → how many of its next requests get a 500.
    failures: BTreeMap<String, u32>,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every request and answers 200 (or 500 when told).
struct Receiver {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test HTTP server");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Receiver { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answer the next `n` requests for `path` with 500.
    fn fail_next(&self, path: &str, n: u32) {
        self.state
            .lock()
            .unwrap()
            .failures
            .insert(path.to_owned(), n);
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    fn total(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// Wait for `n` requests on `path`, then make sure no more come within [`SETTLE`].
    fn exactly(&self, path: &str, n: usize) -> Vec<Request> {
        wait_for(&format!("{n} requests on {path}"), WAIT, || {
            (self.requests(path).len() >= n).then_some(())
        });
        std::thread::sleep(SETTLE);
        let got = self.requests(path);
        assert_eq!(
            got.len(),
            n,
            "{path} got {} requests, expected exactly {n}: {:#?}",
            got.len(),
            got.iter().map(Request::text).collect::<Vec<_>>()
        );
        got
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path} without Content-Length: {headers:?}"));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("read the body");
    let status = {
        let mut s = state.lock().unwrap();
        let status = match s.failures.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                500
            }
            _ => 200,
        };
        s.requests.push(Request {
            path,
            headers,
            body,
            status,
            at: Instant::now(),
        });
        status
    };
    let (reason, answer) = match status {
        200 => ("OK", "ok"),
        _ => ("Internal Server Error", "try again later"),
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------------
// The notifier, and events as the workers and rip publish them.

fn env(test: &str) -> Env {
    Env::new(shared_broker(), test)
}

/// The test's shared config plus a `[notify]` section, in its own file (as the docs advise for now).
fn notify_config(env: &Env, notify: &str) -> PathBuf {
    let shared = std::fs::read_to_string(env.config()).expect("the test's config");
    let path = env.path().join("notify.toml");
    std::fs::write(&path, format!("{shared}\n[notify]\n{notify}\n")).unwrap();
    path
}

/// Start `rafty-notify` and wait until it consumes its queue.
fn start_notifier(env: &Env, config: &Path) -> Worker {
    let mut cmd = Command::new(bin("rafty-notify"));
    for proxy in [
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
    ] {
        cmd.env_remove(proxy);
    }
    let mut notifier = env.worker_with(cmd, config, &[]);
    notifier.wait_log("waiting for events", WAIT);
    notifier
}

/// Stop it with SIGTERM; it must exit 0.
fn stop(notifier: &mut Worker) {
    notifier.signal(Signal::SIGTERM);
    let status = notifier.wait(WAIT);
    assert!(
        status.success(),
        "rafty-notify exited with {status} after SIGTERM; its log:\n{}",
        notifier.log()
    );
}

/// Publish an event the way `rafty_queue::Publisher::publish_event` does.
fn publish(amqp: &Amqp, exchange: &str, routing_key: &str, body: &Value) {
    let kind = routing_key.rsplit('.').next().unwrap();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_type(format!("rafty.event.{kind}.v1").into())
        .with_app_id("transcoded".into());
    amqp.publish(exchange, routing_key, body.to_string().as_bytes(), props);
}

const JOB_ID: &str = "4a28126f-a798-4e74-8212-bd07180314b4";

fn done_event() -> Value {
    json!({
        "id": JOB_ID,
        "host": "attic-pc",
        "name": "Feature Disc",
        "outputs": [{"path": "/var/lib/rafty/media/Feature Disc.mkv", "title": 1,
                     "duration-secs": 45.04, "size": 1203418, "skipped": false}],
        "skipped": false,
        "attempt": 0,
        "preset": "Fast 1080p30",
        "handbrake": "HandBrake 1.6.1",
        "elapsed-secs": 45.3,
        "finished-at": "2026-11-23T16:58:18.897746843Z",
    })
}

fn failed_event() -> Value {
    json!({
        "id": "c5ea363e-3da9-4519-98d5-801b4e63305e",
        "host": "attic-pc",
        "attempt": 0,
        "error-kind": "handbrake",
        "error-class": "permanent",
        "error": "HandBrakeCLI exited with status 2: scan: unrecognized file type; No title found.",
        "next": "dead-letter",
    })
}

fn by_event(requests: &[Request], event: &str) -> Value {
    let found: Vec<Value> = requests
        .iter()
        .map(Request::json)
        .filter(|v| v["event"] == event)
        .collect();
    assert_eq!(found.len(), 1, "one {event} envelope: {found:#?}");
    found.into_iter().next().unwrap()
}

fn by_title<'a>(requests: &'a [Request], title: &str) -> &'a Request {
    let found: Vec<&Request> = requests
        .iter()
        .filter(|r| r.header("title") == title)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one ntfy message titled {title:?}: {:#?}",
        requests
            .iter()
            .map(|r| (r.header("title").to_owned(), r.text()))
            .collect::<Vec<_>>()
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------------

#[test]
fn done_and_failed_events_reach_every_target_exactly_once() {
    let env = env("notify-once");
    let http = Receiver::start();
    let config = notify_config(
        &env,
        &format!(
            "webhooks = [\"{}\"]\nntfy = [\"{}\"]\nretry-delay = \"1s\"\n",
            http.url("/hook"),
            http.url("/rafty-topic")
        ),
    );
    let mut notifier = start_notifier(&env, &config);
    let amqp = env.amqp();
    publish(
        &amqp,
        "rafty.transcode",
        "rafty.transcode.done",
        &done_event(),
    );
    publish(
        &amqp,
        "rafty.transcode",
        "rafty.transcode.failed",
        &failed_event(),
    );
    let rip_done = json!({"device": "/dev/sr0", "image": "/var/lib/rafty/iso/FEATURE_DISC.iso",
                          "job": JOB_ID, "size": 6119424, "host": "attic-pc"});
    let rip_failed = json!({"device": "/dev/sr1", "error": "3 sectors unreadable", "exit": 74, "host": "attic-pc"});
    publish(&amqp, "rafty.rip", "rafty.rip.done", &rip_done);
    publish(&amqp, "rafty.rip", "rafty.rip.failed", &rip_failed);

    // Webhook: the JSON envelope, each event once, in the order published.
    let hooks = http.exactly("/hook", 4);
    for r in &hooks {
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.status, 200);
    }
    let events: Vec<Value> = hooks.iter().map(|r| r.json()["event"].clone()).collect();
    assert_eq!(
        events,
        [
            "transcode.done",
            "transcode.failed",
            "rip.done",
            "rip.failed"
        ]
    );
    let done = by_event(&hooks, "transcode.done");
    assert_eq!(done["body"], done_event(), "the event exactly as published");
    assert_eq!(done["routing-key"], "rafty.transcode.done");
    assert_eq!(
        done["text"],
        "Feature Disc done on attic-pc (1 output, 45 s)"
    );
    assert_eq!(done["title"], "Rafty: Feature Disc done");
    let failed = by_event(&hooks, "transcode.failed");
    assert_eq!(failed["body"], failed_event());
    assert_eq!(by_event(&hooks, "rip.done")["body"], rip_done);
    assert_eq!(by_event(&hooks, "rip.failed")["body"], rip_failed);
    assert_eq!(hooks[1].header("x-rafty-event"), "transcode.failed");

    // ntfy: one line of text, a title and tags.
    let ntfy = http.exactly("/rafty-topic", 4);
    let r = by_title(&ntfy, "Rafty: Feature Disc done");
    assert_eq!(r.text(), "Feature Disc done on attic-pc (1 output, 45 s)");
    assert_eq!(r.header("tags"), "white_check_mark,movie_camera");
    assert!(r.header("content-type").starts_with("text/plain"));
    assert_eq!(r.header("priority"), "");
    let r = by_title(&ntfy, "Rafty: job c5ea363e failed");
    assert_eq!(
        r.text(),
        "job c5ea363e-3da9-4519-98d5-801b4e63305e failed on attic-pc: HandBrakeCLI exited with status 2: \
         scan: unrecognized file type; No title found. (attempt 1; gave up, see raftyctl dead-letter list)"
    );
    assert_eq!(r.header("tags"), "x,movie_camera");
    assert_eq!(r.header("priority"), "high");
    let r = by_title(&ntfy, "Rafty: FEATURE_DISC.iso ripped");
    assert_eq!(
        r.text(),
        "rip of /dev/sr0 done: FEATURE_DISC.iso (5.8 MiB, attic-pc)"
    );
    assert_eq!(r.header("tags"), "white_check_mark,cd");
    let r = by_title(&ntfy, "Rafty: rip of /dev/sr1 failed");
    assert_eq!(
        r.text(),
        "rip of /dev/sr1 failed on attic-pc: 3 sectors unreadable (exit 74)"
    );
    assert_eq!(r.header("tags"), "x,cd");

    // Everything acked: nothing ready, nothing held.
    assert_eq!(amqp.counts(QUEUE), (0, 1), "queue empty, one consumer");
    stop(&mut notifier);
    assert_eq!(
        amqp.counts(QUEUE),
        (0, 0),
        "nothing handed back at stop, no consumer"
    );
    let log = notifier.log();
    assert!(
        log.contains("routing_key=rafty.transcode.done")
            && log.contains(&format!("job_id={JOB_ID}"))
            && log.contains("notified"),
        "a span per event in the log:\n{log}"
    );
}

#[test]
fn events_published_while_the_notifier_is_stopped_arrive_when_it_starts() {
    let env = env("notify-later");
    let http = Receiver::start();
    let config = notify_config(
        &env,
        &format!(
            "webhooks = [\"{}\"]\nntfy = [\"{}\"]\n",
            http.url("/hook"),
            http.url("/topic")
        ),
    );
    // The first run declares the queue; then the notifier is down.
    let mut first = start_notifier(&env, &config);
    stop(&mut first);

    let amqp = env.amqp();
    publish(
        &amqp,
        "rafty.transcode",
        "rafty.transcode.done",
        &done_event(),
    );
    publish(
        &amqp,
        "rafty.rip",
        "rafty.rip.failed",
        &json!({"device": "/dev/sr0", "error": "no disc", "exit": 66}),
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(http.total(), 0, "nobody is notified while it is down");
    assert_eq!(amqp.counts(QUEUE).0, 2, "the events wait in its queue");

    let mut second = start_notifier(&env, &config);
    let hooks = http.exactly("/hook", 2);
    assert_eq!(by_event(&hooks, "transcode.done")["body"], done_event());
    let ntfy = http.exactly("/topic", 2);
    assert_eq!(
        by_title(&ntfy, "Rafty: rip of /dev/sr0 failed").text(),
        "rip of /dev/sr0 failed: no disc (exit 66)"
    );
    stop(&mut second);
    assert_eq!(amqp.counts(QUEUE).0, 0, "both acked");
}

#[test]
fn a_failing_target_is_retried_after_retry_delay_and_the_other_gets_the_event_once() {
    let env = env("notify-retry");
    let http = Receiver::start();
    http.fail_next("/flaky", 1);
    let config = notify_config(
        &env,
        &format!(
            "webhooks = [\"{}\"]\nntfy = [\"{}\"]\nretry-delay = \"1s\"\n",
            http.url("/flaky"),
            http.url("/topic")
        ),
    );
    let mut notifier = start_notifier(&env, &config);
    let amqp = env.amqp();
    publish(
        &amqp,
        "rafty.transcode",
        "rafty.transcode.done",
        &done_event(),
    );

    let flaky = http.exactly("/flaky", 2);
    assert_eq!(
        flaky.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 200]
    );
    assert_eq!(flaky[0].body, flaky[1].body, "the same event again");
    assert_eq!(flaky[1].json()["body"], done_event());
    let gap = flaky[1].at - flaky[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "retried after retry-delay (1 s), not at once: {gap:?}"
    );
    let ntfy = http.exactly("/topic", 1);
    assert_eq!(
        ntfy[0].text(),
        "Feature Disc done on attic-pc (1 output, 45 s)"
    );
    assert_eq!(amqp.counts(QUEUE).0, 0, "acked once both had it");
    stop(&mut notifier);
    assert_eq!(amqp.counts(QUEUE).0, 0);
    let log = notifier.log();
    let target = format!("webhook 1 (http://127.0.0.1:{}/…)", http.port);
    assert!(
        log.lines().any(|l| l.contains("notification failed")
            && l.contains(&target)
            && l.contains("HTTP 500: try again later")),
        "the failure is logged with the target and the reason:\n{log}"
    );
}

#[test]
fn sigterm_while_a_target_fails_exits_0_at_once_and_the_event_waits_for_the_next_start() {
    let env = env("notify-stop");
    let http = Receiver::start();
    http.fail_next("/down", u32::MAX);
    // A long retry-delay: the stop must not wait for it.
    let config = notify_config(
        &env,
        &format!(
            "webhooks = [\"{}\"]\nretry-delay = \"5m\"\n",
            http.url("/down")
        ),
    );
    let mut notifier = start_notifier(&env, &config);
    let amqp = env.amqp();
    publish(
        &amqp,
        "rafty.transcode",
        "rafty.transcode.done",
        &done_event(),
    );
    notifier.wait_log("notification failed", WAIT);

    let asked = Instant::now();
    stop(&mut notifier);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "stopped without waiting for retry-delay: {:?}",
        asked.elapsed()
    );
    assert_eq!(
        amqp.counts(QUEUE).0,
        1,
        "the undelivered event is back in the queue"
    );

    http.fail_next("/down", 0);
    let mut again = start_notifier(&env, &config);
    let got = http.exactly("/down", 2);
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), [500, 200]);
    assert_eq!(got[1].json()["body"], done_event());
    stop(&mut again);
    assert_eq!(amqp.counts(QUEUE).0, 0);
}

#[test]
fn a_command_gets_the_event_json_on_stdin_and_a_non_zero_exit_is_retried() {
    let env = env("notify-command");
    let dir = env.path();
    let script = dir.join("notify-me");
    // Refuses the first event (exit 3), then writes its stdin and $RAFTY_EVENT to files; counts its runs.
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         echo run >> \"$3\"\n\
         if [ ! -e \"$2\" ]; then touch \"$2\"; echo 'first attempt refused' >&2; exit 3; fi\n\
         cat > \"$1.tmp\" && printf '%s' \"$RAFTY_EVENT\" > \"$1.event\" && mv \"$1.tmp\" \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (out, marker, runs) = (dir.join("stdin.json"), dir.join("marker"), dir.join("runs"));
    let argv = json!([[script, out, marker, runs]]);
    let config = notify_config(&env, &format!("commands = {argv}\nretry-delay = \"1s\"\n"));
    let mut notifier = start_notifier(&env, &config);
    let amqp = env.amqp();
    publish(
        &amqp,
        "rafty.transcode",
        "rafty.transcode.failed",
        &failed_event(),
    );

    let envelope: Value = wait_for("the command's output", WAIT, || {
        std::fs::read(&out)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("the command got JSON"))
    });
    assert_eq!(envelope["event"], "transcode.failed");
    assert_eq!(envelope["body"], failed_event());
    assert_eq!(envelope["routing-key"], "rafty.transcode.failed");
    assert_eq!(
        std::fs::read_to_string(out.with_extension("json.event")).unwrap(),
        "transcode.failed"
    );
    std::thread::sleep(SETTLE);
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        2,
        "run twice: refused, then delivered"
    );
    assert_eq!(amqp.counts(QUEUE).0, 0);
    stop(&mut notifier);
    let log = notifier.log();
    assert!(
        log.lines().any(|l| l.contains("notification failed")
            && l.contains("command 1 (")
            && l.contains("exit status: 3")
            && l.contains("first attempt refused")),
        "the failure is logged with the target, the status and stderr:\n{log}"
    );
}

#[test]
fn an_unknown_key_under_notify_exits_78_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rafty.toml");
    for (notify, expected) in [
        (
            "ntfy = [\"https://ntfy.sh/rafty\"]\ncolour = \"red\"\n",
            "colour",
        ),
        (
            "webhooks = [\"ftp://example.org/x\"]\n",
            "[notify] webhooks",
        ),
    ] {
        std::fs::write(
            &config,
            format!("[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\n[notify]\n{notify}"),
        )
        .unwrap();
        let out = Command::new(bin("rafty-notify"))
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env_remove("RAFTY_AMQP_URL")
            .output()
            .expect("run rafty-notify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains(&config.display().to_string()) && stderr.contains(expected),
            "names the file and {expected:?}: {stderr}"
        );
    }
}

/// `systemd/rafty-notify.service` parses (`systemd-analyze verify`, on a copy whose ExecStart names the
/// binary just built), keeps its exposure score below 2.0, and leaves nothing writable.
#[test]
fn the_unit_verifies_and_stays_locked_down() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-analyze is missing: apt-get install systemd");
    let unit = rafty_testkit::workspace_root().join("systemd/rafty-notify.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let exec = "ExecStart=/usr/local/bin/rafty-notify ";
    assert!(text.contains(exec), "{text}");
    for line in [
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in the unit");
    }
    assert!(
        !text
            .lines()
            .any(|l| ["ReadWritePaths=", "StateDirectory=", "LogsDirectory="]
                .iter()
                .any(|k| l.starts_with(k))),
        "nothing writable"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("rafty-notify.service");
    let built = format!("ExecStart={} ", bin("rafty-notify").display());
    std::fs::write(&copy, text.replace(exec, &built)).unwrap();

    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(analyze)
        .args(["security", "--offline=true"])
        .arg(&copy)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for rafty-notify.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no score in: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score < 2.0, "exposure {score}:\n{stdout}");
}

#[test]
fn only_the_join_of_a_split_title_is_announced() {
    let env = env("notify-split");
    let http = Receiver::start();
    let config = notify_config(&env, &format!("webhooks = [\"{}\"]\n", http.url("/hook")));
    let mut notifier = start_notifier(&env, &config);
    let amqp = env.amqp();
    // A piece, the tracks pass, then the join, as the steps' workers publish their `done`s.
    let step = |id: &str, step: &str, outputs: Value| {
        let mut done = done_event();
        done["id"] = json!(id);
        done["outputs"] = outputs;
        done["split"] = json!({"whole": JOB_ID, "step": step, "frames": 1800, "checks": []});
        done
    };
    let join = step(
        "9d9c37b5-6a53-5e0b-9f1e-0b0f8d7c6a11",
        "join",
        done_event()["outputs"].clone(),
    );
    for done in [
        step("1f0e6f9a-3f2b-5a8e-8a7c-2e3f4a5b6c7d", "video", json!([])),
        step("2a1b3c4d-5e6f-5a7b-8c9d-0e1f2a3b4c5d", "tracks", json!([])),
        join.clone(),
    ] {
        publish(&amqp, "rafty.transcode", "rafty.transcode.done", &done);
    }
    let hooks = http.exactly("/hook", 1);
    assert_eq!(
        by_event(&hooks, "transcode.done")["body"],
        join,
        "the join's done, the title's, is the one announced"
    );
    stop(&mut notifier);
    assert_eq!(amqp.counts(QUEUE).0, 0, "the steps' events are acked too");
}
