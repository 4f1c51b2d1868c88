//! Traffic to the broker over TLS: `amqps://` verified against a CA the test makes, a whole job through
//! a worker over it, and clear refusals for a wrong CA or a CA file on a plain URL. This binary has its
//! own node with a TLS listener.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rafty_testkit::{Broker, Env, fixture_iso, require_tools};

/// A CA, and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.pem"))
}

fn pki() -> Pki {
    require_tools(&["openssl"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let ca = make_ca(d, "rafty-test-ca");
    let other_ca = make_ca(d, "some-other-ca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "rafty-test-ca.pem",
            "-CAkey",
            "rafty-test-ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Pki {
        ca,
        other_ca,
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        _dir: dir,
    }
}

fn world() -> &'static (Pki, Broker) {
    static WORLD: OnceLock<(Pki, Broker)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let pki = pki();
        let broker = Broker::builder().tls(&pki.ca, &pki.cert, &pki.key).start();
        (pki, broker)
    })
}

/// An environment whose config reaches its vhost over TLS, trusting `ca`.
fn tls_env(test: &str, ca: &Path) -> Env {
    let (_, broker) = world();
    let mut env = Env::new(broker, test);
    let vhost = env.url.rsplit_once('/').expect("a vhost").1.to_owned();
    let vhost = vhost
        .split_once('?')
        .map_or(vhost.as_str(), |(v, _)| v)
        .to_owned();
    env.url = format!(
        "amqps://guest:guest@127.0.0.1:{}/{vhost}?heartbeat=5&cacertfile={}",
        broker.tls_port().expect("a TLS listener"),
        ca.display()
    );
    env.write_config("rafty.toml", None, &[]);
    env
}

#[test]
fn a_job_goes_through_a_worker_over_amqps_verified_against_the_test_ca() {
    let (pki, broker) = world();
    let env = tls_env("tls", &pki.ca);
    let setup = env.raftyctl(&["setup"]);
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "over tls.iso");
    let id = env.submit(&iso, &[]);
    let mut worker = env.worker(&env.config(), &["--max-jobs", "1"]);
    worker.wait_log("waiting for jobs", Duration::from_secs(30));
    // The broker's own view: the worker's connection is TLS.
    let connections = broker.ctl(&[
        "list_connections",
        "client_properties",
        "ssl",
        "ssl_protocol",
    ]);
    let worker_line = connections
        .lines()
        .find(|l| l.contains("transcoded@"))
        .unwrap_or_else(|| panic!("the worker's connection is listed:\n{connections}"));
    assert!(
        worker_line.contains("true") && worker_line.contains("tlsv1."),
        "the worker's connection is encrypted: {worker_line}"
    );
    let status = worker.wait(Duration::from_secs(120));
    assert!(status.success(), "{}", worker.log());
    assert!(
        worker.log().contains(&format!("job_id={id}")),
        "{}",
        worker.log()
    );
    assert!(
        env.media_dir.join("over tls.mkv").exists(),
        "{:?}",
        env.media_files()
    );
    assert!(
        !worker.log().contains("guest:guest"),
        "the password never reaches the log:\n{}",
        worker.log()
    );
}

#[test]
fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_message() {
    let (pki, _) = world();
    let env = tls_env("tls-wrong-ca", &pki.other_ca);
    let out = env.raftyctl(&["setup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "unavailable: {err}");
    assert!(err.contains("not trusted"), "{err}");
    assert!(
        err.contains(&format!("cacertfile={}", pki.other_ca.display())),
        "names the CA file it used: {err}"
    );
    assert!(!err.contains("guest:guest"), "password masked: {err}");
}

#[test]
fn a_ca_file_on_a_plain_amqp_url_or_a_missing_ca_file_is_refused_before_connecting() {
    let (pki, broker) = world();
    let mut env = Env::new(broker, "tls-plain");
    env.url = format!("{}&cacertfile={}", env.url, pki.ca.display());
    env.write_config("rafty.toml", None, &[]);
    let out = env.raftyctl(&["setup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not amqps://"), "{err}");

    let env = tls_env("tls-missing", Path::new("/nonexistent/ca.pem"));
    let out = env.raftyctl(&["setup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read the CA file cacertfile=/nonexistent/ca.pem"),
        "{err}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Append `[store]` lines to a config file.
fn with_store(config: &Path, lines: &str) {
    let mut text = std::fs::read_to_string(config).expect("read config");
    text.push_str("[store]\n");
    text.push_str(lines);
    std::fs::write(config, text).expect("write config");
}

#[test]
fn a_worker_without_the_storage_fetches_and_sends_back_over_https_and_refuses_another_ca() {
    let (pki, broker) = world();
    let env = Env::new(broker, "store-tls");
    let token = "laptop-token-0123456789abcdef";
    let tokens = env.path().join("store-tokens");
    std::fs::write(&tokens, format!("{token}\n")).unwrap();
    let port = free_port();
    // The NAS: its config serves the images and the library over HTTPS, and names the store in jobs.
    with_store(
        &env.config(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nurl = \"https://127.0.0.1:{port}\"\ntoken-file = \"{}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            tokens.display(),
            pki.cert.display(),
            pki.key.display()
        ),
    );
    let mut store = env.worker_with(
        Command::new(rafty_testkit::bin("rafty-store")),
        &env.config(),
        &[],
    );
    store.wait_log("rafty-store serving", Duration::from_secs(30));
    assert!(store.log().contains("tls=true"), "{}", store.log());

    // The laptop: no source root it can read, its own scratch and (unused) library.
    let laptop = |name: &str, ca: &Path| {
        let config = env.write_config(
            name,
            Some("laptop"),
            &[
                ("source-roots", "[\"/nonexistent/rafty-tls\"]"),
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
        with_store(
            &config,
            &format!(
                "url = \"https://127.0.0.1:{port}\"\ntoken-file = \"{}\"\nca-file = \"{}\"\n",
                tokens.display(),
                ca.display()
            ),
        );
        config
    };
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "over https.iso");
    let id = env.submit(&iso, &[]);
    let mut worker = env.worker(&laptop("laptop.toml", &pki.ca), &["--max-jobs", "1"]);
    let status = worker.wait(Duration::from_secs(180));
    assert!(status.success(), "{}", worker.log());
    let log = worker.log();
    assert!(log.contains(&format!("job_id={id}")), "{log}");
    assert!(log.contains("image fetched and verified"), "{log}");
    assert!(log.contains("output uploaded and in place"), "{log}");
    let out = env.media_dir.join("over https.mkv");
    assert!(
        out.exists(),
        "in the NAS's library: {:?}",
        env.media_files()
    );
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.media_dir.join("over https.mkv.rafty.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["job-id"], id.as_str(), "{sidecar}");
    assert_eq!(sidecar["host"], "laptop", "{sidecar}");
    let laptop_media = env.path().join("laptop-media");
    assert!(
        std::fs::read_dir(&laptop_media).map_or(true, |d| d.count() == 0),
        "nothing in the laptop's own library"
    );
    let remote = env.path().join("laptop-scratch").join("remote");
    assert!(
        std::fs::read_dir(&remote).map_or(true, |d| d.count() == 0),
        "scratch cleaned: {:?}",
        std::fs::read_dir(&remote).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    assert!(
        !log.contains(token),
        "the token never reaches the log:\n{log}"
    );

    // Another CA: the store's certificate is refused, the job is not fetched, the log says why.
    let iso = env.add_iso(&fixture_iso("SMALL", &[12]), "wrong ca.iso");
    let id = env.submit(&iso, &[]);
    let mut worker = env.worker(
        &laptop("wrong-ca.toml", &pki.other_ca),
        &["--max-jobs", "1"],
    );
    let status = worker.wait(Duration::from_secs(60));
    assert!(status.success(), "{}", worker.log());
    let log = worker.log();
    assert!(log.contains(&format!("job_id={id}")), "{log}");
    assert!(
        log.contains("store-unavailable") && log.contains("certificate"),
        "the failure names the store and the certificate: {log}"
    );
    assert!(!env.media_dir.join("wrong ca.mkv").exists());
}
