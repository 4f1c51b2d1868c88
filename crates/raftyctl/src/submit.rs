//! `raftyctl submit`: check disc images and queue one job per image.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::job::{Origin, Source, Split, validate_output_name};
use rafty_core::label::read_disc_info;
use rafty_core::names::{RIP_EXCHANGE, rip_routing_key};
use rafty_core::{Job, Media, TitleSelection};
use rafty_queue::PublishError;
use sha2::{Digest, Sha256};

use crate::{Failure, close, open};

/// `raftyctl submit` options.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Disc images to queue (each must be a readable file under a source root, or use --copy)
    #[arg(required = true, value_name = "ISO")]
    pub isos: Vec<PathBuf>,
    /// Preset for these jobs [default: the worker's [transcode] preset]
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Titles to encode: main-feature, a list such as 1,3,4, or min=SECS for every title at least that long
    #[arg(long, default_value = "main-feature", value_parser = parse_titles, value_name = "WHICH")]
    pub titles: TitleSelection,
    /// Split each title by chapters across idle workers: none or chapters [default: the worker's [transcode] split]
    #[arg(long, value_name = "none|chapters")]
    pub split: Option<Split>,
    /// Output name [default: the image's file name without .iso]; only with one image
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Media type [default: read from the image: VIDEO_TS → dvd, BDMV → bluray]
    #[arg(long, value_name = "dvd|bluray|data")]
    pub media: Option<Media>,
    /// Copy images from outside the source roots into [rip] iso-dir first
    #[arg(long)]
    pub copy: bool,
    /// Compute each image's SHA-256 and put it in the job (reads the whole image; always done when [store] url is set)
    #[arg(long)]
    pub checksum: bool,
    /// Print one JSON object per job instead of "ID<TAB>PATH"
    #[arg(long)]
    pub json: bool,
}

/// Parse `--titles`.
pub fn parse_titles(s: &str) -> Result<TitleSelection, String> {
    let s = s.trim();
    if s == "main-feature" {
        return Ok(TitleSelection::MainFeature);
    }
    if let Some(secs) = s.strip_prefix("min=") {
        return secs
            .parse()
            .map(|secs| TitleSelection::MinDuration { secs })
            .map_err(|_| format!("{s:?}: min= takes a whole number of seconds"));
    }
    let list: Result<Vec<u32>, _> = s.split(',').map(|n| n.trim().parse::<u32>()).collect();
    match list {
        Ok(list) if !list.is_empty() && list.iter().all(|&n| (1..=999).contains(&n)) => {
            Ok(TitleSelection::List(list))
        }
        _ => Err(format!(
            "{s:?}: expected main-feature, a list like 1,3 or min=SECS"
        )),
    }
}

/// Everything checked about one image before anything is published.
struct Checked {
    job: Job,
    shown: PathBuf,
}

pub(crate) async fn submit(loaded: &Loaded, args: SubmitArgs) -> Result<(), Failure> {
    if args.name.is_some() && args.isos.len() > 1 {
        return Err(Failure::new(
            exit::DATAERR,
            "--name applies to one image; submit the images one by one",
        ));
    }
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    for iso in &args.isos {
        match check(loaded, &args, iso) {
            Ok(c) => checked.push(c),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(Failure::new(
            exit::DATAERR,
            format!("{}\nnothing was submitted", problems.join("\n")),
        ));
    }

    let (conn, publisher, url) = open(loaded).await?;
    let mut result = Ok(());
    for c in &checked {
        let key = rip_routing_key(c.job.source.media);
        match publisher.publish_job(RIP_EXCHANGE, &key, &c.job).await {
            Ok(()) => {
                if args.json {
                    println!("{}", serde_json::to_string(&c.job).expect("jobs serialize"));
                } else {
                    println!("{}\t{}", c.job.id, c.shown.display());
                }
                let _ = io::stdout().flush();
                tracing::info!(job_id = %c.job.id, routing_key = %key, path = %c.shown.display(), "job queued");
            }
            Err(e) => {
                let code = match e {
                    PublishError::Amqp { .. } | PublishError::Timeout { .. } => exit::UNAVAILABLE,
                    _ => exit::PROTOCOL,
                };
                let hint = match (&e, c.job.source.media) {
                    (PublishError::Returned { .. }, Media::Data) => {
                        "\nworkers only take dvd and bluray images; if this is one, pass --media dvd or --media bluray"
                    }
                    (PublishError::Returned { .. }, _) => {
                        "\nrun `raftyctl setup` to (re)create the bindings"
                    }
                    _ => "",
                };
                result = Err(Failure::new(
                    code,
                    format!(
                        "{}: not submitted: {e} (broker {url}){hint}",
                        c.shown.display()
                    ),
                ));
                break;
            }
        }
    }
    close(&conn).await;
    result
}

fn check(loaded: &Loaded, args: &SubmitArgs, iso: &Path) -> Result<Checked, String> {
    let shown = iso.display();
    let meta = std::fs::metadata(iso).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{shown}: not a regular file; give the path of a disc image (.iso)"
        ));
    }
    File::open(iso).map_err(|e| format!("{shown}: cannot be read: {e}"))?;
    let real = std::fs::canonicalize(iso).map_err(|e| format!("{shown}: {e}"))?;
    let roots = loaded.source_roots();
    let inside = roots.iter().any(|r| {
        let r = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
        real.starts_with(r)
    });
    let info =
        read_disc_info(&real).map_err(|e| format!("{shown}: cannot read its descriptors: {e}"))?;
    let media = match (args.media, info.media) {
        (Some(m), _) => m,
        (None, Some(m)) => m,
        (None, None) if !info.recognised => {
            return Err(format!(
                "{shown}: not a disc image (no ISO 9660 or UDF descriptors); pass --media dvd if you are sure"
            ));
        }
        (None, None) => {
            return Err(format!(
                "{shown}: neither VIDEO_TS nor BDMV found in the image; pass --media dvd, bluray or data"
            ));
        }
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => real
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| {
                format!("{shown}: no file name to name the output after; pass --name")
            })?,
    };
    validate_output_name(&name).map_err(|e| format!("{shown}: {e}; pass --name"))?;

    let path = if inside {
        real
    } else if args.copy {
        copy_into(&real, &loaded.config.rip.iso_dir)
            .map_err(|e| format!("{shown}: --copy failed: {e}"))?
    } else {
        let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(format!(
            "{shown}: outside the source roots ({}) that workers read from; pass --copy to copy it into {}, \
             or add its directory to [transcode] source-roots",
            roots.join(", "),
            loaded.config.rip.iso_dir.display()
        ));
    };
    // A job that names a store carries the digest its fetched copies are checked against.
    let store = loaded.config.store.url.as_deref();
    let sha256 = if args.checksum || store.is_some() {
        Some(sha256_file(&path).map_err(|e| format!("{shown}: {e}"))?)
    } else {
        None
    };
    let source = Source {
        path: path.clone(),
        media,
        size: Some(meta.len()),
        sha256,
        label: info.label,
        unreadable_sectors: None,
        url: store.map(|base| rafty_core::store::image_url(base, &path)),
    };
    let origin = Origin {
        host: loaded.host(),
        device: None,
    };
    let mut job = Job::new(source, name, origin);
    job.encode.preset = args.preset.clone();
    job.encode.titles = args.titles.clone();
    job.encode.split = args.split;
    job.validate().map_err(|e| format!("{shown}: {e}"))?;
    Ok(Checked { job, shown: path })
}

/// Copy `src` into `dir` under its own name: to a temporary name, fsync, then rename. Refuses to
/// replace an existing image.
fn copy_into(src: &Path, dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = src
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let dest = dir.join(name);
    if dest.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already exists; submit that file, or rename one of them",
                dest.display()
            ),
        ));
    }
    let temp = dir.join(format!(
        ".{}.{}.copying",
        name.to_string_lossy(),
        std::process::id()
    ));
    let copy = || -> io::Result<()> {
        std::fs::copy(src, &temp)?;
        File::open(&temp)?.sync_all()?;
        std::fs::rename(&temp, &dest)?;
        File::open(dir)?.sync_all()
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })?;
    std::fs::canonicalize(&dest)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_flag() {
        assert_eq!(
            parse_titles("main-feature").unwrap(),
            TitleSelection::MainFeature
        );
        assert_eq!(
            parse_titles("1, 3").unwrap(),
            TitleSelection::List(vec![1, 3])
        );
        assert_eq!(
            parse_titles("min=600").unwrap(),
            TitleSelection::MinDuration { secs: 600 }
        );
        for bad in ["", "0", "1,,2", "min=x", "all"] {
            assert!(parse_titles(bad).is_err(), "{bad:?}");
        }
    }
}
