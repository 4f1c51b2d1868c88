//! Several hosts on one machine, shared by `tests/hosts.rs` and `tests/store.rs` (each includes this
//! file with `#[path]`): each host in its own network namespace, joined by veth pairs on a bridge in
//! the root namespace (where the test itself watches), and a private RabbitMQ node in the host
//! named `broker`.
//!
//! [`Net`] removes the namespaces, the links and every process left in them when it is dropped (a
//! panic included), and a reaper does it when the test binary dies without unwinding (a `static`
//! network is never dropped: the reaper removes it when the binary exits).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use rafty_testkit::Broker;

/// Run `ip` with `args`; panic with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network of namespaces, and the broker running in the one named `broker`.
pub struct Net {
    /// `10.A.B`: the /24 of this network.
    subnet: String,
    bridge: String,
    /// (host, namespace name, root-side veth name), in address order (.2, .3, …).
    hosts: Vec<(&'static str, String, String)>,
    broker: Option<Broker>,
}

impl Net {
    /// Create the bridge and a namespace per host (addresses .2, .3, … in the order given), then
    /// start the broker in the host named `broker`, which must be one of them.
    pub fn new(hosts: &[&'static str]) -> Net {
        assert!(hosts.contains(&"broker"), "a host named broker");
        static NETS: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::SeqCst);
        // A /24 that no interface of this machine uses yet.
        let used = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-o", "-4", "addr", "show"])
                .output()
                .expect("ip addr")
                .stdout,
        )
        .into_owned();
        let seed = pid.wrapping_mul(31).wrapping_add(n * 7919);
        let subnet = (0..1000u32)
            .map(|i| {
                let v = seed.wrapping_add(i * 101) % (100 * 250);
                format!("10.{}.{}", 100 + v / 250, v % 250)
            })
            .find(|s| !used.contains(&format!(" {s}.")))
            .expect("a free 10.x.y.0/24");
        let tag = format!("rf{pid}x{n}");
        let mut net = Net {
            subnet,
            bridge: format!("{tag}br"),
            hosts: Vec::new(),
            broker: None,
        };
        let names: Vec<String> = hosts
            .iter()
            .map(|h| format!("rafty-{pid}-{n}-{h}"))
            .collect();
        net.reap_on_exit(&names);
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", net.subnet),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", &net.bridge, "up"]);
        for (i, host) in hosts.iter().enumerate() {
            let ns = names[i].clone();
            // Interface names have at most 15 bytes: the tag and the host's index.
            let veth = format!("{tag}h{i}");
            ip(&["netns", "add", &ns]);
            net.hosts.push((host, ns.clone(), veth.clone()));
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &net.bridge, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}.{}/24", net.subnet, i + 2),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        net.broker = Some(
            Broker::builder()
                .netns(net.ns("broker"))
                .address(&net.address("broker"))
                .start(),
        );
        net
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("started in new()")
    }

    fn entry(&self, host: &str) -> &(&'static str, String, String) {
        self.hosts
            .iter()
            .find(|(h, _, _)| *h == host)
            .unwrap_or_else(|| panic!("no host {host}"))
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> &str {
        &self.entry(host).1
    }

    /// The root-side end of `host`'s veth pair (traffic to the host leaves the bridge through it).
    pub fn veth(&self, host: &str) -> &str {
        &self.entry(host).2
    }

    /// The address of `host`.
    pub fn address(&self, host: &str) -> String {
        let i = self
            .hosts
            .iter()
            .position(|(h, _, _)| *h == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        format!("{}.{}", self.subnet, i + 2)
    }

    /// Cut (`false`) or restore (`true`) `host`'s link: its veth's end on the bridge goes down, as
    /// if its cable were pulled.
    pub fn link(&self, host: &str, up: bool) {
        ip(&[
            "link",
            "set",
            self.veth(host),
            if up { "up" } else { "down" },
        ]);
    }

    /// Pids of the processes in `host`'s namespace.
    pub fn pids(&self, host: &str) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", self.ns(host)])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether a HandBrakeCLI runs on `host`.
    pub fn handbrake_running(&self, host: &str) -> bool {
        self.pids(host).iter().any(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "HandBrakeCLI")
        })
    }

    /// A command that runs the shell `script` on `host` with `args` as `$1`, `$2`, … (in a mount
    /// namespace of its own, which `ip netns exec` gives it).
    pub fn shell(&self, host: &str, script: &str, args: &[&std::ffi::OsStr]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(host), "sh", "-c", script, "sh"]);
        cmd.args(args);
        cmd
    }

    /// A command that runs `program` on `host`, with the storage mounted there: each
    /// `(real directory, path on this host)` is bind-mounted over an empty tmpfs on `/srv` (private to
    /// the command's mount namespace, which `ip netns exec` gives it).
    pub fn command(&self, host: &str, mounts: &[(&Path, &str)], program: &Path) -> Command {
        const MOUNT_THEN_EXEC: &str = r#"set -e
mount -t tmpfs rafty-host /srv
while [ "$1" != -- ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done
shift
exec "$@""#;
        let mut args: Vec<&std::ffi::OsStr> = Vec::new();
        for (real, there) in mounts {
            args.push(real.as_os_str());
            args.push(std::ffi::OsStr::new(there));
        }
        args.push(std::ffi::OsStr::new("--"));
        args.push(program.as_os_str());
        self.shell(host, MOUNT_THEN_EXEC, &args)
    }

    /// A process outside the test's process group that, once this process is gone, removes what
    /// [`Drop`] would have (it finds nothing to do after a normal drop).
    fn reap_on_exit(&self, names: &[String]) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; for ns in {names}; do \
             for p in $(ip netns pids $ns 2>/dev/null); do kill -9 $p; done; ip netns del $ns; done; \
             ip link del {bridge}",
            pid = std::process::id(),
            names = names.join(" "),
            bridge = self.bridge,
        );
        let status = Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the network reaper");
        assert!(status.success(), "setsid failed: {status}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Every process still in a namespace (the broker, its epmd, a HandBrakeCLI a killed worker
        // left) was started by this test: kill them by pid, then remove the namespaces and links.
        for (host, ns, veth) in &self.hosts {
            for pid in self.pids(host) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
