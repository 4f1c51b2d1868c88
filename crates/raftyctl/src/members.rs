//! Each queue's members on a RabbitMQ cluster, from the management API (`[broker] management-url`),
//! for `raftyctl setup` and `status`: AMQP itself does not tell a client where a queue's replicas
//! are.

use std::time::Duration;

use base64::Engine;
use rafty_core::config::{mask_url, url_decode};
use serde::{Deserialize, Serialize};

/// One queue's replicas.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueMembers {
    /// The queue.
    pub name: String,
    /// The nodes holding a replica.
    pub members: Vec<String>,
    /// The node holding the leader, if the API says.
    pub leader: Option<String>,
}

/// The cluster's nodes and the members of the queues asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Members {
    /// Every node of the cluster (running or not).
    pub nodes: Vec<String>,
    /// The queues, in the order asked.
    pub queues: Vec<QueueMembers>,
}

#[derive(Deserialize)]
struct Node {
    name: String,
}

/// Ask the management API at `api` (`http://user:password@host:15672`) for the nodes and for the
/// members of `names` in `vhost`.
pub fn fetch(api: &str, vhost: &str, names: &[String]) -> Result<Members, String> {
    let shown = mask_url(api);
    let (base, auth) = split_credentials(api)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| -> Result<String, String> {
        let mut req = agent.get(format!("{base}{path}"));
        if let Some(auth) = &auth {
            req = req.header("Authorization", auth);
        }
        let mut resp = req
            .call()
            .map_err(|e| format!("the management API at {shown} did not answer: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| format!("the management API at {shown}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "the management API at {shown} answered {status} for {path} (check [broker] management-url and the user's management tag)"
            ));
        }
        Ok(body)
    };
    let nodes: Vec<Node> = serde_json::from_str(&get("/api/nodes?columns=name")?)
        .map_err(|e| format!("the management API at {shown}: unexpected /api/nodes: {e}"))?;
    let vhost_enc = percent_encode(vhost);
    let mut queues = Vec::new();
    for name in names {
        let body = get(&format!("/api/queues/{vhost_enc}/{}", percent_encode(name)))?;
        // Read as a value: 3.10 repeats some keys (`members`) in a quorum queue's object.
        let q: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("the management API at {shown}: unexpected queue {name}: {e}"))?;
        let text = |key: &str| q[key].as_str().map(str::to_owned);
        let mut members: Vec<String> = q["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if members.is_empty() {
            members.extend(text("node"));
        }
        queues.push(QueueMembers {
            name: text("name").unwrap_or_else(|| name.clone()),
            members,
            leader: text("leader").or_else(|| text("node")),
        });
    }
    Ok(Members {
        nodes: nodes.into_iter().map(|n| n.name).collect(),
        queues,
    })
}

/// One warning per queue with fewer replicas than the cluster has nodes, with the command that
/// grows it onto each missing node.
pub fn warnings(m: &Members) -> Vec<String> {
    let mut out = Vec::new();
    for q in &m.queues {
        let missing: Vec<&String> = m.nodes.iter().filter(|n| !q.members.contains(n)).collect();
        if missing.is_empty() {
            continue;
        }
        let commands: Vec<String> = missing
            .iter()
            .map(|n| format!("rabbitmq-queues grow {n} all"))
            .collect();
        out.push(format!(
            "warning: {} has {} of the cluster's {} nodes as replicas (missing {}); grow it, on a broker host: {}",
            q.name,
            q.members.len(),
            m.nodes.len(),
            missing
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            commands.join("; ")
        ));
    }
    out
}

/// Print the members table and the warnings (to stderr).
pub fn print(m: &Members) {
    println!("{:<32} {:<12} MEMBERS", "QUEUE", "REPLICAS");
    for q in &m.queues {
        let members: Vec<String> = q
            .members
            .iter()
            .map(|n| {
                if q.leader.as_deref() == Some(n) {
                    format!("{n} (leader)")
                } else {
                    n.clone()
                }
            })
            .collect();
        println!(
            "{:<32} {:<12} {}",
            q.name,
            format!("{}/{}", q.members.len(), m.nodes.len()),
            members.join(", ")
        );
    }
    for w in warnings(m) {
        eprintln!("{w}");
    }
}

/// The vhost of an AMQP URL (`/` when the path is empty), percent-decoded.
pub fn vhost_of(amqp_url: &str) -> String {
    let rest = amqp_url.split_once("://").map_or(amqp_url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let path = rest
        .split_once('/')
        .map_or("", |(_, p)| p)
        .split('?')
        .next()
        .unwrap_or("");
    if path.is_empty() {
        "/".to_owned()
    } else {
        url_decode(path)
    }
}

fn split_credentials(api: &str) -> Result<(String, Option<String>), String> {
    let Some((scheme, rest)) = api.split_once("://") else {
        return Err(format!(
            "[broker] management-url {}: write http://user:password@host:15672",
            mask_url(api)
        ));
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let token = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                url_decode(user),
                url_decode(pass)
            ));
            Ok((format!("{scheme}://{host}"), Some(format!("Basic {token}"))))
        }
        None => Ok((format!("{scheme}://{rest}"), None)),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_and_credentials_are_read_from_urls() {
        assert_eq!(vhost_of("amqp://u:p@h:5672/%2f?heartbeat=5"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672/"), "/");
        assert_eq!(vhost_of("amqp://u:p@h:5672/cl-0?x=1"), "cl-0");
        let (base, auth) = split_credentials("http://guest:guest@127.0.0.1:15672/").unwrap();
        assert_eq!(base, "http://127.0.0.1:15672");
        assert_eq!(auth.as_deref(), Some("Basic Z3Vlc3Q6Z3Vlc3Q="));
    }

    #[test]
    fn a_queue_short_of_replicas_is_warned_about_with_the_grow_command() {
        let m = Members {
            nodes: vec!["a@x".into(), "b@x".into(), "c@x".into()],
            queues: vec![
                QueueMembers {
                    name: "rafty.transcode".into(),
                    members: vec!["a@x".into(), "b@x".into(), "c@x".into()],
                    leader: Some("a@x".into()),
                },
                QueueMembers {
                    name: "rafty.transcode.dead".into(),
                    members: vec!["a@x".into()],
                    leader: Some("a@x".into()),
                },
            ],
        };
        let w = warnings(&m);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("rafty.transcode.dead has 1 of the cluster's 3 nodes"));
        assert!(w[0].contains("rabbitmq-queues grow b@x all; rabbitmq-queues grow c@x all"));
    }
}
