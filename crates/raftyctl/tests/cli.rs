//! `raftyctl` refuses bad input with the input's name and what to do, before touching the broker.

use std::path::Path;
use std::process::{Command, Output};

fn raftyctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftyctl"))
        .args(args)
        .env("RAFTY_CONFIG", config)
        .env_remove("RAFTY_AMQP_URL")
        .output()
        .expect("run raftyctl")
}

/// A config whose broker is a closed port and whose source root is `root`.
fn config(dir: &Path, root: &Path) -> std::path::PathBuf {
    let path = dir.join("rafty.toml");
    std::fs::write(
        &path,
        format!(
            "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\n[rip]\niso-dir = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn submit_names_a_missing_file_and_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path());
    let out = raftyctl(&cfg, &["submit", "/no/such/Feature Disc.iso"]);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/Feature Disc.iso") && err.contains("nothing was submitted"),
        "{err}"
    );
}

#[test]
fn submit_outside_the_source_roots_suggests_copy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("iso");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = config(dir.path(), &root);
    let outside = dir.path().join("elsewhere.iso");
    std::fs::write(&outside, vec![0u8; 4096]).unwrap();
    let out = raftyctl(
        &cfg,
        &["submit", "--media", "dvd", outside.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("elsewhere.iso") && err.contains("--copy"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_exit_69_with_the_masked_url() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path());
    let iso = dir.path().join("x.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let out = raftyctl(&cfg, &["submit", "--media", "dvd", iso.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("guest:***@") && !err.contains("guest:guest"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no job id printed");
}

#[test]
fn an_unknown_config_key_is_named_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(&cfg, "[transcode]\noutput-dri = \"/srv\"\n").unwrap();
    let out = raftyctl(&cfg, &["setup"]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml") && err.contains("output-dri"),
        "{err}"
    );
}

#[test]
fn the_environment_overrides_the_broker_url_and_url_file_keeps_it_off_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("x.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let url_file = dir.path().join("amqp-url");
    std::fs::write(&url_file, "amqp://rafty:hunter2@127.0.0.1:3/%2f\n").unwrap();
    let cfg = dir.path().join("rafty.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nurl-file = \"{}\"\n[rip]\niso-dir = \"{}\"\n",
            url_file.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let args = ["submit", "--media", "dvd", iso.to_str().unwrap()];
    let out = raftyctl(&cfg, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains("rafty:***@127.0.0.1:3/") && !err.contains("hunter2"),
        "url-file wins over url: {err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_raftyctl"))
        .args(args)
        .env("RAFTY_CONFIG", &cfg)
        .env("RAFTY_AMQP_URL", "amqp://guest:guest@127.0.0.1:2/%2f")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:2/"), "RAFTY_AMQP_URL wins: {err}");
}
