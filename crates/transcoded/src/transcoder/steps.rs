//! A title split by chapters, on the worker's side (docs/split.md): the split itself, each piece,
//! the tracks pass and the join. The plan, the files and the checks are in [`crate::split`].

use std::path::Path;
use std::time::{Duration, Instant};

use rafty_core::job::{Piece, Split, Step};
use rafty_core::names::WORK_QUEUE;
use rafty_core::wire::{self, ControlRequest, Event, WorkerState};
use rafty_core::{Failure, Job, TitleSelection};
use rafty_handbrake::Title;
use rafty_queue::{Incoming, Outcome, Publisher};
use tracing::{info, warn};

use super::{Transcoder, now, output_event, set_activity, tracks_for};
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
    pub remote: bool,
    pub incoming: &'a Incoming,
    pub events: &'a Publisher,
    pub started: Instant,
}

/// Remove a split title's directory, and `.rafty-split` with it when no other split is under way.
fn remove_split_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
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
        remote: bool,
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
        if remote {
            info!(
                "this worker fetched the image from the store; a split title's pieces need workers that share the output directory, so it is encoded whole"
            );
            return Ok(None);
        }
        if self.container != rafty_core::config::Container::Mkv {
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
        let path = self.output_dir.join(file);
        if let Existing::Done(_) = output::existing(
            &path,
            &self.sidecar_for(job, title, preset, file, source_size),
        )? {
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

    /// Do one step of a split title.
    pub(super) async fn step(&self, s: StepJob<'_>) -> Result<Outcome, Failure> {
        if s.remote {
            return Err(Failure::SourceUnavailable(format!(
                "{} cannot be read here: the steps of a split title need workers that share the source and the output directory (docs/split.md)",
                s.job.source.path.display()
            )));
        }
        let path = self.output_dir.join(&s.piece.output);
        // The output stands for the job that was submitted, as an unsplit one's does.
        let template = Sidecar {
            job_id: s.piece.whole.to_string(),
            ..self.sidecar_for(s.job, s.title, s.preset, &s.piece.output, s.source_size)
        };
        let dir = split::dir(&self.output_dir, s.piece.whole);
        if let Existing::Done(found) = output::existing(&path, &template)? {
            info!(output = %path.display(), step = s.piece.step.as_str(), "the split title is already in place; nothing to do");
            remove_split_dir(&dir);
            return Ok(self.step_done(
                &s,
                vec![output_event(&path, &found, true)],
                true,
                0,
                Vec::new(),
                None,
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| output::io_failure(&dir, &e))?;
        let (file, extra, tracks) = match s.piece.step {
            Step::Join => return self.join(&s, &path, template, &dir).await,
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
        let (record, skipped) = match Record::read(&file).filter(|_| file.exists()) {
            Some(record) => {
                info!(file = %file.display(), "this step is already done");
                (record, true)
            }
            None => (self.make_step(&s, &file, &extra, &tracks).await?, false),
        };
        self.publish_join_if_ready(&s, &dir).await?;
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
        Ok(Record {
            job: s.job.id,
            host: self.host.clone(),
            frames: video.frames(),
            video_secs: video.duration(),
        })
    }

    /// When every piece and the tracks pass are done, publish the join (its id is fixed, so two
    /// last steps finishing at once publish the same job twice, and the second join finds the output
    /// in place).
    async fn publish_join_if_ready(&self, s: &StepJob<'_>, dir: &Path) -> Result<(), Failure> {
        let pieces = (0..s.piece.ranges.len() as u32).map(|i| split::piece_path(dir, i));
        let ready = pieces
            .chain([split::tracks_path(dir)])
            .all(|f| f.exists() && Record::read(&f).is_some());
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
        path: &Path,
        template: Sidecar,
        dir: &Path,
    ) -> Result<Outcome, Failure> {
        let mut pieces = Vec::new();
        let mut files = Vec::new();
        for (i, range) in s.piece.ranges.iter().enumerate() {
            let file = split::piece_path(dir, i as u32);
            match Record::read(&file).filter(|_| file.exists()) {
                Some(r) => pieces.push(r),
                None => {
                    return Err(Failure::SourceUnavailable(format!(
                        "piece {i} (chapters {range}) of split job {} is not in {}; its job may still be running",
                        s.piece.whole,
                        dir.display()
                    )));
                }
            }
            files.push(file);
        }
        let tracks_file = split::tracks_path(dir);
        let tracks = Record::read(&tracks_file)
            .filter(|_| tracks_file.exists())
            .ok_or_else(|| {
                Failure::SourceUnavailable(format!(
                    "the tracks pass of split job {} is not in {}; its job may still be running",
                    s.piece.whole,
                    dir.display()
                ))
            })?;
        set_activity(&self.activity, |a| {
            if let Some(a) = a {
                a.stage = Some("join".to_owned());
            }
        });
        let temp = output::temp_path(path, &s.job.id.to_string(), &self.host);
        output::prepare(path.parent().expect("output has a directory"), &temp)?;
        let joined = async {
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
                .put_in_place(&temp, path, template, duration, &s.incoming.cancel)
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
                    self.container,
                    &s.incoming.cancel,
                )
                .await?
            }
        };
        remove_split_dir(dir);
        info!(output = %path.display(), pieces = pieces.len(), fallback = fallback.is_some(), "split title in place");
        if let Some(part) = &s.job.part {
            self.announce_disc_if_complete(s.job, part, false, s.events)
                .await?;
        }
        let frames = pieces.iter().map(|p| p.frames).sum();
        Ok(self.step_done(
            s,
            vec![output_event(path, &done, false)],
            false,
            frames,
            checks,
            fallback,
        ))
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
