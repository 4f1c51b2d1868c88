//! A small synchronous AMQP client for assertions, and for publishing what third-party clients would.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rafty_core::names::EVENTS_EXCHANGE;
use rafty_core::wire::Event;
use serde_json::Value;

/// The properties of a job message as docs/protocol.md specifies them, for publishing like a client would.
pub fn job_properties(id: &str, kind: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-rafty-attempt".into(), AMQPValue::LongLongInt(0));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_type(kind.into())
        .with_app_id("third-party-test".into())
        .with_headers(headers)
}

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct Message {
    /// The routing key it was delivered with.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// Headers, every value shown as a string.
    pub headers: BTreeMap<String, String>,
    /// The `message_id` property.
    pub message_id: Option<String>,
}

impl Message {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("message body is JSON")
    }
    /// A header, or "" when absent.
    pub fn header(&self, key: &str) -> &str {
        self.headers.get(key).map(String::as_str).unwrap_or("")
    }
}

/// A connection with a confirming channel, driven by its own small runtime.
pub struct Amqp {
    rt: tokio::runtime::Runtime,
    _conn: Connection,
    ch: Channel,
}

/// An exclusive queue bound to every worker event (`rafty.transcode.#`), created before the action.
pub struct EventTap {
    queue: String,
    /// Every event taken so far: (routing key, body).
    pub seen: RefCell<Vec<(String, Value)>>,
}

fn show(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

impl Amqp {
    /// Connect to `url`.
    pub fn connect(url: &str) -> Amqp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (conn, ch) = rt.block_on(async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            let ch = conn.create_channel().await.expect("channel");
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirms");
            (conn, ch)
        });
        Amqp {
            rt,
            _conn: conn,
            ch,
        }
    }

    /// Take one message from `queue` (acked), if there is one.
    pub fn get(&self, queue: &str) -> Option<Message> {
        self.rt.block_on(async {
            let got = self
                .ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))?;
            let d = &got.delivery;
            let headers = d
                .properties
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), show(v)))
                        .collect()
                })
                .unwrap_or_default();
            let msg = Message {
                routing_key: d.routing_key.as_str().to_owned(),
                body: d.data.clone(),
                headers,
                message_id: d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.as_str().to_owned()),
            };
            d.acker.ack(BasicAckOptions::default()).await.expect("ack");
            Some(msg)
        })
    }

    /// Wait up to `timeout` for a message on `queue`.
    pub fn wait_get(&self, queue: &str, timeout: Duration) -> Message {
        crate::wait_for(&format!("a message on {queue}"), timeout, || {
            self.get(queue)
        })
    }

    /// Messages ready in `queue` and its consumers (passive declare).
    pub fn counts(&self, queue: &str) -> (u32, u32) {
        self.rt.block_on(async {
            let q = self
                .ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("passive declare {queue}: {e}"));
            (q.message_count(), q.consumer_count())
        })
    }

    /// Publish and wait for the confirm; panics if the broker does not take it.
    pub fn publish(&self, exchange: &str, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.rt.block_on(async {
            let c = self
                .ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(
                c.is_ack() && c.take_message().is_none(),
                "the broker did not take the message"
            );
        })
    }

    /// Bind a fresh exclusive queue to every worker event.
    pub fn tap(&self) -> EventTap {
        self.tap_on(EVENTS_EXCHANGE, "rafty.transcode.#")
    }

    /// Bind a fresh exclusive queue to `exchange` (a topic exchange, declared if missing) with `key`.
    pub fn tap_on(&self, exchange: &str, key: &str) -> EventTap {
        self.rt.block_on(async {
            let q = self
                .ch
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
                .expect("declare tap");
            let name = q.name().as_str().to_owned();
            // The exchange may not exist yet if no Rafty program ran in this vhost.
            let declare = self.ch.exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            );
            declare.await.expect("declare events exchange");
            self.ch
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind tap");
            EventTap {
                queue: name,
                seen: RefCell::new(Vec::new()),
            }
        })
    }

    /// Wait for an event whose routing key ends with `.{kind}` and whose body satisfies `pred`.
    pub fn wait_event(
        &self,
        tap: &EventTap,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_keyed(tap, kind, timeout, |_, v| pred(v)).1
    }

    /// Wait for an event whose routing key ends with `.{kind}` and whose typed form satisfies `pred`.
    pub fn wait_typed(
        &self,
        tap: &EventTap,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let decode = |k: &str, v: &Value| Event::decode(k, v.to_string().as_bytes()).ok();
        let (k, v) = self.wait_keyed(tap, kind, timeout, |k, v| {
            decode(k, v).is_some_and(|e| pred(&e))
        });
        decode(&k, &v).expect("decoded while waiting")
    }

    fn wait_keyed(
        &self,
        tap: &EventTap,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> (String, Value) {
        let suffix = format!(".{kind}");
        if let Some(found) = tap
            .seen
            .borrow()
            .iter()
            .find(|(k, v)| k.ends_with(&suffix) && pred(k, v))
        {
            return found.clone();
        }
        let start = Instant::now();
        loop {
            while let Some(m) = self.get(&tap.queue) {
                let v = typed(&m);
                tap.seen
                    .borrow_mut()
                    .push((m.routing_key.clone(), v.clone()));
                if m.routing_key.ends_with(&suffix) && pred(&m.routing_key, &v) {
                    return (m.routing_key, v);
                }
            }
            assert!(
                start.elapsed() < timeout,
                "no {kind} event within {timeout:?}; saw: {:?}",
                tap.seen
                    .borrow()
                    .iter()
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Take every event currently in the tap.
    pub fn drain_events(&self, tap: &EventTap) -> Vec<(String, Value)> {
        while let Some(m) = self.get(&tap.queue) {
            let v = typed(&m);
            tap.seen.borrow_mut().push((m.routing_key.clone(), v));
        }
        tap.seen.borrow().clone()
    }
}

/// A tapped message's body, after checking that an event Rafty publishes parses into its type in
/// `rafty_core::wire` (so every acceptance test that taps events checks the wire contract too).
fn typed(m: &Message) -> Value {
    if Event::ROUTING_KEYS.contains(&m.routing_key.as_str())
        && let Err(e) = Event::decode(&m.routing_key, &m.body)
    {
        panic!("an event on the wire does not parse into its type: {e}");
    }
    m.json()
}
