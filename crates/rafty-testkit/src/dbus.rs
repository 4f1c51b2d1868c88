//! A private D-Bus bus standing in for the system bus (there is none on the test machines), for
//! python3-dbusmock mocks of logind and UDisks2. Programs find it through `DBUS_SYSTEM_BUS_ADDRESS`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `dbus-daemon`, stopped when dropped.
pub struct PrivateBus {
    address: String,
    daemon: Child,
}

impl PrivateBus {
    /// Start `dbus-daemon` (session policy: anyone may own any name) with its socket in `dir`, and
    /// wait until it prints its address, i.e. accepts connections.
    pub fn start(dir: &Path) -> PrivateBus {
        let log = dir.join("dbus-daemon.log");
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nosyslog", "--print-address=1"])
            .arg(format!("--address=unix:path={}", dir.join("bus").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create the bus log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbus-daemon ({e}): apt-get install dbus"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut address = String::new();
        BufReader::new(stdout)
            .read_line(&mut address)
            .expect("read the bus address");
        let address = address.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address ({address:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        PrivateBus {
            address,
            daemon: child,
        }
    }

    /// The address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
