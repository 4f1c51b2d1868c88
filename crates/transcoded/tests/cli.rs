//! `transcoded` refuses to start on a bad config or without HandBrakeCLI, with an exit status that
//! stops systemd from restarting it in a loop (78, 69).

use std::process::Command;

#[test]
fn a_bad_config_exits_78_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(&cfg, "[transcode]\nretry-delays = [\"5 fortnights\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_transcoded"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker.toml") && err.contains("retry-delays"),
        "{err}"
    );
}

#[test]
fn a_missing_handbrake_exits_69_with_the_install_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        "[transcode]\nhandbrake = \"/nonexistent/HandBrakeCLI\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_transcoded"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/HandBrakeCLI") && err.contains("apt-get install handbrake-cli"),
        "{err}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(
        &cfg,
        "[transcode]\nhandbrake = \"/nonexistent/HandBrakeCLI\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_transcoded"))
        .args(["--log-format", "json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!lines.is_empty());
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["level"].is_string(), "{v}");
    }
}

#[test]
fn an_unknown_default_preset_exits_78_listing_the_presets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("worker.toml");
    std::fs::write(&cfg, "[transcode]\npreset = \"Fast 9000p\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_transcoded"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Fast 9000p")
            && err.contains("worker.toml")
            && err.contains("Very Fast 480p30"),
        "{err}"
    );
}
