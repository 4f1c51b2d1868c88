//! One job, start to finish: scan, encode with HandBrake, verify, put in place (the worker's
//! [`rafty_queue::Processor`] is [`crate::worker::Worker`], which hands each job to [`Transcoder::process`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rafty_core::config::{Container, Loaded};
use rafty_core::job::Part;
use rafty_core::names::WORK_QUEUE;
use rafty_core::paths::resolve_source;
use rafty_core::wire::{self, Event};
use rafty_core::{Failure, Job, TitleSelection};
use rafty_handbrake::{EncodeRequest, HandBrake, Scan, Title};
use rafty_queue::{Incoming, Outcome, Publisher};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;

use rafty_core::store::{image_url_path, image_url_path_of};
use rafty_store::StoreClient;
use rafty_store::api::OutputOffer;
use rafty_store::client::{Uploaded, sha256_of};

use crate::naming::{Fields, Naming};
use crate::output::{self, Existing, Sidecar};
use crate::remote::{ScratchJob, StoreGate, announced, store_failure};

mod steps;

/// How often progress is announced on the events exchange and in the log.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The worker's job processor: scan, encode, verify, put in place.
pub struct Transcoder {
    handbrake: HandBrake,
    handbrake_version: String,
    output_dir: PathBuf,
    container: Container,
    default_preset: String,
    preset_dvd: Option<String>,
    preset_bluray: Option<String>,
    tracks: rafty_handbrake::Tracks,
    path_map: std::collections::BTreeMap<PathBuf, PathBuf>,
    source_roots: Vec<PathBuf>,
    stall_timeout: Duration,
    tolerance: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    host: String,
    activity: Activity,
    naming: Naming,
    /// The presets this worker's HandBrake knows (empty: unknown, HandBrake decides).
    presets: Vec<String>,
    /// The store that sources this worker cannot read come from, and outputs go back to.
    store: Option<StoreClient>,
    scratch_dir: PathBuf,
    gate: Option<Arc<StoreGate>>,
    split: rafty_core::job::Split,
    split_min_duration: Duration,
    split_max_pieces: u32,
    /// The consumer's connection of the current session, for asking who is live before a split.
    session: Session,
}

/// The connection of the worker's current broker session (set by [`crate::worker::Worker`]).
pub type Session = Arc<std::sync::Mutex<Option<Arc<lapin::Connection>>>>;

/// A job whose image came from the store: its scratch directory (removed with it) and how the
/// store's library names and packs outputs.
struct Remote {
    scratch: ScratchJob,
    image: PathBuf,
    naming: Naming,
    container: Container,
}

impl Remote {
    fn out_dir(&self) -> PathBuf {
        self.scratch.dir().join("out")
    }
}

/// What this worker is doing now, for `raftyctl status` (`None` when idle).
pub type Activity = std::sync::Arc<std::sync::Mutex<Option<wire::Activity>>>;

fn set_activity(activity: &Activity, update: impl FnOnce(&mut Option<wire::Activity>)) {
    if let Ok(mut a) = activity.lock() {
        update(&mut a);
    }
}

impl Transcoder {
    /// A processor for this configuration, using a HandBrake already checked to run.
    pub fn new(
        loaded: &Loaded,
        handbrake: HandBrake,
        handbrake_version: String,
        activity: Activity,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        let t = &loaded.config.transcode;
        Transcoder {
            handbrake,
            handbrake_version,
            output_dir: t.output_dir.clone(),
            container: t.container,
            default_preset: t.preset.clone(),
            preset_dvd: t.preset_dvd.clone(),
            preset_bluray: t.preset_bluray.clone(),
            tracks: rafty_handbrake::Tracks {
                audio_languages: t.audio_languages.clone(),
                subtitle_languages: t.subtitle_languages.clone(),
                forced_subtitles_only: t.forced_subtitles_only,
                chapter_markers: t.chapter_markers,
            },
            path_map: t.path_map.clone(),
            source_roots: loaded.source_roots(),
            stall_timeout: t.stall_timeout,
            tolerance: t.duration_tolerance,
            metrics,
            host: loaded.host(),
            activity,
            naming: Naming::new(&t.movie_name, &t.title_name, t.container)
                .expect("templates are checked when the worker starts"),
            presets: Vec::new(),
            store: None,
            scratch_dir: t.scratch_dir.clone(),
            gate: None,
            split: t.split,
            split_min_duration: t.split_min_duration,
            split_max_pieces: t.split_max_pieces,
            session: Session::default(),
        }
    }

    /// Where the worker keeps the connection of its current session.
    pub fn session(&self) -> Session {
        self.session.clone()
    }

    /// Fetch the sources this worker cannot read from `store`, and send their outputs back; `gate`
    /// stops the worker taking jobs while the store refuses its token.
    pub fn with_store(mut self, store: StoreClient, gate: Arc<StoreGate>) -> Self {
        self.store = Some(store);
        self.gate = Some(gate);
        self
    }

    /// The presets this worker has, so a job naming another is refused with the list.
    pub fn with_presets(mut self, presets: Vec<String>) -> Self {
        self.presets = presets;
        self
    }

    async fn run(&self, incoming: &Incoming, events: &Publisher) -> Result<Outcome, Failure> {
        let job = incoming
            .job()
            .as_ref()
            .map_err(|e| Failure::BadMessage(e.to_string()))?;
        let started = Instant::now();
        set_activity(&self.activity, |a| {
            *a = Some(wire::Activity {
                id: job.id,
                name: job.output.name.clone(),
                source: job.source.path.clone(),
                attempt: incoming.attempt,
                started_at: now(),
                title: None,
                percent: None,
                fps: None,
                eta_secs: None,
                stage: None,
            });
        });
        let preset = job
            .encode
            .preset
            .clone()
            .or_else(|| match job.source.media {
                rafty_core::Media::Dvd => self.preset_dvd.clone(),
                rafty_core::Media::Bluray => self.preset_bluray.clone(),
                rafty_core::Media::Data => None,
            })
            .unwrap_or_else(|| self.default_preset.clone());
        if !self.presets.is_empty() && !self.presets.contains(&preset) {
            return Err(Failure::UnknownPreset(format!(
                "{preset:?} is not a preset of this worker ({}); it has: {}. Name one of these, or add a \
                 preset file to [transcode] preset-files",
                self.host,
                self.presets.join(", ")
            )));
        }
        let (source, remote) = match (
            resolve_source(&job.source.path, &self.path_map, &self.source_roots),
            &self.store,
        ) {
            (Ok(local), _) => (local, None),
            (Err(Failure::SourceOutsideRoots(_) | Failure::SourceUnavailable(_)), Some(store)) => {
                let remote = self.fetch(job, store, events, &incoming.cancel).await?;
                (remote.image.clone(), Some(remote))
            }
            (Err(f), _) => return Err(f),
        };
        let naming = remote.as_ref().map_or(&self.naming, |r| &r.naming);
        let output_dir = remote
            .as_ref()
            .map_or(self.output_dir.clone(), Remote::out_dir);
        let source_size = std::fs::metadata(&source)
            .map_err(|e| Failure::SourceUnavailable(format!("{}: {e}", source.display())))?
            .len();
        info!(source = %source.display(), %preset, "job received");

        let scan = self.scan(&source, &incoming.cancel).await?;
        let titles = choose_titles(&job.encode.titles, &scan, &source)?;
        if let Some(piece) = &job.piece {
            let title = scan.title(piece.title).ok_or_else(|| {
                Failure::BadMessage(format!(
                    "title {} of split job {} is not on {}",
                    piece.title,
                    piece.whole,
                    source.display()
                ))
            })?;
            let step = steps::StepJob {
                job,
                piece,
                source: &source,
                title,
                preset: &preset,
                source_size,
                scratch: remote.as_ref().map(|r| r.scratch.dir()),
                incoming,
                events,
                started,
            };
            return self.step(step).await;
        }
        if job.part.is_none() && titles.len() > 1 {
            return self.split(job, &titles, naming, incoming, events).await;
        }
        let single = titles.len() == 1 && job.encode.titles == TitleSelection::MainFeature;
        if let [title] = titles.as_slice() {
            let file = match &job.part {
                Some(part) => part.output.clone(),
                None => naming.render(single, &fields(job, title, 0, 1)),
            };
            if let Some(outcome) = self
                .split_by_chapters(
                    job,
                    title,
                    &file,
                    &preset,
                    source_size,
                    remote.as_ref().map(|r| r.scratch.dir()),
                    remote.as_ref().map_or(self.container, |r| r.container),
                    incoming,
                    events,
                )
                .await?
            {
                return Ok(outcome);
            }
        }

        let mut outputs = Vec::new();
        let mut skipped = 0;
        for (position, title) in titles.iter().enumerate() {
            let file = match &job.part {
                Some(part) => part.output.clone(),
                None => naming.render(single, &fields(job, title, position, titles.len())),
            };
            let path = output_dir.join(&file);
            let sidecar = self.sidecar_for(job, title, &preset, &file, source_size);
            if let (Some(_), Some(store)) = (&remote, &self.store) {
                match store
                    .find_output(&file)
                    .await
                    .map_err(|e| self.store_failed(e))?
                {
                    Some((there, found)) if found.same_work(&sidecar) => {
                        info!(output = %there.display(), made_by = %found.job_id, "output already in the store's library; not encoding again");
                        skipped += 1;
                        outputs.push(output_event(&there, &found, true));
                        continue;
                    }
                    Some((there, found)) => {
                        return Err(Failure::OutputConflict(format!(
                            "{} (store {}) already exists, made by job {} from {}; move it away or submit with another output name",
                            there.display(),
                            store.base(),
                            found.job_id,
                            found.source_path.display()
                        )));
                    }
                    None => {}
                }
            } else {
                match output::existing(&path, &sidecar)? {
                    Existing::Done(found) => {
                        info!(output = %path.display(), made_by = %found.job_id, "output already in place; not encoding again");
                        skipped += 1;
                        outputs.push(output_event(&path, &found, true));
                        continue;
                    }
                    Existing::Absent => {}
                }
            }
            let _ = events
                .publish_event(&Event::Started(wire::Started {
                    id: job.id,
                    host: self.host.clone(),
                    title: title.index,
                    output: if remote.is_some() {
                        PathBuf::from(&file)
                    } else {
                        path.clone()
                    },
                    preset: preset.clone(),
                }))
                .await;
            let done = self
                .encode(
                    job,
                    &source,
                    title,
                    &path,
                    &preset,
                    events,
                    sidecar,
                    remote.as_ref().map_or(self.container, |r| r.container),
                    &incoming.cancel,
                )
                .await?;
            match (&remote, &self.store) {
                (Some(_), Some(store)) => {
                    outputs.push(
                        self.send_back(job, store, &file, &path, done, events, &incoming.cancel)
                            .await?,
                    );
                }
                _ => outputs.push(output_event(&path, &done, false)),
            }
        }
        if let Some(part) = &job.part {
            self.announce_disc_if_complete(job, part, remote.is_some(), events)
                .await?;
        }
        drop(remote);
        Ok(Outcome::Done(wire::Done {
            id: job.id,
            host: self.host.clone(),
            name: job.output.name.clone(),
            disc: job.part.as_ref().map(|p| p.disc),
            outputs,
            skipped: skipped == titles.len(),
            attempt: incoming.attempt,
            preset,
            handbrake: self.handbrake_version.clone(),
            elapsed_secs: started.elapsed().as_secs_f64(),
            finished_at: now(),
            split: None,
        }))
    }

    /// Publish one title job per title (each confirmed) so that several workers encode the titles of
    /// one disc at once. Title job ids and output names are functions of the disc job and the title,
    /// so a split repeated after a crash makes the same jobs, whose outputs are recognised as done.
    async fn split(
        &self,
        job: &Job,
        titles: &[Title],
        naming: &Naming,
        incoming: &Incoming,
        events: &Publisher,
    ) -> Result<Outcome, Failure> {
        let outputs: Vec<String> = titles
            .iter()
            .enumerate()
            .map(|(i, t)| naming.render(false, &fields(job, t, i, titles.len())))
            .collect();
        let mut ids = Vec::new();
        for (title, output) in titles.iter().zip(&outputs) {
            let mut part = job.clone();
            part.id = Part::job_id(job.id, title.index);
            part.encode.titles = TitleSelection::List(vec![title.index]);
            part.part = Some(Part {
                disc: job.id,
                title: title.index,
                output: output.clone(),
                outputs: outputs.clone(),
            });
            let props = events.job_properties(&part, 0);
            events
                .publish("", WORK_QUEUE, &part.to_json(), props, true)
                .await
                .map_err(|e| Failure::Broker(e.to_string()))?;
            ids.push(part.id);
        }
        info!(titles = ?titles.iter().map(|t| t.index).collect::<Vec<_>>(), "split into title jobs");
        Ok(Outcome::Split(wire::Split {
            id: job.id,
            host: self.host.clone(),
            name: job.output.name.clone(),
            attempt: incoming.attempt,
            titles: titles.iter().map(|t| t.index).collect(),
            jobs: ids,
            outputs,
            chapters: Vec::new(),
        }))
    }

    /// After a title job: when every output of its disc is in place, announce the disc. The last two
    /// titles may finish at once, so the event can come twice; it is safe to receive twice.
    async fn announce_disc_if_complete(
        &self,
        job: &Job,
        part: &Part,
        remote: bool,
        events: &Publisher,
    ) -> Result<(), Failure> {
        let paths: Vec<PathBuf> = match (&self.store, remote) {
            (Some(store), true) => {
                let mut paths = Vec::new();
                for o in &part.outputs {
                    match store
                        .find_output(o)
                        .await
                        .map_err(|e| self.store_failed(e))?
                    {
                        Some((path, _)) => paths.push(path),
                        None => return Ok(()),
                    }
                }
                paths
            }
            _ => {
                let paths: Vec<PathBuf> = part
                    .outputs
                    .iter()
                    .map(|o| self.output_dir.join(o))
                    .collect();
                if !paths
                    .iter()
                    .all(|p| p.exists() && output::sidecar_path(p).exists())
                {
                    return Ok(());
                }
                paths
            }
        };
        info!(disc = %part.disc, outputs = paths.len(), "every title of the disc is done");
        events
            .publish_event(&Event::DiscDone(wire::DiscDone {
                disc: part.disc,
                host: self.host.clone(),
                name: job.output.name.clone(),
                outputs: paths,
            }))
            .await
            .map_err(|e| Failure::Broker(e.to_string()))
    }

    async fn scan(&self, input: &Path, cancel: &CancellationToken) -> Result<Scan, Failure> {
        tokio::select! {
            r = self.handbrake.scan(input, self.stall_timeout) => r.map_err(hb_failure),
            _ = cancel.cancelled() => Err(Failure::Shutdown),
        }
    }

    /// Encode one title to a temporary file, verify it, and put it in place with its sidecar (the
    /// `template`, completed with the output's size and duration).
    #[allow(clippy::too_many_arguments)]
    async fn encode(
        &self,
        job: &Job,
        source: &Path,
        title: &Title,
        path: &Path,
        preset: &str,
        events: &Publisher,
        template: Sidecar,
        container: Container,
        cancel: &CancellationToken,
    ) -> Result<Sidecar, Failure> {
        let temp = output::temp_path(path, &job.id.to_string(), &self.host);
        output::prepare(path.parent().expect("output has a directory"), &temp)?;
        let result = self
            .encode_to(
                job, source, title, path, &temp, preset, events, template, container, cancel,
            )
            .await;
        if result.is_err() {
            // Never leave a partial behind: HandBrake's cancelled output looks valid.
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn encode_to(
        &self,
        job: &Job,
        source: &Path,
        title: &Title,
        path: &Path,
        temp: &Path,
        preset: &str,
        events: &Publisher,
        template: Sidecar,
        container: Container,
        cancel: &CancellationToken,
    ) -> Result<Sidecar, Failure> {
        let tracks = tracks_for(&self.tracks, title);
        info!(title = title.index, title_secs = title.duration.as_secs_f64(), output = %path.display(), "encoding");
        let encode_started = Instant::now();
        self.handbrake_run(
            job,
            source,
            title,
            temp,
            preset,
            &tracks,
            &[],
            container,
            events,
            cancel,
        )
        .await?;
        self.verify_and_commit(temp, path, title, template, encode_started, cancel)
            .await
    }

    /// Run HandBrake on one title into `temp`, announcing its progress; the caller verifies.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn handbrake_run(
        &self,
        job: &Job,
        source: &Path,
        title: &Title,
        temp: &Path,
        preset: &str,
        tracks: &rafty_handbrake::Tracks,
        extra: &[std::ffi::OsString],
        container: Container,
        events: &Publisher,
        cancel: &CancellationToken,
    ) -> Result<(), Failure> {
        let request = EncodeRequest {
            input: source,
            title: title.index,
            output: temp,
            preset,
            format: container.handbrake_format(),
            tracks,
            extra,
        };
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        set_activity(&self.activity, |a| {
            if let Some(a) = a {
                a.title = Some(title.index);
                a.percent = Some(0.0);
                a.stage = Some("encode".to_owned());
            }
        });
        let encode = self
            .handbrake
            .encode(&request, self.stall_timeout, cancel.cancelled(), |p| {
                self.metrics.progress.set(p.fraction());
                self.metrics.fps.set(p.fps.unwrap_or(0.0));
                set_activity(&self.activity, |a| {
                    if let Some(a) = a {
                        a.percent = Some(p.fraction() * 100.0);
                        a.fps = p.fps;
                        a.eta_secs = p.eta.map(|e| e.as_secs());
                    }
                });
                tx.send_replace(Some(p.clone()));
            });
        let announce = async {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let latest = rx.borrow_and_update().clone();
                if let Some(p) = latest {
                    let pct = p.fraction() * 100.0;
                    info!(
                        percent = format!("{pct:.1}"),
                        fps = p.fps,
                        eta_secs = p.eta.map(|e| e.as_secs()),
                        "progress"
                    );
                    let _ = events
                        .publish_event(&Event::Progress(wire::Progress {
                            id: job.id,
                            host: self.host.clone(),
                            title: title.index,
                            percent: pct,
                            fps: p.fps,
                            eta_secs: p.eta.map(|e| e.as_secs()),
                        }))
                        .await;
                }
            }
        };
        let result = tokio::select! {
            r = encode => r,
            _ = announce => unreachable!("the announcer never ends"),
        };
        self.metrics.progress.set(0.0);
        self.metrics.fps.set(0.0);
        self.metrics.handbrake_exit(&match &result {
            Ok(()) => "0".to_owned(),
            Err(rafty_handbrake::Error::Exit { code, .. }) => code.to_string(),
            Err(rafty_handbrake::Error::Signal { .. }) => "signal".to_owned(),
            Err(rafty_handbrake::Error::Cancelled) => "stopped".to_owned(),
            Err(rafty_handbrake::Error::Stalled { .. }) => "stalled".to_owned(),
            Err(_) => "not-run".to_owned(),
        });
        result.map_err(hb_failure)
    }

    /// Check an encoded title against its scan, and put it in place with its sidecar.
    async fn verify_and_commit(
        &self,
        temp: &Path,
        path: &Path,
        title: &Title,
        template: Sidecar,
        encode_started: Instant,
        cancel: &CancellationToken,
    ) -> Result<Sidecar, Failure> {
        let scanned = tokio::select! {
            r = self.handbrake.scan(temp, self.stall_timeout) => r,
            _ = cancel.cancelled() => return Err(Failure::Shutdown),
        }
        .map_err(|e| {
            Failure::OutputTruncated(format!(
                "HandBrake cannot read its own output {}: {e}",
                temp.display()
            ))
        })?;
        let got = scanned.titles.first().ok_or_else(|| {
            Failure::OutputTruncated(format!("the output of title {} has no video", title.index))
        })?;
        let shortest = title.duration.saturating_sub(self.tolerance);
        if got.duration < shortest {
            return Err(Failure::OutputTruncated(format!(
                "the output is {:.1} s long but title {} is {:.1} s (tolerance {:.1} s): a truncated encode",
                got.duration.as_secs_f64(),
                title.index,
                title.duration.as_secs_f64(),
                self.tolerance.as_secs_f64()
            )));
        }
        if title.audio_tracks > 0 && got.audio_tracks == 0 {
            // Sound was there, the languages kept some, and none came out: a broken encode.
            return Err(Failure::OutputTruncated(format!(
                "title {} has {} audio tracks but the output has none",
                title.index, title.audio_tracks
            )));
        }
        let sidecar = self
            .put_in_place(temp, path, template, got.duration.as_secs_f64(), cancel)
            .await?;
        self.metrics
            .encode_seconds
            .observe(encode_started.elapsed().as_secs_f64());
        info!(output = %path.display(), secs = got.duration.as_secs_f64(), bytes = sidecar.output_size, "output verified and in place");
        Ok(sidecar)
    }

    /// Put a verified output in place with its sidecar (the `template` completed with the output's
    /// size, SHA-256 and duration); the sidecar of what stands there is returned.
    async fn put_in_place(
        &self,
        temp: &Path,
        path: &Path,
        template: Sidecar,
        duration_secs: f64,
        cancel: &CancellationToken,
    ) -> Result<Sidecar, Failure> {
        // Recorded in the sidecar: the ledger of the copies (rafty-replicate, raftyctl audit)
        // starts from the hash of what was verified here, not of what is on disk later.
        let (size, sha256) = measure(temp).await?;
        let sidecar = Sidecar {
            output_size: size,
            output_sha256: Some(sha256),
            output_duration_secs: duration_secs,
            finished_at: now(),
            ..template
        };
        // A job taken back while it was verified belongs to another worker now: no output from here.
        if cancel.is_cancelled() {
            return Err(Failure::Shutdown);
        }
        Ok(match output::commit(temp, path, &sidecar)? {
            output::Committed::Ours => sidecar,
            output::Committed::Theirs => {
                info!(output = %path.display(), "the same work finished elsewhere first; its output stands");
                std::fs::read(output::sidecar_path(path))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or(sidecar)
            }
        })
    }
}

impl Transcoder {
    /// Fetch the job's image from the store into a scratch directory of its own, verified against
    /// the job's SHA-256. Only the store in this worker's config is asked; a job's `source.url`
    /// gives at most the image's place in it.
    async fn fetch(
        &self,
        job: &Job,
        store: &StoreClient,
        events: &Publisher,
        cancel: &CancellationToken,
    ) -> Result<Remote, Failure> {
        let sha256 = job.source.sha256.as_deref().ok_or_else(|| {
            Failure::BadMessage(format!(
                "{} cannot be read on this worker and the job has no source.sha256 to check a fetched copy against; \
                 resubmit it with `raftyctl submit --checksum`, or give this worker the storage",
                job.source.path.display()
            ))
        })?;
        let url_path = match &job.source.url {
            Some(url) => {
                if !url.starts_with(store.base()) {
                    info!(job_url = %url, store = %store.base(), "the job names another store's address; fetching from this worker's own store");
                }
                image_url_path_of(url)
                    .map_err(|e| Failure::BadMessage(format!("source.url {e}")))?
            }
            None => image_url_path(&job.source.path),
        };
        let health = store.health().await.map_err(|e| self.store_failed(e))?;
        let naming = Naming::new(&health.movie_name, &health.title_name, health.container)
            .map_err(|e| {
                Failure::BadMessage(format!("the naming of store {}: {e}", store.base()))
            })?;
        let scratch = ScratchJob::create(&self.scratch_dir, job)?;
        let image = scratch.dir().join("source.iso");
        let shown = job.source.path.display().to_string();
        info!(store = %store.base(), image = %url_path, "fetching the image from the store");
        announced(
            job,
            &self.host,
            wire::Direction::Download,
            &shown,
            events,
            async |progress| {
                store
                    .fetch(&url_path, &image, sha256, progress, cancel)
                    .await
            },
            &self.activity,
        )
        .await
        .map_err(|e| self.store_failed(e))?;
        Ok(Remote {
            scratch,
            image,
            naming,
            container: health.container,
        })
    }

    /// Send a verified output made in scratch to the store; the output event names where it is now.
    #[allow(clippy::too_many_arguments)]
    async fn send_back(
        &self,
        job: &Job,
        store: &StoreClient,
        file: &str,
        path: &Path,
        done: Sidecar,
        events: &Publisher,
        cancel: &CancellationToken,
    ) -> Result<wire::OutputDone, Failure> {
        let sha256 = match &done.output_sha256 {
            Some(sha256) => sha256.clone(),
            None => sha256_of(path)
                .await
                .map_err(|e| output::io_failure(path, &e))?,
        };
        let offer = OutputOffer {
            // The job the sidecar names: a split title's join sends the submitted job's output.
            job: done.job_id.parse().unwrap_or(job.id),
            output: file.to_owned(),
            size: done.output_size,
            sha256,
            sidecar: done,
        };
        let uploaded = announced(
            job,
            &self.host,
            wire::Direction::Upload,
            file,
            events,
            async |progress| store.upload(&offer, path, progress, cancel).await,
            &self.activity,
        )
        .await
        .map_err(|e| self.store_failed(e))?;
        let _ = std::fs::remove_file(path);
        Ok(match uploaded {
            Uploaded::Committed(there, _) => output_event(&there, &offer.sidecar, false),
            Uploaded::InPlace(there, found) => {
                info!(output = %there.display(), made_by = %found.job_id, "the same work reached the store's library first; its output stands");
                output_event(&there, &found, false)
            }
        })
    }

    fn store_failed(&self, e: rafty_store::StoreError) -> Failure {
        let failure = store_failure(e);
        if let (Failure::StoreUnauthorized(why), Some(gate)) = (&failure, &self.gate) {
            gate.refused(why);
        }
        failure
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Do one job: the outcome the consumer loop settles.
    pub async fn process(&self, incoming: &Incoming, events: &Publisher) -> Outcome {
        self.metrics.busy.set(1);
        let what = match incoming.job() {
            Ok(job) => format!("encoding {}", job.output.name),
            Err(_) => "checking a job".to_owned(),
        };
        let inhibitor = crate::inhibit::inhibit_sleep(&what).await;
        let result = self.run(incoming, events).await;
        drop(inhibitor);
        set_activity(&self.activity, |a| *a = None);
        self.metrics.busy.set(0);
        result.unwrap_or_else(|failure| {
            warn!(error = %failure, kind = failure.kind(), "job failed");
            Outcome::Failed(failure)
        })
    }
}

/// A verified file's size and SHA-256.
async fn measure(path: &Path) -> Result<(u64, String), Failure> {
    let size = std::fs::metadata(path)
        .map_err(|e| output::io_failure(path, &e))?
        .len();
    let sha256 = sha256_of(path)
        .await
        .map_err(|e| output::io_failure(path, &e))?;
    Ok((size, sha256))
}

fn now() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).expect("formats")
}

fn output_event(path: &Path, sidecar: &Sidecar, skipped: bool) -> wire::OutputDone {
    wire::OutputDone {
        path: path.to_owned(),
        title: sidecar.title,
        duration_secs: sidecar.output_duration_secs,
        size: sidecar.output_size,
        skipped,
        sha256: sidecar.output_sha256.clone(),
    }
}

/// What the naming templates see of a job and one of its titles (a pure function of both, so a
/// rerun finds the same output).
fn fields<'a>(job: &'a Job, title: &Title, position: usize, count: usize) -> Fields<'a> {
    Fields {
        name: &job.output.name,
        label: job.source.label.as_deref(),
        title: title.index,
        index: position + 1,
        count,
    }
}

/// Pick the titles a job asks for from a scan.
pub fn choose_titles(
    selection: &TitleSelection,
    scan: &Scan,
    source: &Path,
) -> Result<Vec<Title>, Failure> {
    let listing = || {
        scan.titles
            .iter()
            .map(|t| format!("{} ({:.0} s)", t.index, t.duration.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<Title> = match selection {
        TitleSelection::MainFeature => scan.main_feature().cloned().into_iter().collect(),
        TitleSelection::List(list) => {
            let mut out = Vec::new();
            for n in list {
                match scan.title(*n) {
                    Some(t) => out.push(t.clone()),
                    None => {
                        return Err(Failure::BadMessage(format!(
                            "title {n} is not on {}; its titles are: {}",
                            source.display(),
                            listing()
                        )));
                    }
                }
            }
            out
        }
        TitleSelection::MinDuration { secs } => drop_duplicates(
            scan.titles
                .iter()
                .filter(|t| t.duration >= Duration::from_secs(*secs))
                .cloned()
                .collect(),
        ),
    };
    if chosen.is_empty() {
        return Err(Failure::HandBrakeExit {
            code: 2,
            message: format!(
                "no title of {} matches {selection:?}; its titles are: {}",
                source.display(),
                listing()
            ),
        });
    }
    Ok(chosen)
}

/// The track choices for one title: the configured ones, except that when none of the title's audio
/// tracks is in the configured languages the preset chooses (a silent film is never what was meant).
pub fn tracks_for(configured: &rafty_handbrake::Tracks, title: &Title) -> rafty_handbrake::Tracks {
    let mut tracks = configured.clone();
    if !tracks.audio_languages.is_empty()
        && !title
            .audio_languages
            .iter()
            .any(|l| tracks.audio_languages.contains(l))
    {
        info!(
            title = title.index,
            has = ?title.audio_languages,
            wanted = ?tracks.audio_languages,
            "no audio track in the wanted languages; keeping the preset's choice"
        );
        tracks.audio_languages.clear();
    }
    tracks
}

/// Drop titles that repeat an earlier one: the same length and the same chapter layout (to the
/// second). DVDs often carry such copies, as decoys or as alternate angles of one film.
pub fn drop_duplicates(titles: Vec<Title>) -> Vec<Title> {
    let key = |t: &Title| -> (u64, Vec<u64>) {
        (
            t.duration.as_secs_f64().round() as u64,
            t.chapter_durations
                .iter()
                .map(|d| d.as_secs_f64().round() as u64)
                .collect(),
        )
    };
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for t in titles {
        if seen.insert(key(&t)) {
            kept.push(t);
        } else {
            info!(
                title = t.index,
                "title skipped: a duplicate of an earlier one"
            );
        }
    }
    kept
}

/// The failure a HandBrake error stands for.
fn hb_failure(e: rafty_handbrake::Error) -> Failure {
    use rafty_handbrake::Error as E;
    match e {
        E::Exit { code, message } => Failure::HandBrakeExit { code, message },
        E::Signal { .. } | E::Io(_) => Failure::HandBrakeKilled(e.to_string()),
        E::Stalled { .. } => Failure::Stalled(e.to_string()),
        E::Cancelled => Failure::Shutdown,
        E::Start { .. } | E::Scan { .. } => Failure::HandBrakeExit {
            code: -1,
            message: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn title(index: u32, secs: u64) -> Title {
        Title {
            index,
            duration: Duration::from_secs(secs),
            chapters: 1,
            chapter_durations: vec![Duration::from_secs(secs)],
            audio_languages: vec!["eng".into()],
            audio_tracks: 1,
            size: (720, 480),
        }
    }

    #[test]
    fn titles_by_policy() {
        let scan = Scan {
            titles: vec![title(1, 20), title(2, 35), title(3, 5)],
            main_feature: None,
        };
        let src = Path::new("/iso/x.iso");
        let idx = |sel| {
            choose_titles(&sel, &scan, src).map(|v| v.iter().map(|t| t.index).collect::<Vec<_>>())
        };
        assert_eq!(idx(TitleSelection::MainFeature).unwrap(), [2]);
        assert_eq!(idx(TitleSelection::List(vec![3, 1])).unwrap(), [3, 1]);
        assert_eq!(
            idx(TitleSelection::MinDuration { secs: 10 }).unwrap(),
            [1, 2]
        );
        assert!(
            matches!(idx(TitleSelection::List(vec![9])), Err(Failure::BadMessage(m)) if m.contains("title 9"))
        );
        assert!(idx(TitleSelection::MinDuration { secs: 999 }).is_err());
    }

    #[test]
    fn duplicates_are_dropped_by_length_and_chapter_layout() {
        let mut a = title(1, 30);
        a.chapter_durations = vec![Duration::from_secs(10), Duration::from_secs(20)];
        let mut same = title(4, 30);
        same.chapter_durations = a.chapter_durations.clone();
        let mut other_layout = title(5, 30);
        other_layout.chapter_durations = vec![Duration::from_secs(15), Duration::from_secs(15)];
        let kept: Vec<u32> = drop_duplicates(vec![a, title(2, 12), same, other_layout])
            .iter()
            .map(|t| t.index)
            .collect();
        assert_eq!(kept, [1, 2, 5]);
    }

    #[test]
    fn wanted_audio_languages_never_leave_a_title_silent() {
        let configured = rafty_handbrake::Tracks {
            audio_languages: vec!["fra".into()],
            ..Default::default()
        };
        let english = title(1, 20);
        assert!(
            tracks_for(&configured, &english).audio_languages.is_empty(),
            "falls back to the preset"
        );
        let mut french = title(2, 20);
        french.audio_languages = vec!["eng".into(), "fra".into()];
        assert_eq!(tracks_for(&configured, &french).audio_languages, ["fra"]);
    }
}
