//! The udev rule and the systemd units that turn "insert a disc" into a rip (udev/, systemd/,
//! docs/insert-a-disc.md), checked with the real tools and without touching the machine:
//!
//! - `udevadm test` runs the rule against a real block device (a read-only loop device, since these
//!   machines have no /dev/srN) inside a private mount namespace, with a private rules directory over
//!   /etc/udev/rules.d and private tmpfs over /run/udev and /dev, so neither /etc nor udev's database
//!   nor /dev/disk/by-* links of the host change.
//! - `systemd-analyze verify` parses both units (copies whose ExecStart names an existing binary).
//! - `systemd-analyze security --offline=true` scores their hardening; a regression fails the test.
//!
//! These need root (loop devices, mount namespaces) and the packages udev and systemd; a missing tool
//! is a failure with the install command, never a skip. systemd need not be running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rafty_testkit::workspace_root;

const INSTALL: &str = "apt-get install udev systemd";

/// Where the tools are looked for when PATH lacks the sbin directories.
const SYSTEM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// A PATH for the helper shell run inside the namespace.
const SYSTEM_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Absolute path of `name`, from PATH or the system directories; panics with the install command.
fn tool(name: &str) -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: run `{INSTALL}`"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A fresh directory, removed when dropped.
fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("rafty-units-{label}-"))
        .tempdir()
        .expect("create a temporary directory")
}

/// A loop device attached read-only to a file; detached when dropped, also when a test panics.
struct LoopDevice {
    /// `/dev/loopN`.
    dev: String,
    losetup: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let losetup = tool("losetup");
        let out = run(Command::new(&losetup)
            .args(["--find", "--show", "--read-only"])
            .arg(file));
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "losetup --find --show --read-only {} failed (root needed): {stderr}",
            file.display()
        );
        let dev = stdout.trim().to_owned();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        LoopDevice { dev, losetup }
    }

    /// The kernel name: `loopN`.
    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }

    /// `(major, minor)` from sysfs.
    fn numbers(&self) -> (String, String) {
        let dev = read(&Path::new("/sys/block").join(self.name()).join("dev"));
        let (major, minor) = dev.trim().split_once(':').expect("MAJOR:MINOR");
        (major.to_owned(), minor.to_owned())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new(&self.losetup)
            .arg("-d")
            .arg(&self.dev)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "losetup -d {}: {}",
                self.dev,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("losetup -d {}: {e}", self.dev),
        }
    }
}

/// What the helper shell does inside the private mount namespace: the rules directory over
/// /etc/udev/rules.d; tmpfs over /run/udev (udevadm test writes the device's database entry there)
/// and over /dev (it creates the /dev/disk/by-* and /dev/block links), with the one device node it
/// probes. Arguments: rules dir, device name, major, minor, udevadm, action.
const IN_NAMESPACE: &str = r#"
rules=$1 name=$2 major=$3 minor=$4 udevadm=$5 action=$6
mount --bind "$rules" /etc/udev/rules.d
mkdir -p /run/udev
mount -t tmpfs -o mode=0755 tmpfs /run/udev
mount -t tmpfs -o mode=0755 tmpfs /dev
mknod -m 0600 "/dev/$name" b "$major" "$minor"
mknod -m 0666 /dev/null c 1 3
exec "$udevadm" test --action="$action" "/sys/block/$name"
"#;

/// The rule file as shipped.
fn shipped_rule() -> String {
    read(&workspace_root().join("udev/60-rafty-rip.rules"))
}

/// The shipped rule with its drive match `KERNEL!="sr[0-9]*"` aimed at `name` instead.
fn rule_for(name: &str) -> String {
    let rule = shipped_rule();
    assert_eq!(
        rule.matches(r#"KERNEL!="sr[0-9]*""#).count(),
        1,
        "the rule matches optical drives by KERNEL!=\"sr[0-9]*\" exactly once:\n{rule}"
    );
    rule.replace(r#"KERNEL!="sr[0-9]*""#, &format!(r#"KERNEL!="{name}""#))
}

/// Rule files for the private rules directory: (file name, contents).
type Rules<'a> = Vec<(&'a str, String)>;

/// Run `udevadm test --action=ACTION /sys/block/NAME` with exactly `rules` in /etc/udev/rules.d
/// (file name, contents); returns stdout and stderr together.
fn udevadm_test(dev: &LoopDevice, action: &str, rules: &[(&str, String)]) -> String {
    let dir = temp_dir("rules");
    for (file, contents) in rules {
        std::fs::write(dir.path().join(file), contents).expect("write a rule file");
    }
    let (major, minor) = dev.numbers();
    let out = run(Command::new(tool("unshare"))
        .args(["--mount", "--propagation", "private", "--"])
        .arg(tool("sh"))
        .args(["-ec", IN_NAMESPACE, "sh"])
        .arg(dir.path())
        .args([dev.name(), &major, &minor])
        .arg(tool("udevadm"))
        .arg(action)
        .env("PATH", SYSTEM_PATH));
    let (stdout, stderr) = text(&out);
    let all = format!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "udevadm test in a private mount namespace failed ({}), root needed:\n{all}",
        out.status
    );
    for (file, _) in rules {
        let read_line = format!("Reading rules file: /etc/udev/rules.d/{file}");
        assert!(
            all.contains(&read_line),
            "udevadm did not read the private rules ({read_line}):\n{all}"
        );
    }
    all
}

/// The lines of udevadm's output that say what the rules would run or set for Rafty.
fn interesting(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| {
            l.contains("rip@")
                || l.contains("ID_CDROM_MEDIA")
                || l.contains("DISK_EJECT_REQUEST")
                || l.starts_with("ACTION=")
        })
        .collect()
}

#[test]
fn the_rule_starts_a_rip_for_a_disc_change_event_and_nothing_else() {
    let work = temp_dir("udev");
    let image = work.path().join("disc.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("write a 1 MiB image");
    let dev = LoopDevice::attach(&image);
    let name = dev.name().to_owned();
    let media = (
        "59-rafty-test-media.rules",
        format!("KERNEL==\"{name}\", ENV{{ID_CDROM_MEDIA}}=\"1\"\n"),
    );
    let eject_button = (
        "59-rafty-test-media.rules",
        format!(
            "KERNEL==\"{name}\", ENV{{ID_CDROM_MEDIA}}=\"1\", ENV{{DISK_EJECT_REQUEST}}=\"1\"\n"
        ),
    );
    let rule = ("60-rafty-rip.rules", rule_for(&name));
    let start = format!("run: '/usr/bin/systemctl --no-block start rip@{name}.service'");

    // A disc is in the drive and the kernel says the media changed: rip@<kernel name> is started.
    let out = udevadm_test(&dev, "change", &[media.clone(), rule.clone()]);
    eprintln!(
        "disc inserted ({name}):\n  {}",
        interesting(&out).join("\n  ")
    );
    assert!(out.contains(&start), "expected {start:?}:\n{out}");
    assert_eq!(
        out.matches("rip@").count(),
        2,
        "one RUN line and one run line:\n{out}"
    );

    // Each of these must start nothing.
    let cases: [(&str, &str, Rules); 4] = [
        ("no disc in the drive", "change", vec![rule.clone()]),
        (
            "the device appears (add, not change)",
            "add",
            vec![media.clone(), rule.clone()],
        ),
        (
            "the eject button is pressed",
            "change",
            vec![eject_button, rule.clone()],
        ),
        (
            "the shipped rule on a device that is not sr[0-9]*",
            "change",
            vec![media.clone(), ("60-rafty-rip.rules", shipped_rule())],
        ),
    ];
    for (what, action, rules) in cases {
        let out = udevadm_test(&dev, action, &rules);
        eprintln!("{what}:\n  {}", interesting(&out).join("\n  "));
        assert!(
            !out.contains("rip@"),
            "{what}: the rule must start nothing:\n{out}"
        );
    }
}

/// stderr lines of `systemd-analyze verify` that are expected where the tests run. None: measured
/// with systemd 252 on Debian 12 without systemd as PID 1 and without the `rafty` user, verify prints
/// nothing for these units (it does not check that User= exists).
const VERIFY_NOISE: &[&str] = &[];

/// Copies of the shipped units in a temporary directory, their ExecStart binary replaced by one that
/// exists here (/bin/true; arguments kept), since verify refuses a missing binary.
fn unit_copies() -> tempfile::TempDir {
    let dir = temp_dir("units");
    let root = workspace_root().join("systemd");
    let units = [
        (
            "rip@.service",
            "ExecStart=/usr/local/bin/rip --device /dev/%I",
        ),
        ("transcoded.service", "ExecStart=/usr/local/bin/transcoded"),
        (
            "rafty-store.service",
            "ExecStart=/usr/local/bin/rafty-store",
        ),
        (
            "rafty-outbox.service",
            "ExecStart=/usr/local/bin/raftyctl outbox flush",
        ),
        (
            "rafty-replicate.service",
            "ExecStart=/usr/local/bin/rafty-replicate --config /etc/rafty/rafty.toml",
        ),
        (
            "rafty-audit.service",
            "ExecStart=/usr/local/bin/raftyctl --config /etc/rafty/rafty.toml audit --percent 25 --max-duration 6h --repair",
        ),
        (
            "rafty-dashboard.service",
            "ExecStart=/usr/local/bin/raftyctl --config /etc/rafty/rafty.toml dashboard --listen 0.0.0.0:8765 --state-dir /var/lib/rafty-dashboard",
        ),
    ];
    for (unit, exec) in units {
        let body = read(&root.join(unit));
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            lines,
            [exec],
            "{unit}: the one ExecStart runs the installed binary"
        );
        let binary = exec
            .trim_start_matches("ExecStart=")
            .split(' ')
            .next()
            .unwrap();
        let copy = body.replace(&format!("ExecStart={binary}"), "ExecStart=/bin/true");
        std::fs::write(dir.path().join(unit), copy).expect("write a unit copy");
    }
    dir
}

#[test]
fn systemd_analyze_verify_accepts_both_units() {
    let systemd_analyze = tool("systemd-analyze");
    let dir = unit_copies();
    // rip@sr0.service has no file of its own: verify instantiates the template beside it, with
    // %I = sr0, as systemd does for the udev rule's start.
    let out = run(Command::new(&systemd_analyze)
        .arg("verify")
        .arg(dir.path().join("rip@.service"))
        .arg(dir.path().join("rip@sr0.service"))
        .arg(dir.path().join("transcoded.service"))
        .arg(dir.path().join("rafty-store.service"))
        .arg(dir.path().join("rafty-replicate.service"))
        .arg(dir.path().join("rafty-audit.service"))
        .arg(dir.path().join("rafty-dashboard.service")));
    let (stdout, stderr) = text(&out);
    eprintln!(
        "systemd-analyze verify rip@.service rip@sr0.service transcoded.service rafty-store.service rafty-replicate.service rafty-audit.service rafty-dashboard.service: {}\nstdout: {stdout:?}\nstderr: {stderr:?}",
        out.status
    );
    assert!(out.status.success(), "verify failed:\n{stdout}{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !VERIFY_NOISE.iter().any(|n| l.contains(n)))
        .collect();
    assert!(warnings.is_empty(), "verify warned: {warnings:#?}");
}

#[test]
fn verify_catches_a_broken_unit() {
    // The check above is only worth something if verify complains here: an unknown key (exit 0, a
    // warning on stderr) and a missing binary (exit 1).
    let dir = unit_copies();
    let unit = dir.path().join("transcoded.service");
    let body = read(&unit).replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed");
    std::fs::write(&unit, body).unwrap();
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&unit));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("Unknown key 'KilMode'"),
        "verify should warn about the typo: {stderr}"
    );
    let unit = dir.path().join("rip@.service");
    let body = read(&unit).replace("ExecStart=/bin/true", "ExecStart=/nonexistent/rip");
    std::fs::write(&unit, body).unwrap();
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(dir.path().join("rip@sr0.service")));
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success() && stderr.contains("/nonexistent/rip"),
        "verify should refuse a missing binary: {} {stderr}",
        out.status
    );
}

/// Highest overall exposure accepted. Measured with systemd 252: rip@sr0.service 1.5,
/// transcoded.service 1.2, rafty-store.service 1.1, rafty-replicate.service 1.2,
/// rafty-audit.service 1.2, rafty-dashboard.service 1.1 (0 = locked down, 10 = unprotected).
const MAX_EXPOSURE: f64 = 2.0;

#[test]
fn systemd_analyze_security_scores_both_units_low() {
    let systemd_analyze = tool("systemd-analyze");
    let dir = workspace_root().join("systemd");
    for unit in [
        "rip@sr0.service",
        "transcoded.service",
        "rafty-store.service",
        "rafty-replicate.service",
        "rafty-audit.service",
        "rafty-dashboard.service",
    ] {
        let out = run(Command::new(&systemd_analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(dir.join(unit)));
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "systemd-analyze security {unit}: {}\n{stdout}{stderr}",
            out.status
        );
        let open: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
        let overall = stdout
            .lines()
            .find(|l| l.contains("Overall exposure level for"))
            .unwrap_or_else(|| panic!("no overall exposure in:\n{stdout}{stderr}"));
        eprintln!("{overall}\n  not set:\n  {}", open.join("\n  "));
        let score: f64 = overall
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the score in {overall:?}"));
        assert!(
            score < MAX_EXPOSURE,
            "{unit}: exposure {score} is not below {MAX_EXPOSURE}: hardening regressed:\n{stdout}"
        );
    }
    // The device ACL names this drive only, read-only: the template's %I expands to the instance.
    let out = run(Command::new(&systemd_analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(dir.join("rip@sr1.service")));
    let (stdout, _) = text(&out);
    let acl = stdout
        .lines()
        .find(|l| l.contains("DeviceAllow="))
        .unwrap_or_default();
    assert!(
        acl.contains("/dev/sr1:r") && !acl.contains("/dev/sr0"),
        "rip@sr1 may read /dev/sr1 only: {acl}"
    );
}

/// `Key=value` settings of a unit file (comments skipped), in order.
fn settings(unit: &str) -> Vec<(String, String)> {
    read(&workspace_root().join("systemd").join(unit))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn setting(all: &[(String, String)], key: &str) -> Vec<String> {
    all.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn the_units_keep_the_contract_with_rip_and_transcoded() {
    let rip = settings("rip@.service");
    let want = [
        ("Type", "oneshot"),
        ("SuccessExitStatus", "75"),
        ("User", "rafty"),
        ("SupplementaryGroups", "cdrom"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/%I r"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/rafty/iso /var/lib/rafty/spool"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ];
    for (key, value) in want {
        assert_eq!(setting(&rip, key), [value], "rip@.service {key}=");
    }
    let timeout = setting(&rip, "TimeoutStartSec");
    assert_eq!(
        timeout,
        ["4h"],
        "rip@.service: a slow disc needs hours, not the 90 s default"
    );

    let td = settings("transcoded.service");
    let want = [
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78 69"),
        ("KillMode", "mixed"),
        // Longer than [transcode] drain-timeout (10 min by default).
        ("TimeoutStopSec", "15min"),
        ("User", "rafty"),
        ("ProtectSystem", "strict"),
        (
            "ReadWritePaths",
            "/var/lib/rafty/media /var/lib/rafty/scratch",
        ),
        ("NoNewPrivileges", "yes"),
        ("WantedBy", "multi-user.target"),
    ];
    for (key, value) in want {
        assert_eq!(setting(&td, key), [value], "transcoded.service {key}=");
    }
    assert!(
        matches!(setting(&td, "Type").as_slice(), [t] if t == "exec" || t == "simple"),
        "transcoded.service Type="
    );
}

#[test]
fn the_outbox_timer_and_its_service_verify() {
    let dir = unit_copies();
    std::fs::copy(
        workspace_root().join("systemd/rafty-outbox.timer"),
        dir.path().join("rafty-outbox.timer"),
    )
    .expect("copy the timer");
    let out = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(dir.path().join("rafty-outbox.timer"))
        .arg(dir.path().join("rafty-outbox.service")));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify rafty-outbox.timer rafty-outbox.service: {}\nstdout: {stdout:?}\nstderr: {stderr:?}",
        out.status
    );
    let out = run(Command::new(tool("systemd-analyze"))
        .args(["security", "--offline=true"])
        .arg(dir.path().join("rafty-outbox.service")));
    let (stdout, _) = text(&out);
    eprintln!("{}", stdout.lines().last().unwrap_or(""));
    assert!(stdout.contains("Overall exposure level"), "{stdout}");
}
