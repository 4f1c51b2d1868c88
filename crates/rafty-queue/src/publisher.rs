//! Publishing with publisher confirms.
//!
//! A [`Publisher`] opened on a consumer's connection ([`Publisher::open`]) lives and dies with that
//! connection (the consumer loop reconnects). One made with [`Publisher::connect`] owns its
//! connection and fails over: a publish whose connection or confirm was lost is made again through
//! the next node of the [`Broker`] (at least once: a job may then be queued twice, which the
//! worker's idempotence absorbs, docs/design.md "Idempotence").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use rafty_core::Job;
use rafty_core::names::{CONTENT_TYPE_JSON, HEADER_ATTEMPT, JOB_TYPE};
use rafty_core::wire::Event;
use time::OffsetDateTime;
use tracing::warn;

use crate::{Broker, Topology, ensure};

/// Why a publish did not make it.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker negatively acknowledged the message (it could not store it).
    #[error(
        "the broker refused the message to {exchange} [{routing_key}] (nack); it was not stored"
    )]
    Nacked {
        /// Target exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// No queue is bound for the routing key; the broker returned the message.
    #[error(
        "no queue takes messages to {exchange} [{routing_key}]: the broker returned it ({reply})"
    )]
    Returned {
        /// Target exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The broker's reply text.
        reply: String,
    },
    /// No confirm came within the timeout.
    #[error("the broker did not confirm the message to {exchange} [{routing_key}] within {} s", timeout.as_secs())]
    Timeout {
        /// Target exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The channel or connection failed.
    #[error("publishing to {exchange} [{routing_key}] failed: {source}")]
    Amqp {
        /// Target exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// lapin's error.
        source: lapin::Error,
    },
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Arc<RwLock<Channel>>,
    generation: Arc<AtomicU64>,
    app_id: String,
    confirm_timeout: Duration,
    reopen: Option<Arc<Reopen>>,
}

/// What a [`Publisher::connect`] publisher needs to open itself again on another node.
struct Reopen {
    broker: Broker,
    name: String,
    topology: Option<Topology>,
    conn: tokio::sync::Mutex<Arc<Connection>>,
}

async fn confirm_channel(conn: &Connection) -> Result<Channel, crate::Error> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|source| crate::Error::Amqp {
            what: "opening the publish channel",
            source,
        })?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| crate::Error::Amqp {
            what: "enabling publisher confirms",
            source,
        })?;
    Ok(channel)
}

impl Publisher {
    /// Open a confirm-mode channel on `conn`. `app_id` is stamped on every message.
    pub async fn open(
        conn: &Connection,
        app_id: &str,
        confirm_timeout: Duration,
    ) -> Result<Self, crate::Error> {
        Ok(Publisher {
            channel: Arc::new(RwLock::new(confirm_channel(conn).await?)),
            generation: Arc::new(AtomicU64::new(0)),
            app_id: app_id.to_owned(),
            confirm_timeout,
            reopen: None,
        })
    }

    /// Connect through `broker` (connection `name`), make sure of `topology` when given
    /// ([`ensure`]), and open a publisher that owns the connection and fails over to the next node
    /// when a publish loses its connection or its confirm. Also returns the connection, for other
    /// work on it (it is not replaced by a fail-over).
    pub async fn connect(
        broker: &Broker,
        name: &str,
        app_id: &str,
        confirm_timeout: Duration,
        topology: Option<&Topology>,
    ) -> Result<(Publisher, Arc<Connection>), crate::Error> {
        let (conn, channel) = broker
            .open(name, |conn| async move {
                let channel = confirm_channel(&conn).await?;
                if let Some(t) = topology {
                    ensure(&conn, t).await?;
                }
                Ok(channel)
            })
            .await?;
        let publisher = Publisher {
            channel: Arc::new(RwLock::new(channel)),
            generation: Arc::new(AtomicU64::new(0)),
            app_id: app_id.to_owned(),
            confirm_timeout,
            reopen: Some(Arc::new(Reopen {
                broker: broker.clone(),
                name: name.to_owned(),
                topology: topology.cloned(),
                conn: tokio::sync::Mutex::new(conn.clone()),
            })),
        };
        Ok((publisher, conn))
    }

    /// Close the connection a [`Publisher::connect`] publisher owns (nothing for one opened on a
    /// consumer's connection).
    pub async fn close(&self) {
        if let Some(r) = &self.reopen {
            let conn = r.conn.lock().await.clone();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "done".into())).await;
        }
    }

    /// The underlying channel (for declaring the topology).
    pub fn channel(&self) -> Channel {
        self.channel
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Open the publisher again on the next node, unless a clone already did since `seen`.
    async fn reopen(&self, r: &Reopen, seen: u64) -> Result<(), crate::Error> {
        let mut conn = r.conn.lock().await;
        if self.generation.load(Ordering::SeqCst) != seen {
            return Ok(());
        }
        r.broker.lost();
        let (new_conn, channel) = r
            .broker
            .open(&r.name, |c| async move {
                let channel = confirm_channel(&c).await?;
                if let Some(t) = &r.topology {
                    ensure(&c, t).await?;
                }
                Ok(channel)
            })
            .await?;
        *conn = new_conn;
        *self.channel.write().unwrap_or_else(|e| e.into_inner()) = channel;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The properties of a job message (docs/protocol.md, "The job message").
    pub fn job_properties(&self, job: &Job, attempt: u32) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(attempt)),
        );
        BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(2)
            .with_message_id(job.id.to_string().into())
            .with_type(JOB_TYPE.into())
            .with_app_id(self.app_id.as_str().into())
            .with_timestamp(OffsetDateTime::now_utc().unix_timestamp() as u64)
            .with_headers(headers)
    }

    /// Publish a job (persistent, mandatory) and wait for the broker's confirm.
    pub async fn publish_job(
        &self,
        exchange: &str,
        routing_key: &str,
        job: &Job,
    ) -> Result<(), PublishError> {
        let props = self.job_properties(job, 0);
        self.publish(exchange, routing_key, &job.to_json(), props, true)
            .await
    }

    /// Publish an event on its exchange with its routing key, confirmed, not mandatory: nobody has
    /// to listen.
    pub async fn publish_event(&self, event: &Event) -> Result<(), PublishError> {
        let props = BasicProperties::default()
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(2)
            .with_type(event.message_type().into())
            .with_app_id(self.app_id.as_str().into())
            .with_timestamp(OffsetDateTime::now_utc().unix_timestamp() as u64);
        self.publish(
            event.exchange(),
            event.routing_key(),
            &event.to_json(),
            props,
            false,
        )
        .await
    }

    /// Publish anything and wait for the confirm. With `mandatory`, an unroutable message is an error.
    /// A [`Publisher::connect`] publisher whose connection or confirm was lost publishes again
    /// through the next node, once per other node.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let mut again = 0;
        let mut nacked = 0u32;
        let began = std::time::Instant::now();
        loop {
            let seen = self.generation.load(Ordering::SeqCst);
            let channel = self.channel();
            let result = self
                .publish_on(
                    &channel,
                    exchange,
                    routing_key,
                    body,
                    properties.clone(),
                    mandatory,
                )
                .await;
            match (&result, &self.reopen) {
                (Err(e @ (PublishError::Amqp { .. } | PublishError::Timeout { .. })), Some(r))
                    if again + 1 < r.broker.urls().len() =>
                {
                    again += 1;
                    warn!(error = %e, node = %r.broker.current(), "publish lost with its node; publishing again through the next node");
                    if let Err(open) = self.reopen(r, seen).await {
                        warn!(error = %open, "no other node could be used");
                        return result;
                    }
                }
                // On a cluster a nack comes while a queue's leader moves (the message was not
                // stored): the same publish a moment later goes to the new leader. A channel that
                // keeps being refused is left for a new one through the next node.
                (Err(e @ PublishError::Nacked { .. }), Some(r))
                    if r.broker.urls().len() > 1 && began.elapsed() < self.confirm_timeout =>
                {
                    nacked += 1;
                    warn!(error = %e, attempt = nacked, "publish nacked while the cluster moves a queue; publishing again");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(nacked.min(4)))).await;
                    if nacked % 2 == 0
                        && let Err(open) = self.reopen(r, seen).await
                    {
                        warn!(error = %open, "no other node could be used");
                    }
                }
                _ => return result,
            }
        }
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let amqp = |source| PublishError::Amqp {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            source,
        };
        let confirm = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        immediate: false,
                    },
                    body,
                    properties,
                )
                .await
                .map_err(amqp)?
                .await
                .map_err(amqp)
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                timeout: self.confirm_timeout,
            })??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Returned {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                    reply: format!("{} {}", returned.reply_code, returned.reply_text.as_str()),
                })
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
        }
    }
}

/// A header value as a string, for copying and reading headers.
pub fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// A header value as an integer, accepting every AMQP integer type (clients differ).
pub fn header_int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    match headers?.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
        _ => None,
    }
}

/// Set a string header.
pub fn set_header(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
}
