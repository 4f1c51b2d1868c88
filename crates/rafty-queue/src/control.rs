//! Talking to every worker at once, in about a second, without the management plugin.
//!
//! Each worker binds an exclusive, server-named queue to the `rafty.control` fanout exchange and
//! answers requests ([`ControlRequest`]: status, drain, resume) with its [`WorkerStatus`] on the
//! request's `reply_to`. `raftyctl` consumes RabbitMQ's direct reply-to pseudo-queue
//! (`amq.rabbitmq.reply-to`), publishes one request, and collects the answers that arrive within its
//! wait.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use rafty_core::names::{CONTENT_TYPE_JSON, CONTROL_EXCHANGE};
use rafty_core::wire::{ControlRequest, WorkerStatus};

use crate::Error;

/// How a worker answers a control request: its status, or `None` when the request is not for it.
pub type ControlFn = Arc<dyn Fn(&ControlRequest) -> Option<WorkerStatus> + Send + Sync>;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn amqp(what: &'static str) -> impl FnOnce(lapin::Error) -> Error {
    move |source| Error::Amqp { what, source }
}

/// A private, server-named queue (exclusive: gone with the channel) bound to each `(exchange, key)`,
/// consumed without acks: how a worker hears control requests and `raftyctl watch` follows events.
pub async fn listen(
    channel: &Channel,
    bindings: &[(&str, &str)],
) -> Result<lapin::Consumer, Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("declaring a private queue"))?;
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                queue.name().clone(),
                (*exchange).into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp("binding a private queue"))?;
    }
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("consuming a private queue"))
}

/// Answer control requests on `conn` until the connection closes; returns the serving task.
pub async fn serve(
    conn: &Connection,
    handler: ControlFn,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let channel = conn
        .create_channel()
        .await
        .map_err(amqp("opening the control channel"))?;
    let requests = listen(&channel, &[(CONTROL_EXCHANGE, "")]).await?;
    Ok(tokio::spawn(answer(channel, requests, handler)))
}

/// [`serve`], all of it in the returned task, so that a session need not wait for it: declaring
/// the private queue and its binding changes the cluster's metadata, which waits for every node
/// the cluster still counts as up, a frozen one too (until it is declared down, `net_ticktime`).
/// Jobs go on meanwhile; `raftyctl status` sees this worker once the node answers or is dropped.
pub fn serve_in_background(
    conn: Arc<Connection>,
    handler: ControlFn,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = async {
            let channel = conn
                .create_channel()
                .await
                .map_err(amqp("opening the control channel"))?;
            let requests = listen(&channel, &[(CONTROL_EXCHANGE, "")]).await?;
            Ok::<_, Error>((channel, requests))
        };
        match started.await {
            Ok((channel, requests)) => answer(channel, requests, handler).await,
            Err(e) => {
                tracing::warn!(error = %e, "control requests (raftyctl status, drain) will not be answered on this connection")
            }
        }
    })
}

async fn answer(channel: Channel, mut requests: lapin::Consumer, handler: ControlFn) {
    while let Some(Ok(request)) = requests.next().await {
        let Some(reply_to) = request.properties.reply_to().clone() else {
            continue;
        };
        let mut props = BasicProperties::default().with_content_type(CONTENT_TYPE_JSON.into());
        if let Some(id) = request.properties.correlation_id().clone() {
            props = props.with_correlation_id(id);
        }
        let ask = match serde_json::from_slice::<ControlRequest>(&request.data) {
            Ok(ask) => ask,
            Err(e) => {
                tracing::debug!(error = %e, "not a control request this worker knows; ignored");
                continue;
            }
        };
        let Some(reply) = handler(&ask) else { continue };
        let body = serde_json::to_vec(&reply).expect("replies serialize");
        let sent = channel
            .basic_publish(
                "".into(),
                reply_to,
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "control reply not sent");
        }
    }
}

/// Send `request` to every worker; the answers that arrive within `wait` are returned.
pub async fn ask(
    conn: &Connection,
    request: &ControlRequest,
    wait: Duration,
) -> Result<Vec<WorkerStatus>, Error> {
    let channel = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    // Direct reply-to: consume the pseudo-queue (no-ack) before publishing the request.
    let mut replies = channel
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("consuming replies"))?;
    let correlation = uuid::Uuid::new_v4().to_string();
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE_JSON.into())
        .with_reply_to(REPLY_TO.into())
        .with_correlation_id(correlation.as_str().into())
        .with_type(ControlRequest::TYPE.into());
    channel
        .basic_publish(
            CONTROL_EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(request).expect("requests serialize"),
            props,
        )
        .await
        .map_err(amqp("asking the workers"))?;
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(Ok(reply))) => {
                let same = reply
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str())
                    == Some(correlation.as_str());
                if same {
                    match serde_json::from_slice::<WorkerStatus>(&reply.data) {
                        Ok(status) => answers.push(status),
                        Err(e) => {
                            tracing::warn!(error = %e, "a worker answered with a status this version cannot read; skipped")
                        }
                    }
                }
            }
            Ok(Some(Err(e))) => {
                return Err(Error::Amqp {
                    what: "receiving replies",
                    source: e,
                });
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(answers)
}
