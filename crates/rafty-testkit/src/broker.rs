//! Private RabbitMQ nodes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{require_tools, script};

/// A RabbitMQ node of this test process.
pub struct Broker {
    dir: PathBuf,
    port: u16,
    address: String,
    netns: Option<String>,
    shape: BrokerBuilder,
}

/// A node of another shape than [`Broker::start`]'s: other settings, another address, another
/// network namespace.
#[derive(Default, Clone)]
pub struct BrokerBuilder {
    conf: Vec<String>,
    advanced: Option<String>,
    address: Option<String>,
    netns: Option<String>,
    tls: Option<[PathBuf; 3]>,
}

impl BrokerBuilder {
    /// Also listen for TLS (`amqps://`) on [`Broker::tls_port`], with this CA file, server certificate
    /// and key (PEM). Clients are not asked for certificates.
    pub fn tls(mut self, ca: &Path, cert: &Path, key: &Path) -> Self {
        self.tls = Some([ca.to_owned(), cert.to_owned(), key.to_owned()]);
        self
    }

    /// Append a `rabbitmq.conf` line (a later key wins over the defaults), e.g.
    /// `consumer_timeout = 5000`.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_owned());
        self
    }

    /// The node's `advanced.config` (Erlang terms), for settings `rabbitmq.conf` cannot express.
    pub fn advanced(mut self, terms: &str) -> Self {
        self.advanced = Some(terms.to_owned());
        self
    }

    /// Listen on `address` instead of 127.0.0.1.
    pub fn address(mut self, address: &str) -> Self {
        self.address = Some(address.to_owned());
        self
    }

    /// Run the node inside the network namespace `name` (`ip netns add` it first); `rabbitmqctl`
    /// and stopping follow it there.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    /// Start the node, stopped when this process exits.
    pub fn start(self) -> Broker {
        Broker::start_with(self)
    }
}

static SHARED: OnceLock<Broker> = OnceLock::new();
static VHOSTS: AtomicU32 = AtomicU32::new(0);

/// The node shared by the tests of this binary (started on first use).
pub fn shared_broker() -> &'static Broker {
    SHARED.get_or_init(Broker::start)
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Broker {
    /// Start a new node on free ports, under a fresh directory, stopped when this process exits.
    pub fn start() -> Broker {
        Broker::start_with(BrokerBuilder::default())
    }

    /// A node with other settings: see [`BrokerBuilder`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    fn start_with(shape: BrokerBuilder) -> Broker {
        require_tools(&["ffmpeg"]);
        assert!(
            Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
            "rabbitmq-server is not installed: run `sudo .ci/install-deps`"
        );
        // AMQP port p, distribution p+10000, epmd p+11000 (see scripts/rafty-broker).
        // Each node of this process starts from its own offset, so two started at once never race
        // for the same port; the pid spreads test binaries apart.
        static NODES: AtomicU32 = AtomicU32::new(0);
        let nth = NODES.fetch_add(1, Ordering::SeqCst) as u16;
        let seed = (std::process::id() as u16)
            .wrapping_mul(7)
            .wrapping_add(nth.wrapping_mul(1009));
        let mut candidates = (0..2000u16)
            .map(|i| 20000 + seed.wrapping_add(i * 13) % 9000)
            .filter(|&p| {
                port_free(p) && port_free(p + 1) && port_free(p + 10000) && port_free(p + 11000)
            });
        // The distribution and epmd ports lie in the kernel's ephemeral range: a client socket of
        // another test can take one between the check above and the node's bind. Such a node dies
        // at once saying so; it is started again on other ports.
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let port = candidates.next().expect("a free port for the broker");
            let broker = Broker::at(port, &shape);
            match broker.try_boot(&broker.shape) {
                Ok(()) => {
                    broker.reap_on_exit();
                    return broker;
                }
                Err(e)
                    if attempt < TRIES
                        && (e.contains("already_used") || e.contains("eaddrinuse")) =>
                {
                    eprintln!(
                        "rafty-testkit: a port of node {port} was taken as it started; another"
                    );
                    let _ = Command::new(script("rafty-broker"))
                        .arg("stop")
                        .arg(&broker.dir)
                        .output();
                    let _ = std::fs::remove_dir_all(&broker.dir);
                }
                Err(e) => panic!("the test broker did not start: {e}"),
            }
        }
        unreachable!("the last try panics")
    }

    /// The node on AMQP port `port` with `shape`, not started.
    fn at(port: u16, shape: &BrokerBuilder) -> Broker {
        let mut shape = shape.clone();
        if let Some([ca, cert, key]) = &shape.tls {
            let address = shape.address.as_deref().unwrap_or("127.0.0.1");
            let lines = [
                format!("listeners.ssl.default = {address}:{}", port + 1),
                format!("ssl_options.cacertfile = {}", ca.display()),
                format!("ssl_options.certfile = {}", cert.display()),
                format!("ssl_options.keyfile = {}", key.display()),
                "ssl_options.verify = verify_none".to_owned(),
                "ssl_options.fail_if_no_peer_cert = false".to_owned(),
            ];
            shape.conf.extend(lines);
        }
        let dir =
            std::env::temp_dir().join(format!("rafty-test-broker-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Broker {
            dir,
            port,
            address: shape.address.clone().unwrap_or_else(|| "127.0.0.1".into()),
            netns: shape.netns.clone(),
            shape,
        }
    }

    fn boot_with(&self, shape: &BrokerBuilder) {
        if let Err(e) = self.try_boot(shape) {
            panic!("the test broker did not start: {e}");
        }
    }

    /// Start the node; its complaint when it does not start.
    fn try_boot(&self, shape: &BrokerBuilder) -> Result<(), String> {
        let mut cmd = Command::new(script("rafty-broker"));
        cmd.arg("start").arg(&self.dir).arg(self.port.to_string());
        cmd.env("RAFTY_BROKER_ADDRESS", &self.address);
        cmd.env("RAFTY_BROKER_CONF", shape.conf.join("\n"));
        if let Some(terms) = &shape.advanced {
            cmd.env("RAFTY_BROKER_ADVANCED", terms);
        }
        match &shape.netns {
            Some(ns) => cmd.env("RAFTY_BROKER_NETNS", ns),
            None => cmd.env_remove("RAFTY_BROKER_NETNS"),
        };
        let out = cmd.output().expect("run scripts/rafty-broker");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Stop the node (its data stays; [`Broker::restart`] brings it back).
    pub fn stop(&self) {
        let out = Command::new(script("rafty-broker"))
            .arg("stop")
            .arg(&self.dir)
            .output()
            .expect("run scripts/rafty-broker");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start a stopped node again on the same port with the same data and settings.
    pub fn restart(&self) {
        self.boot_with(&self.shape);
    }

    /// The TLS port, when the node was built with [`BrokerBuilder::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.shape.tls.as_ref().map(|_| self.port + 1)
    }

    /// The address the node listens on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The node's directory (its `rabbitmq.conf`, logs and data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A process outside the test's process group waits for this process to end, then stops the node
    /// and removes its directory, so no broker outlives its tests.
    fn reap_on_exit(&self) {
        let reaper = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} stop {dir}; rm -rf {dir}",
            pid = std::process::id(),
            stop = shell_quote(&script("rafty-broker")),
            dir = shell_quote(&self.dir),
        );
        // `setsid -f` forks the reaper into its own session and returns at once.
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &reaper])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the broker reaper");
        assert!(status.success(), "setsid failed: {status}");
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run `rabbitmqctl` against this node.
    pub fn ctl(&self, args: &[&str]) -> String {
        let env = Command::new(script("rafty-broker"))
            .arg("env")
            .arg(&self.dir)
            .arg(self.port.to_string())
            .output()
            .expect("rafty-broker env");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/lib/rabbitmq/bin/rabbitmqctl"]);
                c
            }
            None => Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl"),
        };
        for line in String::from_utf8_lossy(&env.stdout).lines() {
            if let Some((k, v)) = line.trim_start_matches("export ").split_once('=') {
                cmd.env(k, v.trim_matches('"'));
            }
        }
        let out = cmd.args(args).output().expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh vhost for one test, with full rights for `guest`; returns its AMQP URL.
    pub fn vhost(&self, test: &str) -> String {
        let n = VHOSTS.fetch_add(1, Ordering::SeqCst);
        let name = format!("{test}-{n}");
        self.ctl(&["add_vhost", &name]);
        self.ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        format!(
            "amqp://guest:guest@{}:{}/{name}?heartbeat=5",
            self.address, self.port
        )
    }

    /// URL of the default vhost.
    pub fn url(&self) -> String {
        format!(
            "amqp://guest:guest@{}:{}/%2f?heartbeat=5",
            self.address, self.port
        )
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}
