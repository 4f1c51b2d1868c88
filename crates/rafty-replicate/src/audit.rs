//! The audit: re-read copies against the ledger, a budgeted slice at a time (least recently verified
//! first, the way restic's `--read-data-subset` and SnapRAID's scrub plans cover everything in
//! turn), give each a verdict, and with `--repair` mend each finding from a copy that verifies now.
//! `raftyctl audit` and `raftyctl restore-test` are thin over this.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dest::{DestError, Digested, Place, digest_file};
use crate::ledger::{Kind, LIBRARY, Ledger, LedgerFile, Object};
use crate::library::Library;

/// A copy younger than this that was never made is in flight, not missing.
const IN_FLIGHT: f64 = 600.0;

/// What a copy was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Read whole; size and SHA-256 agree with the ledger.
    Ok,
    /// Not there.
    Missing,
    /// There, with another size or SHA-256.
    Corrupt,
    /// Reading it failed (an I/O error such as EIO).
    Unreadable,
    /// It hashes right, but does not decode (`--decode`).
    Unplayable,
    /// Not verified for longer than `[replicate] max-age`, and not reached by this run.
    Stale,
}

impl Verdict {
    /// As printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Missing => "MISSING",
            Verdict::Corrupt => "CORRUPT",
            Verdict::Unreadable => "UNREADABLE",
            Verdict::Unplayable => "UNPLAYABLE",
            Verdict::Stale => "STALE",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Finding {
    /// `library` or a destination's name.
    pub place: String,
    /// The object.
    pub key: String,
    /// What it is.
    pub verdict: Verdict,
    /// Why.
    pub detail: String,
    /// Whether `--repair` mended it.
    pub repaired: bool,
    /// The place the good copy came from.
    pub repaired_from: Option<String>,
}

/// What an audit run found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// Copies read this run.
    pub checked: u64,
    /// Of those, found right.
    pub ok: u64,
    /// Everything else.
    pub findings: Vec<Finding>,
    /// Copies the budget (`--percent`, `--older-than`, `--max-duration`) left for a later run.
    pub not_checked: u64,
    /// How long it took.
    pub elapsed_secs: f64,
}

impl Report {
    /// Findings still standing after repair.
    pub fn unresolved(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }
}

/// What to audit.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Only this place (`library` or a destination).
    pub place: Option<String>,
    /// This share of every copy, least recently verified first.
    pub percent: f64,
    /// Skip copies verified more recently than this.
    pub older_than: Option<Duration>,
    /// Stop after this long.
    pub max_duration: Option<Duration>,
    /// Decode videos (ffmpeg) and scan images (HandBrake) that hash right.
    pub decode: bool,
    /// Mend findings from copies that verify.
    pub repair: bool,
}

/// The places: the library and every destination, by name.
pub struct Places {
    /// The library.
    pub library: Library,
    /// The destinations.
    pub destinations: Vec<(String, Place)>,
    /// HandBrakeCLI, for `--decode` of images.
    pub handbrake: PathBuf,
}

impl Places {
    fn names(&self) -> Vec<String> {
        std::iter::once(LIBRARY.to_owned())
            .chain(self.destinations.iter().map(|(n, _)| n.clone()))
            .collect()
    }

    fn place(&self, name: &str) -> Option<&Place> {
        self.destinations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// Read the copy of `key` at `place` whole.
    async fn digest(&self, place: &str, key: &str) -> Result<Digested, DestError> {
        if place == LIBRARY {
            let path = self
                .library
                .path_of(key)
                .ok_or_else(|| DestError::Missing(format!("{key} is not a library key")))?;
            return tokio::task::spawn_blocking(move || digest_file(&path))
                .await
                .unwrap_or_else(|e| Err(DestError::Unreadable(e.to_string())));
        }
        match self.place(place) {
            Some(p) => p.digest(key).await,
            None => Err(DestError::Away(format!("{place} is not a destination"))),
        }
    }

    /// A local file holding the copy of `key` at `place` (fetched to `scratch` when it is remote).
    async fn local_copy(
        &self,
        place: &str,
        key: &str,
        scratch: &Path,
    ) -> Result<PathBuf, DestError> {
        if place == LIBRARY {
            return self
                .library
                .path_of(key)
                .ok_or_else(|| DestError::Missing(key.to_owned()));
        }
        let p = self
            .place(place)
            .ok_or_else(|| DestError::Away(format!("{place} is not a destination")))?;
        if let Some(local) = p.local(key) {
            return Ok(local);
        }
        let name = Path::new(key)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        let to = scratch.join(name);
        p.fetch(key, &to).await?;
        Ok(to)
    }

    /// Whether a copy that hashes right also plays: a video decodes with ffmpeg, an image scans with
    /// HandBrake. `Err` carries the reason it does not.
    pub async fn playable(&self, kind: Kind, path: &Path) -> Result<(), String> {
        let out = match kind {
            Kind::Video => {
                tokio::process::Command::new("ffmpeg")
                    .args(["-nostdin", "-v", "error", "-i"])
                    .arg(path)
                    .args(["-f", "null", "-"])
                    .output()
                    .await
            }
            Kind::Image => {
                let hb =
                    rafty_handbrake::HandBrake::new(self.handbrake.clone(), Vec::new(), None, 0);
                return match hb.scan(path, Duration::from_secs(300)).await {
                    Ok(scan) if !scan.titles.is_empty() => Ok(()),
                    Ok(_) => Err("HandBrake finds no title in it".to_owned()),
                    Err(e) => Err(format!("HandBrake cannot scan it: {e}")),
                };
            }
            Kind::Sidecar => {
                return std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| {
                        serde_json::from_slice::<rafty_core::output::Sidecar>(&b)
                            .map(|_| ())
                            .map_err(|e| format!("not a sidecar: {e}"))
                    });
            }
        }
        .map_err(|e| format!("cannot run the decoder: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        match kind {
            Kind::Video if out.status.success() && stderr.trim().is_empty() => Ok(()),
            Kind::Video => Err(format!(
                "ffmpeg: {}",
                stderr.lines().take(3).collect::<Vec<_>>().join("; ")
            )),
            _ => Ok(()),
        }
    }

    /// Put a good copy of `key` from `from` at `to` (the library included): temporary name, read
    /// back, then named.
    async fn repair(
        &self,
        key: &str,
        object: &Object,
        from: &str,
        to: &str,
        scratch: &Path,
    ) -> Result<(), DestError> {
        let want = object.digested();
        let source = self.local_copy(from, key, scratch).await?;
        let result = if to == LIBRARY {
            let path = self
                .library
                .path_of(key)
                .ok_or_else(|| DestError::Missing(key.to_owned()))?;
            let dir = path.parent().expect("library keys have a directory");
            std::fs::create_dir_all(dir)
                .map_err(|e| DestError::Away(format!("{}: {e}", dir.display())))?;
            Place::Dir(dir.to_owned())
                .put(
                    &path.file_name().expect("a file").to_string_lossy(),
                    &source,
                    &want,
                )
                .await
        } else {
            match self.place(to) {
                Some(p) => p.put(key, &source, &want).await,
                None => Err(DestError::Away(format!("{to} is not a destination"))),
            }
        };
        if source.starts_with(scratch) {
            let _ = std::fs::remove_file(&source);
        }
        result
    }
}

/// Run one audit over `ledger` and record what it verified.
pub async fn audit(
    places: &Places,
    file: &LedgerFile,
    budget: &Budget,
    max_age: Duration,
) -> Result<Report, String> {
    let began = Instant::now();
    let ledger = file.read().map_err(|e| e.to_string())?;
    let names = places.names();
    if let Some(p) = &budget.place
        && !names.contains(p)
    {
        return Err(format!(
            "--dest {p}: no such place (the places are {})",
            names.join(", ")
        ));
    }
    let mut report = Report::default();
    let now = time::OffsetDateTime::now_utc();
    let age_at = |at: &str| {
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| (now - t).as_seconds_f64())
    };
    let mut todo = Vec::new();
    for (key, object) in &ledger.objects {
        for place in &names {
            if budget.place.as_ref().is_some_and(|p| p != place) {
                continue;
            }
            let verified = object.copies.get(place).map(|c| c.verified_at.clone());
            if verified.is_none() && place != LIBRARY {
                // Never copied there: in flight when new, missing when not.
                let age = age_at(&object.recorded_at).unwrap_or(f64::MAX);
                if age > IN_FLIGHT {
                    report.findings.push(finding(
                        place,
                        key,
                        Verdict::Missing,
                        "never copied there (raftyctl replicate reconcile queues it)".into(),
                    ));
                }
                continue;
            }
            let age = verified.as_deref().and_then(age_at).unwrap_or(f64::MAX);
            todo.push((age, key.clone(), place.clone()));
        }
    }
    // Least recently verified first (every age taken from one `now`); ties by key and place.
    todo.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2)))
    });
    let share = ((todo.len() as f64) * budget.percent / 100.0).ceil() as usize;
    let scratch = tempfile::Builder::new()
        .prefix(".rafty-audit-")
        .tempdir_in(file.path().parent().unwrap_or(Path::new("/tmp")))
        .map_err(|e| format!("a scratch directory beside {}: {e}", file.path().display()))?;
    let mut verified: Vec<(String, String)> = Vec::new();
    for (i, (age, key, place)) in todo.iter().enumerate() {
        let out_of_budget = i >= share
            || budget.older_than.is_some_and(|d| *age < d.as_secs_f64())
            || budget.max_duration.is_some_and(|d| began.elapsed() >= d);
        if out_of_budget {
            report.not_checked += 1;
            if *age > max_age.as_secs_f64() {
                let days = if *age == f64::MAX {
                    "never verified".to_owned()
                } else {
                    format!("last verified {:.0} days ago", age / 86400.0)
                };
                report.findings.push(finding(place, key, Verdict::Stale, format!("{days}; not reached by this run (give the audit a larger --percent or --max-duration)")));
            }
            continue;
        }
        let object = &ledger.objects[key];
        report.checked += 1;
        let verdict = match places.digest(place, key).await {
            Ok(got) if got == object.digested() => {
                if budget.decode && object.kind != Kind::Sidecar {
                    let played = match places.local_copy(place, key, scratch.path()).await {
                        Ok(path) => {
                            let r = places.playable(object.kind, &path).await;
                            if path.starts_with(scratch.path()) {
                                let _ = std::fs::remove_file(&path);
                            }
                            r
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    match played {
                        Ok(()) => None,
                        Err(why) => Some((Verdict::Unplayable, why)),
                    }
                } else {
                    None
                }
            }
            Ok(got) => Some((
                Verdict::Corrupt,
                format!(
                    "{} bytes, sha256 {}; the ledger says {} bytes, {}",
                    got.size, got.sha256, object.size, object.sha256
                ),
            )),
            Err(DestError::Missing(m)) => Some((Verdict::Missing, m)),
            Err(e) => Some((Verdict::Unreadable, e.to_string())),
        };
        match verdict {
            None => {
                report.ok += 1;
                verified.push((key.clone(), place.clone()));
            }
            Some((v, detail)) => {
                report.findings.push(finding(place, key, v, detail));
            }
        }
    }
    file.update(|l| {
        for (k, p) in &verified {
            l.verified(k, p);
        }
    })
    .map_err(|e| e.to_string())?;
    if budget.repair {
        repair_all(places, file, &mut report, scratch.path()).await?;
    }
    report.elapsed_secs = began.elapsed().as_secs_f64();
    Ok(report)
}

/// Mend each finding from a place whose copy verifies now.
async fn repair_all(
    places: &Places,
    file: &LedgerFile,
    report: &mut Report,
    scratch: &Path,
) -> Result<(), String> {
    let ledger: Ledger = file.read().map_err(|e| e.to_string())?;
    let names = places.names();
    for f in report.findings.iter_mut() {
        if matches!(f.verdict, Verdict::Unplayable | Verdict::Stale) {
            // A copy that hashes right but does not play has no better copy to come from; a stale
            // one is only unchecked.
            continue;
        }
        let Some(object) = ledger.objects.get(&f.key) else {
            continue;
        };
        for from in names.iter().filter(|n| **n != f.place) {
            let good = matches!(places.digest(from, &f.key).await, Ok(d) if d == object.digested());
            if !good {
                continue;
            }
            match places.repair(&f.key, object, from, &f.place, scratch).await {
                Ok(()) => {
                    f.repaired = true;
                    f.repaired_from = Some(from.clone());
                    file.update(|l| {
                        l.verified(&f.key, &f.place);
                        l.verified(&f.key, from);
                    })
                    .map_err(|e| e.to_string())?;
                    break;
                }
                Err(e) => {
                    f.detail = format!("{}; repair from {from} failed: {e}", f.detail);
                }
            }
        }
        if !f.repaired {
            f.detail = format!("{}; no place has a copy that verifies", f.detail);
        }
    }
    Ok(())
}

fn finding(place: &str, key: &str, verdict: Verdict, detail: String) -> Finding {
    Finding {
        place: place.to_owned(),
        key: key.to_owned(),
        verdict,
        detail,
        repaired: false,
        repaired_from: None,
    }
}

/// What `restore-test` did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Restored {
    /// The object.
    pub key: String,
    /// Where it came from.
    pub place: String,
    /// Bytes.
    pub size: u64,
    /// Whether its SHA-256 matched the ledger.
    pub sha256_ok: bool,
    /// What playing it said (`ok`, or the reason).
    pub played: String,
    /// Seconds, fetch included.
    pub secs: f64,
}

/// Bring back one random object from one random destination (or `only`) the way a restore would,
/// check its hash and play it.
pub async fn restore_test(
    places: &Places,
    file: &LedgerFile,
    only: Option<&str>,
) -> Result<Restored, String> {
    let began = Instant::now();
    let ledger = file.read().map_err(|e| e.to_string())?;
    let candidates: Vec<(&String, &Object, &String)> = ledger
        .objects
        .iter()
        .flat_map(|(k, o)| {
            o.copies
                .keys()
                .filter(|p| *p != LIBRARY && only.is_none_or(|n| n == p.as_str()))
                .filter(|p| places.place(p).is_some())
                .map(move |p| (k, o, p))
        })
        .collect();
    if candidates.is_empty() {
        return Err(match only {
            Some(n) => format!("no object has a verified copy at {n} yet"),
            None => "no object has a verified copy at any destination yet".to_owned(),
        });
    }
    let pick = (uuid::Uuid::new_v4().as_u128() % candidates.len() as u128) as usize;
    let (key, object, place) = candidates[pick];
    let scratch = tempfile::Builder::new()
        .prefix(".rafty-restore-")
        .tempdir_in(file.path().parent().unwrap_or(Path::new("/tmp")))
        .map_err(|e| e.to_string())?;
    let name = Path::new(key)
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_default();
    let to = scratch.path().join(name);
    let dest = places.place(place).expect("filtered above");
    let got = dest
        .fetch(key, &to)
        .await
        .map_err(|e| format!("fetching {key} from {place}: {e}"))?;
    let sha256_ok = got == object.digested();
    let played = match places.playable(object.kind, &to).await {
        Ok(()) => "ok".to_owned(),
        Err(why) => why,
    };
    Ok(Restored {
        key: key.clone(),
        place: place.clone(),
        size: got.size,
        sha256_ok,
        played,
        secs: began.elapsed().as_secs_f64(),
    })
}
