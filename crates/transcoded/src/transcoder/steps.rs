//! A title split by chapters, on the worker's side (docs/split.md): the split itself, each piece,
//! the tracks pass and the join. The plan, the files and the checks are in [`crate::split`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rafty_core::job::{Piece, Split, Step};
use rafty_core::names::WORK_QUEUE;
use rafty_core::wire::{self, ControlRequest, Event, WorkerState};
use rafty_core::{Failure, Job, TitleSelection};
use rafty_handbrake::Title;
use rafty_queue::{Incoming, Outcome, Publisher};
use rafty_store::StoreClient;
use tracing::{info, warn};
use uuid::Uuid;

use super::{Transcoder, measure, now, output_event, set_activity, tracks_for};
use crate::output::{self, Existing, Sidecar};
use crate::split::{self, Expected, Record, ToolError, Video};

/// How long the worker waits for the others to say they are live before it splits (answers on a
/// LAN take milliseconds; the wait is on the title's critical path).
const ASK_LIVE: Duration = Duration::from_millis(500);

/// One step of a split title, with what the job's preamble found.
pub(super) struct StepJob<'a> {
    pub job: &'a Job,
    pub piece: &'a Piece,
    pub source: &'a Path,
    pub title: &'a Title,
    pub preset: &'a str,
    pub source_size: u64,
    /// The job's scratch directory when its image came from the store: the steps are kept there.
    pub scratch: Option<&'a Path>,
    pub incoming: &'a Incoming,
    pub events: &'a Publisher,
    pub started: Instant,
}

/// Where the steps of a split title are kept: in the output directory this worker shares, or in
/// the store (for a worker without shared storage, which makes and joins them in scratch).
enum Place<'a> {
    Shared {
        dir: PathBuf,
    },
    Store {
        /// For its mapping of store errors (a refused token holds the worker).
        worker: &'a Transcoder,
        store: &'a StoreClient,
        whole: Uuid,
        scratch: &'a Path,
    },
}

impl Place<'_> {
    /// Where this worker makes a step's file (and, for the join, has the steps' files).
    fn work_dir(&self) -> PathBuf {
        match self {
            Place::Shared { dir } => dir.clone(),
            Place::Store { scratch, .. } => scratch.join("steps"),
        }
    }

    /// The finished steps, by file name.
    async fn records(
        &self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<BTreeMap<String, Record>, Failure> {
        match self {
            Place::Shared { dir } => Ok(Record::all(dir)),
            Place::Store {
                worker,
                store,
                whole,
                ..
            } => store
                .steps(*whole, cancel)
                .await
                .map_err(|e| worker.store_failed(e)),
        }
    }

    /// Keep a finished step's file (made at `file` in [`Self::work_dir`], its record beside it); the
    /// record that stands is returned.
    async fn keep(
        &self,
        file: &Path,
        record: Record,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Record, Failure> {
        match self {
            Place::Shared { .. } => Ok(record),
            Place::Store {
                worker,
                store,
                whole,
                ..
            } => {
                let name = file_name(file);
                let kept = store
                    .put_step(*whole, &name, file, &record, cancel)
                    .await
                    .map_err(|e| worker.store_failed(e))?;
                let _ = std::fs::remove_file(file);
                let _ = std::fs::remove_file(split::record_path(file));
                Ok(kept)
            }
        }
    }

    /// Have each finished step's file in [`Self::work_dir`] (fetched and checked from the store).
    /// `Ok(Err(why))`: a step in the store is not the bytes its record names (the join falls back).
    async fn bring(
        &self,
        records: &BTreeMap<String, Record>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Result<(), String>, Failure> {
        let Place::Store {
            worker,
            store,
            whole,
            ..
        } = self
        else {
            return Ok(Ok(()));
        };
        let dir = self.work_dir();
        std::fs::create_dir_all(&dir).map_err(|e| output::io_failure(&dir, &e))?;
        for (name, record) in records {
            let dest = dir.join(name);
            match store
                .fetch_step(*whole, name, &dest, &record.sha256, cancel)
                .await
            {
                Ok(_) => {}
                Err(e @ rafty_store::StoreError::Digest { .. }) => {
                    return Ok(Err(format!("step {name}: {e}")));
                }
                Err(e) => return Err(worker.store_failed(e)),
            }
        }
        info!(whole = %whole, steps = records.len(), "the steps are fetched from the store");
        Ok(Ok(()))
    }

    /// Remove the steps, and `.rafty-split` with them when no other split is under way.
    async fn remove(&self, cancel: &tokio_util::sync::CancellationToken) {
        match self {
            Place::Shared { dir } => {
                let _ = std::fs::remove_dir_all(dir);
                if let Some(parent) = dir.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            Place::Store { store, whole, .. } => {
                let _ = std::fs::remove_dir_all(self.work_dir());
                if let Err(e) = store.remove_steps(*whole, cancel).await {
                    warn!(%whole, error = %e, "cannot remove the split title's steps from the store");
                }
            }
        }
    }
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .expect("a step's file")
        .to_string_lossy()
        .into_owned()
}

fn tool_failure(e: ToolError) -> Failure {
    match e {
        // Another worker may have the tool: the retry ladder gives it the chance.
        ToolError::Missing { .. } => Failure::HandBrakeExit {
            code: -1,
            message: e.to_string(),
        },
        ToolError::Failed { .. } => Failure::OutputTruncated(e.to_string()),
    }
}

impl Transcoder {
    /// The sidecar of `title` of `job` put in place as `file`, before its output is measured.
    pub(super) fn sidecar_for(
        &self,
        job: &Job,
        title: &Title,
        preset: &str,
        file: &str,
        source_size: u64,
    ) -> Sidecar {
        Sidecar {
            job_id: job.id.to_string(),
            source_path: job.source.path.clone(),
            source_size: job.source.size.unwrap_or(source_size),
            source_sha256: job.source.sha256.clone(),
            source_label: job.source.label.clone(),
            title: title.index,
            preset: preset.to_owned(),
            handbrake: self.handbrake_version.clone(),
            output: file.to_owned(),
            output_size: 0,
            output_sha256: None,
            output_duration_secs: 0.0,
            title_duration_secs: title.duration.as_secs_f64(),
            host: self.host.clone(),
            finished_at: String::new(),
        }
    }

    /// Split `title` of `job` by chapters when the job (or this worker's config) says so and it is
    /// worth it: at least two chapters and two live workers. `None`: encode it whole here.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn split_by_chapters(
        &self,
        job: &Job,
        title: &Title,
        file: &str,
        preset: &str,
        source_size: u64,
        scratch: Option<&Path>,
        container: rafty_core::config::Container,
        incoming: &Incoming,
        events: &Publisher,
    ) -> Result<Option<Outcome>, Failure> {
        let (split, asked) = match job.encode.split {
            Some(split) => (split, true),
            None => (self.split, false),
        };
        if split == Split::None {
            return Ok(None);
        }
        if !asked && title.duration < self.split_min_duration {
            info!(
                title_secs = title.duration.as_secs_f64(),
                min_secs = self.split_min_duration.as_secs_f64(),
                "title shorter than [transcode] split-min-duration; encoding it whole"
            );
            return Ok(None);
        }
        if container != rafty_core::config::Container::Mkv {
            info!(
                "a split title is joined as Matroska and this worker's [transcode] container is not mkv; encoding it whole"
            );
            return Ok(None);
        }
        if title.chapter_durations.len() < 2 {
            info!(
                title = title.index,
                "the title has one chapter; encoding it whole"
            );
            return Ok(None);
        }
        let place = self.place(job.id, scratch)?;
        let template = self.sidecar_for(job, title, preset, file, source_size);
        if self.in_library(&place, file, &template).await?.is_some() {
            // The usual path says so and skips it.
            return Ok(None);
        }
        let live = self.live_workers().await;
        let pieces = live
            .min(self.split_max_pieces as usize)
            .min(title.chapter_durations.len());
        if pieces < 2 {
            info!(
                live,
                "fewer than two live workers; encoding the title whole"
            );
            return Ok(None);
        }
        let ranges = split::plan(&title.chapter_durations, pieces);
        let piece = Piece {
            whole: job.id,
            title: title.index,
            output: file.to_owned(),
            ranges: ranges.clone(),
            step: Step::Tracks,
        };
        // Longest first (the title is done when its longest piece is), then the tracks pass,
        // which the worker with the shortest piece takes when it is done with it.
        let mut order: Vec<u32> = (0..ranges.len() as u32).collect();
        order.sort_by_key(|&i| {
            std::cmp::Reverse(split::range_duration(
                &title.chapter_durations,
                ranges[i as usize],
            ))
        });
        let steps: Vec<Step> = order
            .into_iter()
            .map(|index| Step::Video { index })
            .chain([Step::Tracks])
            .collect();
        for step in steps {
            let mut one = job.clone();
            one.id = Piece::job_id(job.id, step);
            one.encode.titles = TitleSelection::List(vec![title.index]);
            one.piece = Some(Piece {
                step,
                ..piece.clone()
            });
            let props = events.job_properties(&one, 0);
            events
                .publish("", WORK_QUEUE, &one.to_json(), props, true)
                .await
                .map_err(|e| Failure::Broker(e.to_string()))?;
        }
        // In the event, each piece's job in `chapters` order, then the tracks pass's.
        let jobs: Vec<uuid::Uuid> = (0..ranges.len() as u32)
            .map(|index| Step::Video { index })
            .chain([Step::Tracks])
            .map(|step| Piece::job_id(job.id, step))
            .collect();
        info!(
            title = title.index,
            live,
            pieces = %ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            "split by chapters"
        );
        Ok(Some(Outcome::Split(wire::Split {
            id: job.id,
            host: self.host.clone(),
            name: job.output.name.clone(),
            attempt: incoming.attempt,
            titles: vec![title.index],
            jobs,
            outputs: vec![file.to_owned()],
            chapters: ranges,
        })))
    }

    /// How many transcode workers answer a status request within a second and would take a job
    /// (this one included).
    async fn live_workers(&self) -> usize {
        let conn = self.session.lock().ok().and_then(|c| c.clone());
        let Some(conn) = conn else {
            return 1;
        };
        match rafty_queue::control::ask(&conn, &ControlRequest::Status, ASK_LIVE).await {
            Ok(answers) => answers
                .iter()
                .filter(|s| {
                    s.app == "transcoded"
                        && matches!(s.state, WorkerState::Idle | WorkerState::Working)
                })
                .count()
                .max(1),
            Err(e) => {
                warn!(error = %e, "cannot ask which workers are live; encoding the title whole");
                1
            }
        }
    }

    /// Where the steps of split job `whole` are kept for a job with this scratch directory (set when
    /// its image came from the store).
    fn place<'a>(&'a self, whole: Uuid, scratch: Option<&'a Path>) -> Result<Place<'a>, Failure> {
        match (scratch, &self.store) {
            (None, _) => Ok(Place::Shared {
                dir: split::dir(&self.output_dir, whole),
            }),
            (Some(scratch), Some(store)) => Ok(Place::Store {
                worker: self,
                store,
                whole,
                scratch,
            }),
            (Some(_), None) => Err(Failure::SourceUnavailable(
                "a fetched image without a store in this worker's config".to_owned(),
            )),
        }
    }

    /// The split title's output when the same work already put it in the library.
    async fn in_library(
        &self,
        place: &Place<'_>,
        file: &str,
        template: &Sidecar,
    ) -> Result<Option<wire::OutputDone>, Failure> {
        match place {
            Place::Shared { .. } => {
                let path = self.output_dir.join(file);
                Ok(match output::existing(&path, template)? {
                    Existing::Done(found) => Some(output_event(&path, &found, true)),
                    Existing::Absent => None,
                })
            }
            Place::Store { store, .. } => {
                match store
                    .find_output(file)
                    .await
                    .map_err(|e| self.store_failed(e))?
                {
                    Some((there, found)) if found.same_work(template) => {
                        Ok(Some(output_event(&there, &found, true)))
                    }
                    Some((there, found)) => Err(Failure::OutputConflict(format!(
                        "{} (store {}) already exists, made by job {} from {}; move it away or submit with another output name",
                        there.display(),
                        store.base(),
                        found.job_id,
                        found.source_path.display()
                    ))),
                    None => Ok(None),
                }
            }
        }
    }

    /// Do one step of a split title.
    pub(super) async fn step(&self, s: StepJob<'_>) -> Result<Outcome, Failure> {
        let cancel = &s.incoming.cancel;
        let place = self.place(s.piece.whole, s.scratch)?;
        // The output stands for the job that was submitted, as an unsplit one's does.
        let template = Sidecar {
            job_id: s.piece.whole.to_string(),
            ..self.sidecar_for(s.job, s.title, s.preset, &s.piece.output, s.source_size)
        };
        if let Some(found) = self.in_library(&place, &s.piece.output, &template).await? {
            info!(output = %found.path.display(), step = s.piece.step.as_str(), "the split title is already in place; nothing to do");
            place.remove(cancel).await;
            return Ok(self.step_done(&s, vec![found], true, 0, Vec::new(), None));
        }
        let dir = place.work_dir();
        std::fs::create_dir_all(&dir).map_err(|e| output::io_failure(&dir, &e))?;
        let (file, extra, tracks) = match s.piece.step {
            Step::Join => return self.join(&s, &place, template).await,
            Step::Video { index } => (
                split::piece_path(&dir, index),
                split::piece_args(s.piece.ranges[index as usize]),
                rafty_handbrake::Tracks {
                    chapter_markers: Some(false),
                    ..Default::default()
                },
            ),
            Step::Tracks => (
                split::tracks_path(&dir),
                split::tracks_args(),
                tracks_for(&self.tracks, s.title),
            ),
        };
        let name = file_name(&file);
        let (record, skipped) = match place.records(cancel).await?.remove(&name) {
            Some(record) => {
                info!(file = %name, made_by = %record.host, "this step is already done");
                (record, true)
            }
            None => {
                let made = self.make_step(&s, &file, &extra, &tracks).await?;
                (place.keep(&file, made, cancel).await?, false)
            }
        };
        // Read again: other steps may have finished while this one ran.
        let records = place.records(cancel).await?;
        self.publish_join_if_ready(&s, &records).await?;
        Ok(self.step_done(&s, Vec::new(), skipped, record.frames, Vec::new(), None))
    }

    /// Encode a piece or the tracks pass into its file, check it, and leave its record.
    async fn make_step(
        &self,
        s: &StepJob<'_>,
        file: &Path,
        extra: &[std::ffi::OsString],
        tracks: &rafty_handbrake::Tracks,
    ) -> Result<Record, Failure> {
        let temp = output::temp_path(file, &s.job.id.to_string(), &self.host);
        output::prepare(file.parent().expect("in the split directory"), &temp)?;
        let _ = s
            .events
            .publish_event(&Event::Started(wire::Started {
                id: s.job.id,
                host: self.host.clone(),
                title: s.title.index,
                output: file.to_owned(),
                preset: s.preset.to_owned(),
            }))
            .await;
        set_activity(&self.activity, |a| {
            if let Some(a) = a {
                a.stage = Some(s.piece.step.as_str().to_owned());
            }
        });
        info!(step = s.piece.step.as_str(), file = %file.display(), "encoding a step of a split title");
        let made = async {
            self.handbrake_run(
                s.job,
                s.source,
                s.title,
                &temp,
                s.preset,
                tracks,
                extra,
                rafty_core::config::Container::Mkv,
                s.events,
                &s.incoming.cancel,
            )
            .await?;
            self.check_step(s, &temp).await
        }
        .await;
        let record = match made {
            Ok(record) => record,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        if s.incoming.cancel.is_cancelled() {
            let _ = std::fs::remove_file(&temp);
            return Err(Failure::Shutdown);
        }
        std::fs::rename(&temp, file).map_err(|e| output::io_failure(file, &e))?;
        record
            .write(file)
            .map_err(|e| output::io_failure(file, &e))?;
        info!(
            step = s.piece.step.as_str(),
            frames = record.frames,
            secs = record.video_secs,
            "step done"
        );
        Ok(record)
    }

    /// A piece must be as long as its chapters and decode cleanly; the tracks pass as long as the
    /// title, with sound if the title has any.
    async fn check_step(&self, s: &StepJob<'_>, temp: &Path) -> Result<Record, Failure> {
        let video = Video::of(temp).await.map_err(tool_failure)?;
        let expected = match s.piece.step {
            Step::Video { index } => {
                split::range_duration(&s.title.chapter_durations, s.piece.ranges[index as usize])
            }
            _ => s.title.duration,
        };
        if video.frames() == 0
            || video.duration() + self.tolerance.as_secs_f64() < expected.as_secs_f64()
        {
            return Err(Failure::OutputTruncated(format!(
                "the {} step of title {} made {} frames, {:.1} s, where {:.1} s were expected: a truncated encode",
                s.piece.step.as_str(),
                s.title.index,
                video.frames(),
                video.duration(),
                expected.as_secs_f64()
            )));
        }
        match s.piece.step {
            // The join decodes across the seams; the rest of each piece is decoded here, in parallel.
            Step::Video { .. } => split::decode(temp, None).await.map_err(tool_failure)?,
            _ => {
                if s.title.audio_tracks > 0
                    && split::audio_end(temp)
                        .await
                        .map_err(tool_failure)?
                        .is_none()
                {
                    return Err(Failure::OutputTruncated(format!(
                        "title {} has {} audio tracks but its tracks pass has none",
                        s.title.index, s.title.audio_tracks
                    )));
                }
            }
        }
        let (size, sha256) = measure(temp).await?;
        Ok(Record {
            job: s.job.id,
            host: self.host.clone(),
            frames: video.frames(),
            video_secs: video.duration(),
            size,
            sha256,
        })
    }

    /// When every piece and the tracks pass are done, publish the join (its id is fixed, so two
    /// last steps finishing at once publish the same job twice, and the second join finds the output
    /// in place).
    async fn publish_join_if_ready(
        &self,
        s: &StepJob<'_>,
        records: &BTreeMap<String, Record>,
    ) -> Result<(), Failure> {
        let ready = (0..s.piece.ranges.len() as u32)
            .map(rafty_core::split::piece_name)
            .chain([rafty_core::split::TRACKS_NAME.to_owned()])
            .all(|name| records.contains_key(&name));
        if !ready {
            return Ok(());
        }
        let mut join = s.job.clone();
        join.id = Piece::job_id(s.piece.whole, Step::Join);
        join.piece = Some(Piece {
            step: Step::Join,
            ..s.piece.clone()
        });
        let props = s.events.job_properties(&join, 0);
        s.events
            .publish("", WORK_QUEUE, &join.to_json(), props, true)
            .await
            .map_err(|e| Failure::Broker(e.to_string()))?;
        info!(whole = %s.piece.whole, "every piece and the tracks are done; join published");
        Ok(())
    }

    /// Join the pieces and the tracks, check, put in place; when a check fails, encode the title
    /// whole instead (and say so).
    async fn join(
        &self,
        s: &StepJob<'_>,
        place: &Place<'_>,
        template: Sidecar,
    ) -> Result<Outcome, Failure> {
        let cancel = &s.incoming.cancel;
        let mut records = place.records(cancel).await?;
        let where_ = match place {
            Place::Shared { dir } => dir.display().to_string(),
            Place::Store { store, .. } => format!("store {}", store.base()),
        };
        let missing = |what: String| {
            Failure::SourceUnavailable(format!(
                "{what} of split job {} is not in {where_}; its job may still be running",
                s.piece.whole
            ))
        };
        let mut needed = BTreeMap::new();
        for (i, range) in s.piece.ranges.iter().enumerate() {
            let name = rafty_core::split::piece_name(i as u32);
            let record = records
                .remove(&name)
                .ok_or_else(|| missing(format!("piece {i} (chapters {range})")))?;
            needed.insert(name, record);
        }
        let tracks_name = rafty_core::split::TRACKS_NAME.to_owned();
        let tracks = records
            .remove(&tracks_name)
            .ok_or_else(|| missing("the tracks pass".to_owned()))?;
        needed.insert(tracks_name, tracks.clone());
        let brought = place.bring(&needed, cancel).await?;
        let dir = place.work_dir();
        let pieces: Vec<Record> = (0..s.piece.ranges.len() as u32)
            .map(|i| needed[&rafty_core::split::piece_name(i)].clone())
            .collect();
        let files: Vec<PathBuf> = (0..s.piece.ranges.len() as u32)
            .map(|i| split::piece_path(&dir, i))
            .collect();
        let tracks_file = split::tracks_path(&dir);
        let path = match place {
            Place::Shared { .. } => self.output_dir.join(&s.piece.output),
            Place::Store { scratch, .. } => scratch.join("out").join(&s.piece.output),
        };
        let path = path.as_path();
        set_activity(&self.activity, |a| {
            if let Some(a) = a {
                a.stage = Some("join".to_owned());
            }
        });
        let temp = output::temp_path(path, &s.job.id.to_string(), &self.host);
        output::prepare(path.parent().expect("output has a directory"), &temp)?;
        let joined = async {
            if let Err(why) = brought {
                return Err(ToolError::Failed {
                    tool: "rafty-store",
                    path: dir.clone(),
                    message: why,
                });
            }
            split::merge(&files, &tracks_file, &temp).await?;
            let marks = split::chapters(&tracks_file).await?;
            let expected = Expected {
                pieces: &pieces,
                tracks: &tracks,
                chapters: &marks,
                audio: s.title.audio_tracks > 0,
                tracks_file: &tracks_file,
            };
            split::verify(&temp, &expected).await
        }
        .await;
        let (checks, duration, fallback) = match joined {
            Ok((checks, duration)) if checks.iter().all(|c| c.passed) => (checks, duration, None),
            Ok((checks, duration)) => {
                let failed: Vec<String> = checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                (checks, duration, Some(failed.join("; ")))
            }
            Err(e @ ToolError::Missing { .. }) => {
                let _ = std::fs::remove_file(&temp);
                return Err(tool_failure(e));
            }
            Err(e) => (Vec::new(), 0.0, Some(e.to_string())),
        };
        for c in &checks {
            info!(check = %c.name, passed = c.passed, detail = %c.detail, "join check");
        }
        let done = match &fallback {
            None => self
                .put_in_place(&temp, path, template, duration, cancel)
                .await
                .inspect_err(|_| {
                    let _ = std::fs::remove_file(&temp);
                })?,
            Some(why) => {
                let _ = std::fs::remove_file(&temp);
                warn!(reason = %why, "the join failed its checks; encoding the title whole instead");
                let _ = s
                    .events
                    .publish_event(&Event::Started(wire::Started {
                        id: s.job.id,
                        host: self.host.clone(),
                        title: s.title.index,
                        output: path.to_owned(),
                        preset: s.preset.to_owned(),
                    }))
                    .await;
                self.encode(
                    s.job,
                    s.source,
                    s.title,
                    path,
                    s.preset,
                    s.events,
                    template,
                    rafty_core::config::Container::Mkv,
                    cancel,
                )
                .await?
            }
        };
        let event = match place {
            Place::Shared { .. } => output_event(path, &done, false),
            Place::Store { store, .. } => {
                self.send_back(s.job, store, &s.piece.output, path, done, s.events, cancel)
                    .await?
            }
        };
        place.remove(cancel).await;
        info!(output = %event.path.display(), pieces = pieces.len(), fallback = fallback.is_some(), "split title in place");
        if let Some(part) = &s.job.part {
            self.announce_disc_if_complete(s.job, part, s.scratch.is_some(), s.events)
                .await?;
        }
        let frames = pieces.iter().map(|p| p.frames).sum();
        Ok(self.step_done(s, vec![event], false, frames, checks, fallback))
    }

    fn step_done(
        &self,
        s: &StepJob<'_>,
        outputs: Vec<wire::OutputDone>,
        skipped: bool,
        frames: u64,
        checks: Vec<wire::Check>,
        fallback: Option<String>,
    ) -> Outcome {
        let join = s.piece.step == Step::Join;
        Outcome::Done(wire::Done {
            id: s.job.id,
            host: self.host.clone(),
            name: s.job.output.name.clone(),
            disc: s.job.part.as_ref().filter(|_| join).map(|p| p.disc),
            outputs,
            skipped,
            attempt: s.incoming.attempt,
            preset: s.preset.to_owned(),
            handbrake: self.handbrake_version.clone(),
            elapsed_secs: s.started.elapsed().as_secs_f64(),
            finished_at: now(),
            split: Some(wire::SplitDone {
                whole: s.piece.whole,
                step: s.piece.step.as_str().to_owned(),
                frames,
                checks,
                fallback,
            }),
        })
    }
}
