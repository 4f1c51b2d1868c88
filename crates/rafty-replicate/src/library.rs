//! The library and its keys: images under `[rip] iso-dir` (and `[transcode] source-roots`) are
//! `iso/<relative path>`, videos under `[transcode] output-dir` are `media/<relative path>` and their
//! sidecars `media/<relative path>.rafty.json`. The same keys name the copies at every destination.

use std::path::{Component, Path, PathBuf};

use rafty_core::config::Config;
use rafty_core::output::SIDECAR_SUFFIX;

use crate::ledger::Kind;

/// Where the library's objects are on this machine.
#[derive(Debug, Clone)]
pub struct Library {
    /// Image directories: `[rip] iso-dir` first, then `[transcode] source-roots`.
    pub image_roots: Vec<PathBuf>,
    /// `[transcode] output-dir`.
    pub media: PathBuf,
}

/// One object of the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// What it is.
    pub kind: Kind,
    /// Where it is here.
    pub path: PathBuf,
}

impl Library {
    /// The library a configuration describes.
    pub fn from_config(config: &Config) -> Library {
        let mut image_roots = vec![config.rip.iso_dir.clone()];
        for r in &config.transcode.source_roots {
            if !image_roots.contains(r) {
                image_roots.push(r.clone());
            }
        }
        Library {
            image_roots,
            media: config.transcode.output_dir.clone(),
        }
    }

    /// The image a job names, as this machine sees it: under an image root as named, or found
    /// there by its trailing components (the producer mounted the share elsewhere), or else the
    /// path itself (`raftyctl submit` of a file outside the roots: keyed by its file name).
    pub fn image(&self, named: &Path) -> Option<Entry> {
        let (rel, path) = self.locate(&self.image_roots, named).or_else(|| {
            let name = named.file_name()?;
            named
                .is_file()
                .then(|| (PathBuf::from(name), named.to_owned()))
        })?;
        Some(Entry {
            key: format!("iso/{}", key_part(&rel)?),
            kind: Kind::Image,
            path,
        })
    }

    /// A finished video, and its sidecar, as a `done` event names it.
    pub fn video(&self, named: &Path) -> Option<[Entry; 2]> {
        let (rel, path) = self.locate(std::slice::from_ref(&self.media), named)?;
        let key = format!("media/{}", key_part(&rel)?);
        let sidecar = rafty_core::output::sidecar_path(&path);
        Some([
            Entry {
                key: format!("{key}{SIDECAR_SUFFIX}"),
                kind: Kind::Sidecar,
                path: sidecar,
            },
            Entry {
                key,
                kind: Kind::Video,
                path,
            },
        ])
    }

    /// Where the object `key` lives here (it may be missing).
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        if let Some(rel) = key.strip_prefix("iso/") {
            let rel = safe_rel(rel)?;
            let found = self
                .image_roots
                .iter()
                .map(|r| r.join(&rel))
                .find(|p| p.exists());
            return Some(found.unwrap_or_else(|| self.image_roots[0].join(&rel)));
        }
        let rel = safe_rel(key.strip_prefix("media/")?)?;
        Some(self.media.join(rel))
    }

    /// The kind of object `key` names.
    pub fn kind_of(key: &str) -> Kind {
        if key.starts_with("iso/") {
            Kind::Image
        } else if key.ends_with(SIDECAR_SUFFIX) {
            Kind::Sidecar
        } else {
            Kind::Video
        }
    }

    /// Every object in the library now: `*.iso` under the image roots, and every video that has a
    /// sidecar (with the sidecar) under the output directory. Hidden files (temporary copies and
    /// encodes) are left out.
    pub fn scan(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for root in &self.image_roots {
            for path in walk(root) {
                let iso = path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("iso"));
                if iso
                    && let Some(e) = self.image(&path)
                    && !out.iter().any(|o: &Entry| o.key == e.key)
                {
                    out.push(e);
                }
            }
        }
        for path in walk(&self.media) {
            let is_sidecar = path.to_string_lossy().ends_with(SIDECAR_SUFFIX);
            if !is_sidecar
                && rafty_core::output::sidecar_path(&path).is_file()
                && let Some(pair) = self.video(&path)
            {
                out.extend(pair);
            }
        }
        out
    }

    fn locate(&self, roots: &[PathBuf], named: &Path) -> Option<(PathBuf, PathBuf)> {
        for root in roots {
            if let Ok(rel) = named.strip_prefix(root)
                && named.is_file()
            {
                return Some((rel.to_owned(), named.to_owned()));
            }
        }
        let parts: Vec<_> = named
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        for start in 0..parts.len() {
            let rel: PathBuf = parts[start..].iter().collect();
            for root in roots {
                let here = root.join(&rel);
                if here.is_file() {
                    return Some((rel, here));
                }
            }
        }
        None
    }
}

/// A relative path as a key part (`/`-separated); None for a name that is not valid UTF-8.
fn key_part(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    Some(parts?.join("/"))
}

/// A key's relative path, refused if it could leave the root.
fn safe_rel(rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_owned())
}

/// Every regular file under `root`, hidden names left out.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_library_wherever_the_producer_mounted_it() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Library {
            image_roots: vec![dir.path().join("iso")],
            media: dir.path().join("media"),
        };
        std::fs::create_dir_all(dir.path().join("iso/box")).unwrap();
        std::fs::create_dir_all(dir.path().join("media/Films")).unwrap();
        std::fs::write(dir.path().join("iso/box/Amélie 1.iso"), b"x").unwrap();
        std::fs::write(dir.path().join("media/Films/A.mkv"), b"v").unwrap();
        std::fs::write(dir.path().join("media/Films/A.mkv.rafty.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("media/Films/.A.mkv.x.part"), b"").unwrap();

        let e = lib
            .image(Path::new("/mnt/nas/iso/box/Amélie 1.iso"))
            .unwrap();
        assert_eq!(e.key, "iso/box/Amélie 1.iso");
        assert_eq!(e.path, dir.path().join("iso/box/Amélie 1.iso"));
        let [side, video] = lib.video(Path::new("/srv/x/Films/A.mkv")).unwrap();
        assert_eq!(video.key, "media/Films/A.mkv");
        assert_eq!(side.key, "media/Films/A.mkv.rafty.json");
        let keys: Vec<_> = lib.scan().into_iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "iso/box/Amélie 1.iso",
                "media/Films/A.mkv.rafty.json",
                "media/Films/A.mkv"
            ]
        );
        assert_eq!(lib.path_of("media/../etc/passwd"), None);
        assert_eq!(
            lib.path_of("media/Films/A.mkv"),
            Some(dir.path().join("media/Films/A.mkv"))
        );
    }
}
