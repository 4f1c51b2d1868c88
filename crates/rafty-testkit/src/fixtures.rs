//! Fixture disc images.

use std::path::PathBuf;
use std::process::Command;

use crate::{require_tools, script, workspace_root};

fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("rafty-fixtures");
    std::fs::create_dir_all(&dir).expect("create the fixture cache");
    dir
}

/// A real DVD-Video ISO with one title per duration (seconds), volume label `label`; built once and
/// cached under `target/rafty-fixtures/`.
pub fn fixture_iso(label: &str, titles: &[u32]) -> PathBuf {
    let secs: Vec<String> = titles.iter().map(u32::to_string).collect();
    fixture_iso_chapters(label, &secs.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A real DVD-Video ISO with one title per entry, each `SECS` (chapters every 10 s) or
/// `SECS@START,START,...` (chapters starting at these seconds, the first 0), as `scripts/make-dvd-iso`
/// takes them: `&["160@0,20,40,60,80,100,120,140"]` is one title of 8 chapters of 20 s. Built once
/// and cached under `target/rafty-fixtures/` (`@` and `,` become `at` and `_` in the file name).
pub fn fixture_iso_chapters(label: &str, titles: &[&str]) -> PathBuf {
    require_tools(&["ffmpeg", "dvdauthor", "genisoimage"]);
    for t in titles {
        assert!(
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c == '@' || c == ',')
                && t.matches('@').count() <= 1,
            "fixture title {t:?}: expected SECS or SECS@START,START,..."
        );
    }
    let names: Vec<String> = titles
        .iter()
        .map(|t| t.replace('@', "at").replace(',', "_"))
        .collect();
    let path = cache_dir().join(format!("{label}-{}.iso", names.join("-")));
    if !path.exists() {
        let out = Command::new(script("make-dvd-iso"))
            .arg(&path)
            .arg(label)
            .args(titles)
            .env_remove("DVD_NOISE")
            .output()
            .expect("run scripts/make-dvd-iso");
        assert!(
            out.status.success(),
            "building fixture {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

/// A file of pseudo-random bytes named like a disc image.
pub fn garbage_iso() -> PathBuf {
    let path = cache_dir().join("garbage.iso");
    if !path.exists() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let bytes: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let temp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&temp, bytes).expect("write garbage");
        std::fs::rename(&temp, &path).expect("rename garbage");
    }
    path
}
