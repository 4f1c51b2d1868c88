//! `rip` on real block devices and real I/O errors: a loop device, a FUSE "scratched disc" that
//! returns EIO and can be healed, a file system too small for the image, duplicate discs, a busy drive.
//! The broker is the test binary's private node; jobs are checked by consuming them.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rafty_core::names::{RIP_EXCHANGE, WORK_QUEUE};
use rafty_disc::lock::DriveLock;
use rafty_disc::mapfile::Map;
use rafty_testkit::{Env, FaultyDisc, LoopDevice, fixture_iso, shared_broker};

fn env(test: &str) -> Env {
    Env::new(shared_broker(), test)
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn iso_files(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&env.iso_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_disc_on_a_loop_device_becomes_a_byte_identical_image_and_a_confirmed_job() {
    let env = env("loop");
    let fixture = fixture_iso("FEATURE_DISC", &[20, 12]);
    let disc = LoopDevice::attach(&fixture);
    let amqp = env.amqp();
    let events = amqp.tap_on("rafty.rip", "rafty.rip.*");
    let out = env.rip(&env.config(), &["--device", disc.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    let progress = amqp.wait_event(&events, "progress", Duration::from_secs(10), |v| {
        v["percent"] == 100.0
    });
    assert_eq!(
        progress["total"],
        std::fs::metadata(&fixture).unwrap().len()
    );
    let done = amqp.wait_event(&events, "done", Duration::from_secs(10), |_| true);
    let image = env.iso_dir.join("FEATURE_DISC.iso");
    assert_eq!(done["image"], image.to_str().unwrap());
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&fixture).unwrap(),
        "byte-identical"
    );
    assert_eq!(
        iso_files(&env),
        ["FEATURE_DISC.iso"],
        "no partial file or map left"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.split('\t').next().unwrap().trim();
    assert_eq!(done["job"], id);

    let msg = amqp.get(WORK_QUEUE).expect("the job is queued");
    assert_eq!(msg.message_id.as_deref(), Some(id));
    assert_eq!(msg.routing_key, "rafty.rip.iso.dvd");
    let job = msg.json();
    assert_eq!(
        job["source"]["path"],
        image.canonicalize().unwrap().to_str().unwrap()
    );
    assert_eq!(job["source"]["media"], "dvd");
    assert_eq!(job["source"]["label"], "FEATURE_DISC");
    assert_eq!(
        job["source"]["size"],
        std::fs::metadata(&fixture).unwrap().len()
    );
    assert_eq!(job["source"]["sha256"], sha256sum(&fixture).as_str());
    assert_eq!(job["origin"]["device"], disc.path().to_str().unwrap());
    assert_eq!(job["output"]["name"], "FEATURE_DISC");
    assert!(amqp.get(WORK_QUEUE).is_none(), "exactly one job");
}

#[test]
fn a_scratched_disc_is_mapped_and_a_second_run_reads_only_the_bad_sectors() {
    let env = env("scratch");
    let fixture = fixture_iso("FEATURE_DISC", &[20, 12]);
    let sectors = std::fs::metadata(&fixture).unwrap().len() / 2048;
    assert!(sectors > 2600, "the fixture has {sectors} sectors");
    let disc = FaultyDisc::start(&fixture, &[(1200, 1203), (2500, 2500)]);
    let device = disc.path();
    let amqp = env.amqp();
    let progress = amqp.tap_on(RIP_EXCHANGE, "rafty.rip.progress");

    let first = env.rip(&env.config(), &["--device", device.to_str().unwrap()]);
    assert_eq!(first.status.code(), Some(74), "{}", stderr(&first));
    // The drive's progress says how many sectors were found unreadable (the dashboard shows it);
    // the copy's last report counts all five.
    let counts: Vec<u64> = amqp
        .drain_events(&progress)
        .iter()
        .map(|(_, e)| {
            e["unreadable"]
                .as_u64()
                .expect("unreadable in every rip.progress")
        })
        .collect();
    assert_eq!(
        counts.last(),
        Some(&5),
        "unreadable counts sent: {counts:?}"
    );
    let err = stderr(&first);
    assert!(
        err.contains("5 sectors") && err.contains("1200-1203, 2500"),
        "{err}"
    );
    let map = Map::load(&env.iso_dir.join("FEATURE_DISC.iso.map"))
        .expect("the map is kept beside the partial image");
    assert_eq!(
        map.bad_lba_ranges(),
        [(1200, 1203), (2500, 2500)],
        "exactly those sectors"
    );
    assert_eq!(
        iso_files(&env),
        ["FEATURE_DISC.iso.map", "FEATURE_DISC.iso.part"],
        "no image that looks complete"
    );
    assert!(amqp.get(WORK_QUEUE).is_none(), "nothing published");

    disc.heal();
    disc.clear_reads();
    let second = env.rip(&env.config(), &["--device", device.to_str().unwrap()]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("resume=true"),
        "{}",
        stderr(&second)
    );
    // Identifying the disc reads its first 2 MiB (sectors 16..1040: descriptors and fingerprint);
    // everything else this run read must be the sectors that were bad.
    let outside_id: Vec<(u64, u64)> = disc
        .reads()
        .into_iter()
        .filter(|&(off, len)| off + len > 1040 * 2048)
        .collect();
    assert!(!outside_id.is_empty(), "the bad sectors were read again");
    for (off, len) in &outside_id {
        let (first, last) = (off / 2048, (off + len - 1) / 2048);
        assert!(
            (1200..=1203).contains(&first) && (1200..=1203).contains(&last)
                || (first, last) == (2500, 2500),
            "read of sectors {first}-{last} that were already copied; all reads past the id area: {outside_id:?}"
        );
    }
    let image = env.iso_dir.join("FEATURE_DISC.iso");
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&fixture).unwrap(),
        "healed image is byte-identical"
    );
    assert_eq!(iso_files(&env), ["FEATURE_DISC.iso"]);
    let job = amqp
        .get(WORK_QUEUE)
        .expect("published after healing")
        .json();
    assert_eq!(job["source"]["sha256"], sha256sum(&fixture).as_str());
}

#[test]
fn a_second_trigger_for_a_busy_drive_copies_nothing() {
    let env = env("busy");
    let fixture = fixture_iso("SMALL", &[12]);
    let disc = LoopDevice::attach(&fixture);
    // What a first rip holds while it copies (the same lock, the same file).
    let held = DriveLock::acquire(&env.path().join("spool/locks"), disc.path()).unwrap();
    let out = env.rip(&env.config(), &["--device", disc.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another rip is already copying"),
        "{}",
        stderr(&out)
    );
    assert!(
        iso_files(&env).is_empty(),
        "nothing copied: {:?}",
        iso_files(&env)
    );
    drop(held);
    let out = env.rip(&env.config(), &["--device", disc.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(iso_files(&env), ["SMALL.iso"]);
}

/// A small ext4 file system on a loop device, mounted for the test; unmounted on drop.
struct SmallFs {
    mount: tempfile::TempDir,
    _image: tempfile::NamedTempFile,
}

impl SmallFs {
    fn new(bytes: u64) -> SmallFs {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(bytes).unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image.path())
            .status()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(ok.success());
        let mount = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image.path())
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount -o loop");
        SmallFs {
            mount,
            _image: image,
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
    }
}

#[test]
fn a_file_system_too_small_for_the_image_is_a_clear_error_and_leaves_nothing_complete() {
    let env = env("full");
    let small = SmallFs::new(2 << 20);
    let iso_dir = small.mount.path().join("iso");
    let cfg = env.write_config(
        "small.toml",
        None,
        &[("rip.iso-dir", &format!("\"{}\"", iso_dir.display()))],
    );
    let fixture = fixture_iso("SMALL", &[12]);
    let disc = LoopDevice::attach(&fixture);
    let out = env.rip(&cfg, &["--device", disc.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(73), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not enough space") && err.contains("SMALL.iso"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&iso_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| !n.to_string_lossy().ends_with(".iso")),
        "no complete-looking image: {left:?}"
    );
    assert!(env.amqp().get(WORK_QUEUE).is_none());
}

#[test]
fn same_label_other_disc_gets_its_own_image_and_the_same_disc_twice_is_skipped() {
    let env = env("dupes");
    let a = fixture_iso("SAME_LABEL", &[12]);
    let b = fixture_iso("SAME_LABEL", &[14]);
    let rip = |iso: &Path| {
        let out = env.rip(&env.config(), &["--device", iso.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    rip(&a);
    rip(&b);
    assert_eq!(iso_files(&env), ["SAME_LABEL (2).iso", "SAME_LABEL.iso"]);
    assert_eq!(
        std::fs::read(env.iso_dir.join("SAME_LABEL (2).iso")).unwrap(),
        std::fs::read(&b).unwrap()
    );
    let again = rip(&a);
    assert!(again.starts_with("already-copied"), "{again}");
    assert_eq!(iso_files(&env).len(), 2);
    let amqp = env.amqp();
    assert!(amqp.get(WORK_QUEUE).is_some() && amqp.get(WORK_QUEUE).is_some());
    assert!(
        amqp.get(WORK_QUEUE).is_none(),
        "the duplicate published nothing"
    );

    let copy_again = env.write_config("copy.toml", None, &[("rip.duplicate", "\"copy\"")]);
    let out = env.rip(&copy_again, &["--device", a.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        iso_files(&env).contains(&"SAME_LABEL (3).iso".to_owned()),
        "{:?}",
        iso_files(&env)
    );
}

#[test]
fn a_names_file_names_a_disc_by_its_fingerprint() {
    let env = env("names");
    let fixture = fixture_iso("SMALL", &[12]);
    let size = std::fs::metadata(&fixture).unwrap().len();
    let fingerprint = rafty_disc::identity::fingerprint(&fixture, size).unwrap();
    let names = env.path().join("names.toml");
    std::fs::write(
        &names,
        format!("\"{fingerprint}\" = \"A Film: Director's Cut\"\n"),
    )
    .unwrap();
    let cfg = env.write_config(
        "names.toml.conf",
        None,
        &[("rip.names-file", &format!("\"{}\"", names.display()))],
    );
    let out = env.rip(&cfg, &["--device", fixture.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(iso_files(&env), ["A Film: Director's Cut.iso"]);
    let job = env.amqp().get(WORK_QUEUE).expect("published").json();
    assert_eq!(job["output"]["name"], "A Film: Director's Cut");
    assert_eq!(
        job["source"]["label"], "SMALL",
        "the label is kept as the disc says"
    );
}
