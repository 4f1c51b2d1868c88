//! A RabbitMQ cluster of private nodes on this machine: one Erlang cookie and one epmd port for the
//! group, a node name, ports and directories each, formed by classic_config peer discovery from the
//! shipped `config/rabbitmq-cluster.conf` (node names and ports replaced). Nodes can be killed by
//! their pid file, restarted on their data, frozen and thawed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::{require_tools, workspace_root};

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A cluster of private RabbitMQ nodes, stopped when the test process exits.
pub struct Cluster {
    dir: PathBuf,
    base: u16,
    nodes: usize,
    children: Mutex<Vec<Option<Child>>>,
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Cluster {
    /// Start `nodes` nodes together and wait until all of them are in the cluster (~25 s for three).
    /// Every node serves the management API ([`Cluster::management_url`]).
    pub fn start(nodes: usize) -> Cluster {
        require_tools(&["epmd"]);
        assert!(
            Path::new(RABBIT_BIN).join("rabbitmq-server").exists(),
            "rabbitmq-server is not installed: run `sudo scripts/install-deps`"
        );
        let seed = (std::process::id() as u16).wrapping_mul(11);
        let n = nodes as u16;
        let base = (0..2000u16)
            .map(|i| 20000 + seed.wrapping_add(i * 17) % 9000)
            .find(|&p| {
                (0..n).all(|i| {
                    port_free(p + i) && port_free(p + 10000 + i) && port_free(p + 25000 + i)
                }) && port_free(p + 11000)
            })
            .expect("free ports for the cluster");
        let dir =
            std::env::temp_dir().join(format!("rafty-test-cluster-{}-{base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let cookie = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, format!("RAFTYCLUSTER{base}{}", std::process::id())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        let cluster = Cluster {
            dir,
            base,
            nodes,
            children: Mutex::new((0..nodes).map(|_| None).collect()),
        };
        let shipped =
            std::fs::read_to_string(workspace_root().join("config/rabbitmq-cluster.conf"))
                .expect("read config/rabbitmq-cluster.conf");
        for i in 0..nodes {
            let nd = cluster.node_dir(i);
            std::fs::create_dir_all(nd.join("mnesia")).unwrap();
            std::fs::create_dir_all(nd.join("log")).unwrap();
            let mut conf = shipped.clone();
            // A later key wins: the test's node names, ports and sizes after the shipped settings.
            conf.push_str(&format!(
                "\n## tests: this machine's nodes\nlisteners.tcp.default = 127.0.0.1:{}\n\
                 loopback_users = none\nlog.console = false\nlog.file.level = warning\n\
                 vm_memory_high_watermark.absolute = 1GB\n\
                 management.tcp.port = {}\nmanagement.tcp.ip = 127.0.0.1\n",
                cluster.port(i),
                base + 25000 + i as u16
            ));
            for j in 0..nodes {
                conf.push_str(&format!(
                    "cluster_formation.classic_config.nodes.{} = {}\n",
                    j + 1,
                    cluster.node_name(j)
                ));
            }
            std::fs::write(nd.join("rabbitmq.conf"), conf).unwrap();
            std::fs::write(nd.join("advanced.config"), "[].\n").unwrap();
            std::fs::write(nd.join("enabled_plugins"), "[rabbitmq_management].\n").unwrap();
        }
        cluster.reap_on_exit();
        for i in 0..nodes {
            cluster.spawn(i);
        }
        for i in 0..nodes {
            cluster.wait_serving(i, Duration::from_secs(120));
        }
        cluster.await_online(0, Duration::from_secs(120));
        cluster
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.nodes
    }

    /// Whether the cluster has no node (never: [`Cluster::start`] makes at least one).
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}"))
    }

    /// The cluster's directory (each node's files are under `n<I>/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`'s Erlang node name, e.g. `rc1-20345@localhost`.
    pub fn node_name(&self, i: usize) -> String {
        format!("rc{i}-{}@localhost", self.base)
    }

    /// Node `i`'s AMQP port.
    pub fn port(&self, i: usize) -> u16 {
        self.base + i as u16
    }

    /// The index of the node listening on AMQP `port`.
    pub fn node_of_port(&self, port: u16) -> Option<usize> {
        (0..self.nodes).find(|&i| self.port(i) == port)
    }

    /// Node `i`'s management API, with the guest account, e.g. `http://guest:guest@127.0.0.1:45345`.
    pub fn management_url(&self, i: usize) -> String {
        format!(
            "http://guest:guest@127.0.0.1:{}",
            self.base + 25000 + i as u16
        )
    }

    /// The variables a `rabbitmqctl` (or a program that runs one) needs to reach the nodes.
    pub fn ctl_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HOME", self.dir.join("home").display().to_string()),
            ("ERL_EPMD_PORT", (self.base + 11000).to_string()),
        ]
    }

    fn node_env(&self, i: usize, cmd: &mut Command) {
        let nd = self.node_dir(i);
        for (k, v) in self.ctl_env() {
            cmd.env(k, v);
        }
        cmd.env("RABBITMQ_NODENAME", self.node_name(i))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port(i).to_string())
            .env("RABBITMQ_MNESIA_BASE", nd.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", nd.join("log"))
            .env("RABBITMQ_CONFIG_FILE", nd.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", nd.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", nd.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", nd.join("rabbit.pid"))
            .env("ERL_CRASH_DUMP", nd.join("log/erl_crash.dump"));
    }

    fn spawn(&self, i: usize) {
        let nd = self.node_dir(i);
        let _ = std::fs::remove_file(nd.join("rabbit.pid"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(nd.join("log/stdout.log"))
            .unwrap();
        let mut cmd = Command::new(Path::new(RABBIT_BIN).join("rabbitmq-server"));
        self.node_env(i, &mut cmd);
        // The distribution port is the server's alone (a CLI tool given it would take it first).
        cmd.env(
            "RABBITMQ_DIST_PORT",
            (self.base + 10000 + i as u16).to_string(),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().expect("start rabbitmq-server");
        self.children.lock().unwrap()[i] = Some(child);
    }

    fn wait_serving(&self, i: usize, timeout: Duration) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port(i))).is_err() {
            assert!(
                start.elapsed() < timeout,
                "node {} did not serve AMQP within {timeout:?}; see {}",
                self.node_name(i),
                self.node_dir(i).join("log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until node `via` sees every node running.
    pub fn await_online(&self, via: usize, timeout: Duration) {
        self.ctl(
            via,
            &[
                "--timeout",
                &timeout.as_secs().to_string(),
                "await_online_nodes",
                &self.nodes.to_string(),
            ],
        );
    }

    /// The beam process id of node `i` (from its pid file).
    pub fn pid(&self, i: usize) -> i32 {
        let file = self.node_dir(i).join("rabbit.pid");
        crate::wait_for(
            &format!("{} to write its pid file", self.node_name(i)),
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            },
        )
    }

    /// SIGKILL node `i` and wait for its process to be gone; returns when the signal was sent (wall
    /// clock, to compare with log timestamps).
    pub fn kill(&self, i: usize) -> SystemTime {
        let pid = self.pid(i);
        let killed = SystemTime::now();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        let start = Instant::now();
        loop {
            if let Some(child) = self.children.lock().unwrap()[i].as_mut() {
                let _ = child.try_wait();
            }
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node {} (pid {pid}) did not exit after SIGKILL",
                self.node_name(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The listener must be gone too, or a restart's port probe would see the dying one.
        crate::wait_for(
            "the killed node's port to close",
            Duration::from_secs(30),
            || {
                std::net::TcpStream::connect(("127.0.0.1", self.port(i)))
                    .is_err()
                    .then_some(())
            },
        );
        if let Some(mut child) = self.children.lock().unwrap()[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        killed
    }

    /// Start a killed node again on its data and wait until the cluster has every node back and
    /// no node is quorum-critical (every quorum queue's replica on it has caught up, so losing any
    /// one node again leaves each queue a majority: what an operator checks between two restarts).
    pub fn restart(&self, i: usize) {
        self.spawn(i);
        self.wait_serving(i, Duration::from_secs(120));
        self.await_online(i, Duration::from_secs(120));
        self.await_quorum(Duration::from_secs(120));
    }

    /// Wait until no node is quorum-critical (`rabbitmq-queues check_if_node_is_quorum_critical`).
    pub fn await_quorum(&self, timeout: Duration) {
        let start = Instant::now();
        for node in 0..self.nodes {
            loop {
                let mut cmd = Command::new(Path::new(RABBIT_BIN).join("rabbitmq-queues"));
                for (k, v) in self.ctl_env() {
                    cmd.env(k, v);
                }
                let out = cmd
                    .arg("-n")
                    .arg(self.node_name(node))
                    .arg("check_if_node_is_quorum_critical")
                    .output()
                    .expect("run rabbitmq-queues");
                if out.status.success() {
                    break;
                }
                assert!(
                    start.elapsed() < timeout,
                    "{} is still quorum-critical after {timeout:?}: {}{}",
                    self.node_name(node),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }

    /// SIGSTOP node `i` (it holds its connections open and answers nothing); returns when (wall
    /// clock).
    pub fn freeze(&self, i: usize) -> SystemTime {
        let pid = self.pid(i);
        let at = SystemTime::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP)
            .expect("SIGSTOP the node");
        at
    }

    /// SIGCONT a frozen node `i`.
    pub fn thaw(&self, i: usize) {
        let pid = self.pid(i);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT)
            .expect("SIGCONT the node");
    }

    /// Run `rabbitmqctl` (`rabbitmq-queues` when `args` starts with `queues`) against node `i`;
    /// panics with its output when it fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let (tool, args) = match args.split_first() {
            Some((&"queues", rest)) => ("rabbitmq-queues", rest),
            _ => ("rabbitmqctl", args),
        };
        let mut cmd = Command::new(Path::new(RABBIT_BIN).join(tool));
        for (k, v) in self.ctl_env() {
            cmd.env(k, v);
        }
        let out = cmd
            .arg("-n")
            .arg(self.node_name(i))
            .args(args)
            .output()
            .expect("run rabbitmqctl");
        assert!(
            out.status.success(),
            "{tool} -n {} {args:?} failed: {}{}",
            self.node_name(i),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh vhost for one test, with full rights for `guest`; returns its name.
    pub fn vhost(&self, name: &str) -> String {
        self.ctl(0, &["add_vhost", name]);
        self.ctl(
            0,
            &["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        );
        name.to_owned()
    }

    /// Every node's AMQP URL for `vhost`, with a heartbeat of `heartbeat` seconds.
    pub fn urls(&self, vhost: &str, heartbeat: u32) -> Vec<String> {
        (0..self.nodes)
            .map(|i| self.url(i, vhost, heartbeat))
            .collect()
    }

    /// Node `i`'s AMQP URL for `vhost`.
    pub fn url(&self, i: usize, vhost: &str, heartbeat: u32) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/{vhost}?heartbeat={heartbeat}",
            self.port(i)
        )
    }

    /// Each quorum queue of `vhost` with its members (node names) and leader, as node `via` sees them.
    pub fn queue_members(&self, via: usize, vhost: &str) -> Vec<(String, Vec<String>, String)> {
        let out = self.ctl(
            via,
            &[
                "list_queues",
                "-p",
                vhost,
                "name",
                "members",
                "leader",
                "--formatter",
                "json",
                "--quiet",
            ],
        );
        let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!("list_queues printed no JSON ({e}): {out}");
        });
        rows.iter()
            .map(|r| {
                let members = r["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    r["name"].as_str().unwrap_or("").to_owned(),
                    members,
                    r["leader"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// A process outside the test's process group waits for this process to end, then kills every
    /// node (thawed first), stops the group's epmd and removes the directory.
    fn reap_on_exit(&self) {
        let reaper = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             for f in {dir}/n*/rabbit.pid; do p=$(cat \"$f\" 2>/dev/null) && kill -CONT $p; kill -9 $p; done 2>/dev/null; \
             sleep 1; epmd -port {epmd} -kill >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = format!("'{}'", self.dir.display()),
            epmd = self.base + 11000,
        );
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &reaper])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the cluster reaper");
        assert!(status.success(), "setsid failed: {status}");
    }
}
