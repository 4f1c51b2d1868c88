//! What a worker shows the outside: Prometheus metrics after a real job, heartbeats, and the
//! systemd-logind sleep inhibitor held during a job and released after it (python3-dbusmock's logind
//! template on a private bus).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use rafty_testkit::{Env, PrivateBus, bin, fixture_iso, shared_broker, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(180);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_count_the_jobs_and_heartbeats_announce_the_worker() {
    let env = Env::new(shared_broker(), "metrics");
    let port = free_port();
    let cfg = env.write_config(
        "m.toml",
        Some("metered"),
        &[
            ("metrics-address", &format!("\"127.0.0.1:{port}\"")),
            ("heartbeat-interval", "\"1s\""),
        ],
    );
    let amqp = env.amqp();
    let tap = amqp.tap();
    let id = env.submit(
        &env.add_iso(&fixture_iso("SMALL", &[12]), "metered.iso"),
        &[],
    );
    let mut worker = env.worker(&cfg, &[]);
    amqp.wait_event(&tap, "done", JOB_TIMEOUT, |v| v["id"] == id.as_str());
    let beat = amqp.wait_event(&tap, "heartbeat", Duration::from_secs(10), |v| {
        v["host"] == "metered"
    });
    assert_eq!(beat["app"], "transcoded");

    let page = get(port, "/metrics");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for line in [
        "rafty_jobs_total{outcome=\"done\"} 1",
        "rafty_handbrake_exits_total{code=\"0\"} 1",
        "rafty_encode_seconds_count 1",
        "rafty_worker_busy 0",
    ] {
        assert!(page.contains(line), "{line:?} missing from:\n{page}");
    }
    assert!(get(port, "/other").starts_with("HTTP/1.1 404"));
    worker.signal(Signal::SIGTERM);
    assert!(
        worker.wait(Duration::from_secs(30)).success(),
        "{}",
        worker.log()
    );
}

/// python3-dbusmock's logind template on `bus`, killed when dropped.
struct Logind(Child);

impl Logind {
    fn start(bus: &PrivateBus) -> Logind {
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--system", "--template", "logind"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3-dbusmock (apt-get install python3-dbusmock)");
        let logind = Logind(child);
        wait_for("the logind mock", Duration::from_secs(30), || {
            inhibitors(bus).ok()
        });
        logind
    }
}

impl Drop for Logind {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `org.freedesktop.login1.Manager.ListInhibitors`, one `what|who|why|mode` line each.
fn inhibitors(bus: &PrivateBus) -> Result<Vec<String>, String> {
    let script = "import dbus, sys\n\
        b = dbus.bus.BusConnection(sys.argv[1])\n\
        m = b.get_object('org.freedesktop.login1', '/org/freedesktop/login1')\n\
        for i in m.ListInhibitors(dbus_interface='org.freedesktop.login1.Manager'):\n\
        \x20   print('|'.join(str(x) for x in i[:4]))\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, bus.address()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

#[test]
fn a_sleep_inhibitor_is_held_during_a_job_and_released_after_it() {
    let env = Env::new(shared_broker(), "inhibit");
    let bus = PrivateBus::start(env.path());
    let _logind = Logind::start(&bus);
    assert_eq!(inhibitors(&bus).unwrap(), Vec::<String>::new());

    let amqp = env.amqp();
    let tap = amqp.tap();
    let id = env.submit(&env.add_iso(&fixture_iso("LONG", &[120]), "Awake.iso"), &[]);
    let mut cmd = Command::new(bin("transcoded"));
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
    let mut worker = env.worker_with(cmd, &env.config(), &["--max-jobs", "1"]);
    amqp.wait_event(&tap, "progress", JOB_TIMEOUT, |v| v["id"] == id.as_str());
    let held = inhibitors(&bus).unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].starts_with("sleep|Rafty transcoded|encoding Awake|block"),
        "{held:?}"
    );

    assert!(worker.wait(JOB_TIMEOUT).success(), "{}", worker.log());
    wait_for("the inhibitor released", Duration::from_secs(10), || {
        inhibitors(&bus).unwrap().is_empty().then_some(())
    });
}
