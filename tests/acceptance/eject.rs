//! `rip` ejects the disc through UDisks2 where udisks manages the drive, and a failed eject never
//! fails the copy.
//!
//! Each test starts its own message bus (`dbus-daemon --session` on a socket in its temporary
//! directory, given to rip as `DBUS_SYSTEM_BUS_ADDRESS`) and a python3-dbusmock stand-in for udisksd on
//! it. dbusmock has no udisks2 template, so `tests/support/udisks_mock.py` adds the two objects rip
//! talks to with the mock's `AddObject`: a Drive with an `Eject(a{sv})` method, and the Block object of
//! the test's loop device whose `Drive` property names it. The mock records every call; the same script
//! reads them back with `GetCalls`.
//!
//! The disc is a fixture DVD image attached read-only to a loop device (these machines have no
//! /dev/srN; the CDROMEJECT ioctl fails there with EINVAL, which is the fallback path's failure). The
//! broker URL points at a closed port on purpose: the job goes to the outbox and rip exits 0, so no
//! RabbitMQ is needed.
//!
//! Needs root (loop devices) and `apt-get install dbus python3-dbusmock`; a missing tool is a failure
//! with the install command, never a skip. Every process and file is the test's own and is removed
//! when the test ends, also when it panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rafty_testkit::{LoopDevice, PrivateBus, bin, fixture_iso, workspace_root};

const INSTALL: &str = "apt-get install dbus python3-dbusmock";

/// The system Python: python3-dbusmock is installed for it, not for a pyenv or venv on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// The drive object the mock exports.
const DRIVE: &str = "/org/freedesktop/UDisks2/drives/Rafty_Test_Drive";

/// How long one rip of the small fixture may take.
const RIP_TIMEOUT: Duration = Duration::from_secs(120);

/// Fail with the install command unless the system Python can import dbusmock.
fn require_dbusmock() {
    let out = Command::new(PYTHON)
        .args(["-c", "import dbus, dbusmock"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}: run `{INSTALL}`"));
    assert!(
        out.status.success(),
        "{PYTHON} cannot import dbusmock: run `{INSTALL}`\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The helper script that adds the mock's objects and reads its calls.
fn helper() -> PathBuf {
    workspace_root()
        .join("tests")
        .join("support")
        .join("udisks_mock.py")
}

/// The fixture disc, built once per test binary.
fn disc() -> &'static Path {
    static ISO: OnceLock<PathBuf> = OnceLock::new();
    ISO.get_or_init(|| fixture_iso("SMALL", &[12]))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A fresh directory, removed when dropped.
fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("rafty-eject-{label}-"))
        .tempdir()
        .expect("create a temporary directory")
}

/// A child process, killed and reaped when dropped.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// python3-dbusmock owning `org.freedesktop.UDisks2` on a [`PrivateBus`].
struct UDisksMock {
    address: String,
    out: PathBuf,
    process: Guarded,
}

impl UDisksMock {
    /// Start the mock and give it the Drive object [`DRIVE`] and, with `block`, the Block object of
    /// that kernel device name pointing at it; returns once both answer on the bus.
    fn start(bus: &PrivateBus, dir: &Path, block: Option<&str>) -> UDisksMock {
        let out = dir.join("dbusmock.out");
        let child = Command::new(PYTHON)
            .args(["-m", "dbusmock", "--system", "-l"])
            .arg(dir.join("dbusmock.log"))
            .args([
                "org.freedesktop.UDisks2",
                "/org/freedesktop/UDisks2",
                "org.freedesktop.UDisks2.Manager",
            ])
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create the mock's output file"))
            .stderr(std::fs::File::create(dir.join("dbusmock.err")).expect("mock stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3-dbusmock: {e}: run `{INSTALL}`"));
        let mut mock = UDisksMock {
            address: bus.address().to_owned(),
            out,
            process: Guarded(child),
        };
        let mut args = vec!["setup", DRIVE];
        args.extend(block);
        let setup = mock.helper(&args);
        let exited = mock.process.0.try_wait().ok().flatten();
        assert!(
            setup.status.success() && String::from_utf8_lossy(&setup.stdout).contains("ready"),
            "setting up the udisks mock failed ({}; mock exited: {exited:?}):\n{}{}\nmock said:\n{}{}",
            setup.status,
            String::from_utf8_lossy(&setup.stdout),
            String::from_utf8_lossy(&setup.stderr),
            read(&mock.out),
            read(&mock.out.with_file_name("dbusmock.err")),
        );
        mock
    }

    fn helper(&self, args: &[&str]) -> Output {
        Command::new(PYTHON)
            .arg(helper())
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", helper().display()))
    }

    /// The calls the mock recorded on `path`: (method, arguments).
    fn calls(&mut self, path: &str) -> Vec<(String, serde_json::Value)> {
        assert!(
            self.process.0.try_wait().ok().flatten().is_none(),
            "the udisks mock died: {}",
            read(&self.out.with_file_name("dbusmock.err"))
        );
        let out = self.helper(&["calls", path]);
        assert!(
            out.status.success(),
            "reading the mock's calls on {path} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let calls: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("the helper prints JSON");
        calls
            .into_iter()
            .map(|c| {
                (
                    c["method"].as_str().expect("a method name").to_owned(),
                    c["args"].clone(),
                )
            })
            .collect()
    }
}

/// What one rip run left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    iso_dir: PathBuf,
    outbox: PathBuf,
}

/// Write a config into `dir` and run `rip --device DEVICE` with `bus_address` as the system bus.
fn rip(dir: &Path, device: &Path, eject: &str, bus_address: &str) -> Run {
    let iso_dir = dir.join("iso");
    let spool_dir = dir.join("spool");
    let config = dir.join("rafty.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\n\
             [rip]\niso-dir = {iso:?}\nspool-dir = {spool:?}\neject = {eject:?}\nbroker-timeout = \"2s\"\n",
            iso = iso_dir.display().to_string(),
            spool = spool_dir.display().to_string(),
        ),
    )
    .expect("write the config");
    let (stdout_file, stderr_file) = (dir.join("rip.stdout"), dir.join("rip.stderr"));
    let child = Command::new(bin("rip"))
        .arg("--device")
        .arg(device)
        .arg("--config")
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("RAFTY_AMQP_URL")
        .env_remove("RAFTY_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_file).expect("create rip's stdout file"))
        .stderr(std::fs::File::create(&stderr_file).expect("create rip's stderr file"))
        .spawn()
        .expect("start rip");
    let mut child = Guarded(child);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for rip") {
            break status;
        }
        assert!(
            start.elapsed() < RIP_TIMEOUT,
            "rip still running after {RIP_TIMEOUT:?}; its log:\n{}",
            read(&stderr_file)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: read(&stdout_file),
        stderr: read(&stderr_file),
        iso_dir,
        outbox: spool_dir.join("outbox"),
    }
}

impl Run {
    /// rip's `could not eject` warning, to the end of its log (a D-Bus error message may span
    /// lines).
    fn eject_warning(&self) -> &str {
        let at = self.stderr.find("could not eject").unwrap_or_else(|| {
            panic!("rip did not warn that it could not eject:\n{}", self.stderr)
        });
        &self.stderr[at..]
    }

    /// The copy succeeded whatever happened to the eject: exit 0, the image in place, the job in
    /// the outbox (the broker is unreachable on purpose).
    fn assert_copied(&self) {
        assert!(
            self.status.success(),
            "rip failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        assert!(
            self.iso_dir.join("SMALL.iso").is_file(),
            "no image in {}:\n{}",
            self.iso_dir.display(),
            self.stderr
        );
        let jobs = std::fs::read_dir(&self.outbox)
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(
            jobs,
            1,
            "expected one job in the outbox {}:\n{}",
            self.outbox.display(),
            self.stderr
        );
    }
}

#[test]
fn rip_ejects_through_udisks2_when_udisks_manages_the_drive() {
    require_dbusmock();
    let iso = disc();
    let tmp = temp_dir("udisks");
    let bus = PrivateBus::start(tmp.path());
    let device = LoopDevice::attach(iso);
    let mut mock = UDisksMock::start(&bus, tmp.path(), Some(device.name()));
    assert!(
        mock.calls(DRIVE).is_empty(),
        "the mock recorded calls before rip ran"
    );

    let run = rip(tmp.path(), device.path(), "success", bus.address());
    run.assert_copied();

    let calls = mock.calls(DRIVE);
    assert_eq!(
        calls,
        vec![("Eject".to_owned(), serde_json::json!([{}]))],
        "expected exactly one Eject with empty options on {DRIVE}; rip said:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("disc ejected") && run.stderr.contains("method=UDisks2"),
        "rip did not report ejecting through UDisks2:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("could not eject"),
        "rip warned about the eject:\n{}",
        run.stderr
    );
}

#[test]
fn rip_does_not_eject_when_the_policy_is_never() {
    require_dbusmock();
    let iso = disc();
    let tmp = temp_dir("never");
    let bus = PrivateBus::start(tmp.path());
    let device = LoopDevice::attach(iso);
    let mut mock = UDisksMock::start(&bus, tmp.path(), Some(device.name()));

    let run = rip(tmp.path(), device.path(), "never", bus.address());
    run.assert_copied();

    assert_eq!(
        mock.calls(DRIVE),
        vec![],
        "eject = \"never\" but the drive was asked to eject; rip said:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("disc ejected") && !run.stderr.contains("could not eject"),
        "eject = \"never\" but rip tried to eject:\n{}",
        run.stderr
    );
}

#[test]
fn a_drive_udisks_does_not_know_falls_back_to_the_ioctl_and_the_rip_still_succeeds() {
    require_dbusmock();
    let iso = disc();
    let tmp = temp_dir("unknown");
    let bus = PrivateBus::start(tmp.path());
    let device = LoopDevice::attach(iso);
    // udisksd runs, but has no Block object for this device.
    let mut mock = UDisksMock::start(&bus, tmp.path(), None);

    let run = rip(tmp.path(), device.path(), "success", bus.address());
    run.assert_copied();

    assert_eq!(
        mock.calls(DRIVE),
        vec![],
        "no Block object names the drive, yet it was asked to eject; rip said:\n{}",
        run.stderr
    );
    let block = format!("/org/freedesktop/UDisks2/block_devices/{}", device.name());
    let warning = run.eject_warning();
    // Both ways were tried: UDisks2 (no such object) and the ioctl (EINVAL on a loop device).
    assert!(
        warning.contains(&block) && warning.contains("ioctl:"),
        "the warning should name the block object and the ioctl's failure: {warning}"
    );
    assert!(
        !run.stderr.contains("disc ejected"),
        "rip claims an eject:\n{}",
        run.stderr
    );
}

#[test]
fn without_a_system_bus_the_eject_fails_and_the_rip_still_succeeds() {
    let iso = disc();
    let tmp = temp_dir("nobus");
    let device = LoopDevice::attach(iso);
    // A bus address where nothing listens.
    let nowhere = format!("unix:path={}", tmp.path().join("no-bus").display());

    let run = rip(tmp.path(), device.path(), "success", &nowhere);
    run.assert_copied();

    let warning = run.eject_warning();
    assert!(
        warning.contains("no system bus") && warning.contains("ioctl:"),
        "the warning should say there is no bus and give the ioctl's failure: {warning}"
    );
}
