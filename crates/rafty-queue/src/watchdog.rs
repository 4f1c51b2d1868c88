//! Watching a delivery in hand: the broker may take it back (a lost connection or channel, missed
//! heartbeats, `consumer_timeout`), and then the work on it must stop at once, because the broker
//! hands it to another consumer.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Connection;
use lapin::options::{BasicCancelOptions, BasicNackOptions};

/// Completes, saying why, when the delivery being worked on can no longer be acked here because the
/// broker has taken it back: lapin noticed a dead peer by missed heartbeats, the connection or channel
/// closed, or the broker closed the channel of a delivery held past `consumer_timeout`.
pub async fn taken_back(
    conn: &Connection,
    channel: &lapin::Channel,
    consumer: &mut lapin::Consumer,
) -> String {
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    // Prefetch 1 forbids a second delivery; hand it back rather than hold it.
                    let _ = delivery
                        .acker
                        .nack(BasicNackOptions { multiple: false, requeue: true })
                        .await;
                }
                Some(Err(e)) => return taken_back_reason(&e.to_string()),
                None => return "the broker cancelled this worker's consumer".to_owned(),
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if !conn.status().connected() || !channel.status().connected() {
                    return "the connection to the broker was lost (network, missed heartbeats or a broker restart)".to_owned();
                }
            }
        }
    }
}

/// The broker's reason, with what to do when it is the consumer timeout.
fn taken_back_reason(error: &str) -> String {
    if error.contains("delivery acknowledgement") && error.contains("timed out") {
        format!(
            "{error}: the job ran longer than the broker's consumer_timeout; raise consumer_timeout in the \
             broker's rabbitmq.conf above the longest encode (see config/rabbitmq.conf)"
        )
    } else {
        error.to_owned()
    }
}

/// Cancel the consumer and hand back anything the broker sent before the cancel arrived.
pub async fn stop_consuming(channel: &lapin::Channel, tag: &str, mut consumer: lapin::Consumer) {
    let _ = channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
    {
        let _ = delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await;
    }
}
