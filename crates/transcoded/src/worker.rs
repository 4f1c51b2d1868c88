//! What only a worker adds to the shared consumer loop: its answer to control requests (`raftyctl
//! status`, `drain`, `resume`), the heartbeat that publishes the same status, the check of its own
//! retry rungs, the job span, and metrics counted from how each delivery was settled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use rafty_core::wire::{ControlRequest, Event, WorkerState, WorkerStatus};
use rafty_queue::control::ControlFn;
use rafty_queue::topology::check_retry_rungs;
use rafty_queue::{
    Ensured, Error, Incoming, Outcome, Processor, Publisher, SessionTasks, Settled, Shutdown,
    Topology,
};
use tokio::sync::watch;
use tracing::{Span, info_span};

use crate::transcoder::{Activity, Transcoder};

/// The worker: a [`Transcoder`] for each job, and the worker's side of the control exchange.
pub struct Worker {
    transcoder: Transcoder,
    control: ControlFn,
    heartbeat: Duration,
    topology: Topology,
    app_id: String,
    confirm_timeout: Duration,
    session: crate::transcoder::Session,
}

impl Worker {
    /// A worker that processes jobs with `transcoder`, answers control requests as `host` and
    /// publishes a heartbeat every `heartbeat`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        transcoder: Transcoder,
        status: StatusSource,
        heartbeat: Duration,
        topology: Topology,
        confirm_timeout: Duration,
    ) -> Worker {
        Worker {
            session: transcoder.session(),
            transcoder,
            control: status.control_fn(),
            heartbeat,
            topology,
            app_id: "transcoded".to_owned(),
            confirm_timeout,
        }
    }
}

/// What the worker's status is made of.
#[derive(Clone)]
pub struct StatusSource {
    /// The worker's host.
    pub host: String,
    /// Its HandBrake's version.
    pub handbrake: String,
    /// The job in hand.
    pub activity: Activity,
    /// Its shutdown (a drained worker is `stopping`).
    pub shutdown: Shutdown,
    /// The consumer loop's hold: `true` while drained by request.
    pub hold: Arc<watch::Sender<bool>>,
    /// When it started.
    pub started: Instant,
}

impl StatusSource {
    /// The worker's status now.
    pub fn status(&self) -> WorkerStatus {
        let job = self.activity.lock().ok().and_then(|a| a.clone());
        let state = match (
            &job,
            self.shutdown.drain.is_cancelled(),
            *self.hold.borrow(),
        ) {
            (_, true, _) => WorkerState::Stopping,
            (Some(_), false, true) => WorkerState::Draining,
            (None, false, true) => WorkerState::Drained,
            (Some(_), false, false) => WorkerState::Working,
            (None, false, false) => WorkerState::Idle,
        };
        WorkerStatus {
            host: self.host.clone(),
            app: "transcoded".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            handbrake: self.handbrake.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            state,
            job,
        }
    }

    /// How this worker answers control requests: `status` always; `drain` and `resume` (stop taking
    /// jobs after the current one, and start again) when addressed by its host name or `*`.
    pub fn control_fn(self) -> ControlFn {
        Arc::new(move |request: &ControlRequest| {
            if !request.is_for(&self.host) {
                return None;
            }
            match request {
                ControlRequest::Status => {}
                ControlRequest::Drain { .. } => {
                    self.hold.send_replace(true);
                }
                ControlRequest::Resume { .. } => {
                    self.hold.send_replace(false);
                }
            }
            Some(self.status())
        })
    }
}

impl Processor for Worker {
    async fn connected(
        &self,
        conn: &Arc<Connection>,
        ensured: &Ensured,
    ) -> Result<SessionTasks, Error> {
        if let Ensured::Checked { .. } = ensured {
            check_retry_rungs(conn, &self.topology).await?;
        }
        if let Ok(mut session) = self.session.lock() {
            *session = Some(conn.clone());
        }
        // In the background: on a cluster with a frozen node, its private queue waits for that
        // node, and jobs must not.
        let control = rafty_queue::control::serve_in_background(conn.clone(), self.control.clone());
        // Its own channel: a broker return is matched to whichever confirm completes next on a
        // channel, and must never be taken by a heartbeat instead of a job's copy.
        let beats = Publisher::open(conn, &self.app_id, self.confirm_timeout).await?;
        let heartbeat = tokio::spawn(heartbeat(beats, self.control.clone(), self.heartbeat));
        Ok(vec![control, heartbeat])
    }

    fn span(&self, incoming: &Incoming) -> Span {
        info_span!(
            "job",
            job_id = %incoming.id(),
            attempt = incoming.attempt,
            routing_key = %incoming.routing_key,
            redelivered = incoming.redelivered,
        )
    }

    async fn process(&self, incoming: &Incoming, events: &Publisher) -> Outcome {
        self.transcoder.process(incoming, events).await
    }

    fn settled(&self, _incoming: &Incoming, settled: &Settled) {
        self.transcoder.metrics().job(match settled {
            Settled::Done { skipped: true } => "skipped",
            Settled::Done { skipped: false } | Settled::Consumed => "done",
            Settled::Split => "split",
            Settled::Retried(_) => "retried",
            Settled::Dead => "dead",
            Settled::Requeued => "requeued",
        });
    }
}

/// Publish the worker's status as `rafty.transcode.worker.heartbeat` every `every`.
async fn heartbeat(publisher: Publisher, control: ControlFn, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Some(status) = control(&ControlRequest::Status)
            && let Err(e) = publisher.publish_event(&Event::Heartbeat(status)).await
        {
            tracing::debug!(error = %e, "heartbeat not published");
        }
    }
}
