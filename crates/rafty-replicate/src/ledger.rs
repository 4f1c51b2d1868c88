//! The ledger: what each object is (kind, size, SHA-256: from rip's hash in the job, the worker's in
//! the sidecar, or the first read) and when each copy of it was last verified, in every place. One
//! JSON file (`[replicate] ledger`), changed only under an exclusive lock on `<ledger>.lock` and
//! replaced whole (temporary file, fsync, rename), so `rafty-replicate` and `raftyctl audit` can run
//! at once. A copy of it goes to every destination, so a lost disk cannot take it alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::dest::Digested;

/// The place name of the library itself.
pub const LIBRARY: &str = "library";

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A disc image (`iso/…`).
    Image,
    /// A finished video (`media/…`).
    Video,
    /// A video's sidecar (`media/….rafty.json`).
    Sidecar,
}

/// One copy's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Copy {
    /// When it was last read whole and found right (RFC 3339).
    pub verified_at: String,
}

/// One object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Object {
    /// What it is.
    pub kind: Kind,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// When the ledger first recorded it.
    pub recorded_at: String,
    /// Its copies by place (`library` and the destinations' names).
    #[serde(default)]
    pub copies: BTreeMap<String, Copy>,
}

impl Object {
    /// Its size and hash.
    pub fn digested(&self) -> Digested {
        Digested {
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }
}

/// The whole ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Ledger {
    /// Format version (1).
    pub version: u32,
    /// Every object by key (`iso/…`, `media/…`).
    #[serde(default)]
    pub objects: BTreeMap<String, Object>,
    /// Destinations `raftyctl replicate disable` stopped.
    #[serde(default)]
    pub disabled: BTreeSet<String>,
}

/// Why the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading, writing or locking failed.
    #[error("ledger {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// It is not a ledger.
    #[error(
        "ledger {path}: {message} (restore it from a destination's ledger.json, or move it away to start a new one)"
    )]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The ledger file, read and changed under its lock.
#[derive(Debug, Clone)]
pub struct LedgerFile {
    path: PathBuf,
}

impl LedgerFile {
    /// The ledger at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LedgerFile { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read it (an absent file is an empty ledger).
    pub fn read(&self) -> Result<Ledger, LedgerError> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Read it, let `change` change it, and write it back, all under the lock. Returns what
    /// `change` returned and the ledger as written.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Ledger) -> T,
    ) -> Result<(T, Ledger), LedgerError> {
        let _lock = self.lock()?;
        let mut ledger = self.load()?;
        let before = ledger.clone();
        let out = change(&mut ledger);
        if ledger != before {
            self.store(&ledger)?;
        }
        Ok((out, ledger))
    }

    fn io(&self, path: &Path, source: std::io::Error) -> LedgerError {
        LedgerError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, LedgerError> {
        let lock_path = with_suffix(&self.path, ".lock");
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.io(&lock_path, e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.io(&lock_path, e.into()))
    }

    fn load(&self) -> Result<Ledger, LedgerError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let ledger: Ledger =
                    serde_json::from_slice(&bytes).map_err(|e| LedgerError::Bad {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })?;
                if ledger.version != 1 {
                    return Err(LedgerError::Bad {
                        path: self.path.clone(),
                        message: format!("version {} (this Rafty reads version 1)", ledger.version),
                    });
                }
                Ok(ledger)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger {
                version: 1,
                ..Ledger::default()
            }),
            Err(e) => Err(self.io(&self.path, e)),
        }
    }

    fn store(&self, ledger: &Ledger) -> Result<(), LedgerError> {
        let temp = with_suffix(&self.path, ".tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&temp)?;
            f.write_all(&ledger.to_json())?;
            f.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        written.map_err(|e| self.io(&self.path, e))
    }
}

impl Ledger {
    /// The ledger as its file holds it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("the ledger serializes");
        v.push(b'\n');
        v
    }

    /// Record an object seen for the first time, or check it is the object already recorded under
    /// `key`: a different object under a known key is refused (a copy is never put over another
    /// object's).
    pub fn record(&mut self, key: &str, kind: Kind, what: &Digested) -> Result<&Object, String> {
        let object = self
            .objects
            .entry(key.to_owned())
            .or_insert_with(|| Object {
                kind,
                size: what.size,
                sha256: what.sha256.clone(),
                recorded_at: now(),
                copies: BTreeMap::new(),
            });
        if object.sha256 != what.sha256 || object.size != what.size {
            return Err(format!(
                "{key} is recorded as {} bytes, sha256 {}, but the library now has {} bytes, sha256 {}: a different object under the same name is not copied over the recorded one (if the library's file is damaged, raftyctl audit --repair mends it; if it is new work, give it another name)",
                object.size, object.sha256, what.size, what.sha256
            ));
        }
        Ok(object)
    }

    /// Note that the copy of `key` at `place` was just read whole and found right.
    pub fn verified(&mut self, key: &str, place: &str) {
        if let Some(o) = self.objects.get_mut(key) {
            o.copies
                .insert(place.to_owned(), Copy { verified_at: now() });
        }
    }
}

/// Now, RFC 3339 in UTC with nine fractional digits always, so that times sort as strings too.
pub fn now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    OffsetDateTime::now_utc()
        .format(&format)
        .expect("the ledger's time format formats")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_object_under_a_known_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = LedgerFile::new(dir.path().join("l/ledger.json"));
        let a = Digested {
            size: 1,
            sha256: "aa".into(),
        };
        let b = Digested {
            size: 1,
            sha256: "bb".into(),
        };
        file.update(|l| l.record("iso/x.iso", Kind::Image, &a).map(|_| ()))
            .unwrap()
            .0
            .unwrap();
        file.update(|l| l.verified("iso/x.iso", "usb")).unwrap();
        let (again, ledger) = file
            .update(|l| l.record("iso/x.iso", Kind::Image, &b).map(|_| ()))
            .unwrap();
        assert!(again.unwrap_err().contains("different object"));
        assert_eq!(ledger.objects["iso/x.iso"].sha256, "aa");
        assert!(
            file.read().unwrap().objects["iso/x.iso"]
                .copies
                .contains_key("usb")
        );
    }
}
