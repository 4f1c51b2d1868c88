//! The headers of a copy (a retry rung or a dead letter): the attempt, where the job first arrived,
//! the failure, and nothing the broker's own death records or an oversized producer header would add.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use rafty_core::names::{HEADER_ATTEMPT, HEADER_ORIGINAL_EXCHANGE, HEADER_ORIGINAL_ROUTING_KEY};

use crate::consumer::Incoming;
use crate::publisher::{header_str, set_header};

/// The delivery's properties with the attempt set, the original routing key kept and extra headers.
pub fn copy_properties(
    incoming: &Incoming,
    attempt: u32,
    extra: &[(&str, &str)],
) -> BasicProperties {
    let props = &incoming.delivery().properties;
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    if header_str(Some(&headers), HEADER_ORIGINAL_ROUTING_KEY).is_none() {
        set_header(
            &mut headers,
            HEADER_ORIGINAL_ROUTING_KEY,
            incoming.delivery().routing_key.as_str(),
        );
        set_header(
            &mut headers,
            HEADER_ORIGINAL_EXCHANGE,
            incoming.delivery().exchange.as_str(),
        );
    }
    for (k, v) in extra {
        set_header(&mut headers, k, v);
    }
    // The broker's own death records describe earlier hops; a copy starts a new history.
    let mut clean = FieldTable::default();
    for (k, v) in headers.inner() {
        if !k.as_str().starts_with("x-death")
            && !k.as_str().starts_with("x-first-death")
            && !k.as_str().starts_with("x-last-death")
        {
            clean.insert(k.clone(), v.clone());
        }
    }
    // A content header cannot be split across frames (RabbitMQ's frame_max is 128 KiB): a copy whose
    // headers do not fit would close the connection and loop. Drop the producer's largest headers
    // (never Rafty's) until it fits, and say so.
    if table_bytes(&clean) > MAX_HEADER_BYTES {
        let mut foreign: Vec<(String, usize)> = clean
            .inner()
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-rafty-"))
            .map(|(k, v)| (k.as_str().to_owned(), value_bytes(v)))
            .collect();
        foreign.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
        let mut total = table_bytes(&clean);
        let mut dropped = Vec::new();
        for (k, size) in foreign {
            if total <= MAX_HEADER_BYTES {
                break;
            }
            total -= size + 1 + k.len();
            dropped.push(k);
        }
        let mut kept = FieldTable::default();
        for (k, v) in clean.inner() {
            if !dropped.iter().any(|d| d == k.as_str()) {
                kept.insert(k.clone(), v.clone());
            }
        }
        set_header(
            &mut kept,
            "x-rafty-headers-dropped",
            &bounded(&dropped.join(", "), 1024),
        );
        clean = kept;
    }
    props.clone().with_delivery_mode(2).with_headers(clean)
}

/// Longest reason kept in `x-rafty-error`; the `failed` event and the log carry it whole.
pub const MAX_REASON_BYTES: usize = 4096;
/// Most header bytes a copy may carry, well inside the smallest frame_max brokers negotiate (128 KiB).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// `text` cut to about `max` bytes at character boundaries, keeping its beginning and its end (where
/// a reason that quotes a long value says what is wrong with it).
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut head = max / 2;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - max / 4;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} […{} bytes cut…] {}",
        &text[..head],
        tail - head,
        &text[tail..]
    )
}

/// About how many bytes a header table takes on the wire (an upper bound for the common types).
fn table_bytes(table: &FieldTable) -> usize {
    table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + value_bytes(v))
        .sum()
}

fn value_bytes(v: &AMQPValue) -> usize {
    match v {
        AMQPValue::LongString(s) => 5 + s.as_bytes().len(),
        AMQPValue::ShortString(s) => 2 + s.as_str().len(),
        AMQPValue::FieldTable(t) => 5 + table_bytes(t),
        AMQPValue::FieldArray(a) => 5 + a.as_slice().iter().map(value_bytes).sum::<usize>(),
        AMQPValue::ByteArray(b) => 5 + b.as_slice().len(),
        _ => 9,
    }
}
