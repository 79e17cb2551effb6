//! Redrive of a dead-letter queue: the pure state machine.
//!
//! A redrive moves the DLQ's messages back to the source queue with one dynamic shovel running
//! inside the broker: `ack-mode: on-confirm` (a message leaves the DLQ only after the source
//! queue confirmed it), `src-delete-after: queue-length` (the shovel moves what the DLQ held
//! when it started, then deletes itself). The status is the durable record:
//!
//! ```text
//!   new requestId ──► Starting ──(shovel created)──► Running ──(shovel gone)──► Succeeded
//!                        │                              └──(shovel terminated)──► Failed
//!                        └──(found at start-up, no shovel)──► Interrupted
//! ```
//!
//! `Starting` is written before the shovel is created, so every request id gets at most one
//! shovel: a `Starting` found by a later reconcile (the operator stopped between the two
//! writes) becomes `Running` when the shovel exists and `Interrupted` when it does not. It is
//! never created a second time; the messages stay in the DLQ and a new request id moves them.

use serde_json::{Value, json};

use crate::api::RedriveStatus;

pub const STARTING: &str = "Starting";
pub const RUNNING: &str = "Running";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
pub const INTERRUPTED: &str = "Interrupted";

/// What the reconcile has to do for the redrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No request, or the request is finished.
    Idle,
    /// A new request: record `Starting`, then create the shovel.
    Start { request_id: String, shovel: String },
    /// A request in progress (or possibly started): look at the shovel.
    Check { shovel: String, was_starting: bool },
}

/// Shovel name for a request: unique per ScaledConsumer and request id.
pub fn shovel_name(namespace: &str, name: &str, request_id: &str) -> String {
    format!("nerite-redrive.{namespace}.{name}.{request_id}")
}

/// Decide from the requested id and the recorded status.
pub fn step(
    request: Option<&str>,
    recorded: Option<&RedriveStatus>,
    namespace: &str,
    name: &str,
) -> Step {
    let Some(id) = request else {
        return match recorded {
            Some(r) if r.phase == RUNNING || r.phase == STARTING => Step::Check {
                shovel: r.shovel.clone().unwrap_or_default(),
                was_starting: r.phase == STARTING,
            },
            _ => Step::Idle,
        };
    };
    match recorded {
        Some(r) if r.request_id == id => match r.phase.as_str() {
            STARTING | RUNNING => Step::Check {
                shovel: r
                    .shovel
                    .clone()
                    .unwrap_or_else(|| shovel_name(namespace, name, id)),
                was_starting: r.phase == STARTING,
            },
            _ => Step::Idle,
        },
        // A different request is still moving messages: let it finish first.
        Some(r) if r.phase == RUNNING || r.phase == STARTING => Step::Check {
            shovel: r.shovel.clone().unwrap_or_default(),
            was_starting: r.phase == STARTING,
        },
        _ => Step::Start {
            request_id: id.to_owned(),
            shovel: shovel_name(namespace, name, id),
        },
    }
}

/// The shovel definition.
pub fn shovel_definition(vhost: &str, dlq: &str, source: &str, max_in_flight: u16) -> Value {
    // `amqp:///<vhost>`: a direct connection to the local node, in that vhost.
    let uri = format!("amqp:///{}", super::encode_segment(vhost));
    json!({
        "src-protocol": "amqp091",
        "src-uri": uri,
        "src-queue": dlq,
        "src-delete-after": "queue-length",
        "src-prefetch-count": max_in_flight,
        "dest-protocol": "amqp091",
        "dest-uri": uri,
        "dest-queue": source,
        "ack-mode": "on-confirm",
        "add-forward-headers": false,
    })
}

/// The status recorded before the shovel is created.
pub fn starting(
    request_id: &str,
    shovel: &str,
    dlq_depth: Option<i64>,
    now: &str,
) -> RedriveStatus {
    RedriveStatus {
        request_id: request_id.to_owned(),
        phase: STARTING.into(),
        shovel: Some(shovel.to_owned()),
        started_at: Some(now.to_owned()),
        dlq_depth_at_start: dlq_depth,
        message: Some("creating the shovel".into()),
        ..RedriveStatus::default()
    }
}

/// What the broker says about the shovel.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    Absent,
    Running,
    Terminated(String),
}

/// Fold an observation of the shovel into the recorded status.
pub fn advance(
    recorded: &RedriveStatus,
    seen: &Seen,
    dlq_depth: Option<i64>,
    now: &str,
) -> RedriveStatus {
    let mut r = recorded.clone();
    match seen {
        Seen::Running => {
            r.phase = RUNNING.into();
            r.message = Some(match dlq_depth {
                Some(d) => format!("moving: {d} messages left in the dead-letter queue"),
                None => "moving".into(),
            });
        }
        Seen::Absent if recorded.phase == STARTING => {
            r.phase = INTERRUPTED.into();
            r.finished_at = Some(now.to_owned());
            r.dlq_depth_at_end = dlq_depth;
            r.message = Some(format!(
                "the operator stopped while starting this redrive and no shovel exists; nothing \
                 was moved by it (the dead-letter queue holds {}); set a new requestId to move them",
                dlq_depth.map_or("an unknown number of".into(), |d| d.to_string())
            ));
        }
        Seen::Absent => {
            // The shovel deletes itself after moving what the DLQ held when it started.
            r.phase = SUCCEEDED.into();
            r.finished_at = Some(now.to_owned());
            r.dlq_depth_at_end = dlq_depth;
            r.moved = r.dlq_depth_at_start;
            r.message = Some(format!(
                "moved {} messages back to the source queue; {} in the dead-letter queue now",
                r.moved.map_or("the".into(), |m| m.to_string()),
                dlq_depth.map_or("unknown".into(), |d| d.to_string())
            ));
        }
        Seen::Terminated(reason) => {
            r.phase = FAILED.into();
            r.finished_at = Some(now.to_owned());
            r.dlq_depth_at_end = dlq_depth;
            r.moved = match (r.dlq_depth_at_start, dlq_depth) {
                (Some(start), Some(end)) => Some((start - end).max(0)),
                _ => None,
            };
            r.message = Some(format!(
                "the shovel stopped: {reason}; unmoved messages stay in the dead-letter queue"
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(id: &str, phase: &str) -> RedriveStatus {
        RedriveStatus {
            request_id: id.into(),
            phase: phase.into(),
            shovel: Some(shovel_name("ns", "sc", id)),
            dlq_depth_at_start: Some(1000),
            ..RedriveStatus::default()
        }
    }

    #[test]
    fn a_new_id_starts_once() {
        assert_eq!(
            step(Some("r1"), None, "ns", "sc"),
            Step::Start {
                request_id: "r1".into(),
                shovel: "nerite-redrive.ns.sc.r1".into()
            }
        );
        for phase in [SUCCEEDED, FAILED, INTERRUPTED] {
            assert_eq!(
                step(Some("r1"), Some(&recorded("r1", phase)), "ns", "sc"),
                Step::Idle
            );
            assert!(matches!(
                step(Some("r2"), Some(&recorded("r1", phase)), "ns", "sc"),
                Step::Start { .. }
            ));
        }
    }

    #[test]
    fn a_started_id_is_checked_never_restarted() {
        assert_eq!(
            step(Some("r1"), Some(&recorded("r1", STARTING)), "ns", "sc"),
            Step::Check {
                shovel: "nerite-redrive.ns.sc.r1".into(),
                was_starting: true
            }
        );
        assert!(matches!(
            step(Some("r1"), Some(&recorded("r1", RUNNING)), "ns", "sc"),
            Step::Check {
                was_starting: false,
                ..
            }
        ));
        // A new id waits for the running one.
        assert!(matches!(
            step(Some("r2"), Some(&recorded("r1", RUNNING)), "ns", "sc"),
            Step::Check { .. }
        ));
        // Removing the request does not orphan a running shovel.
        assert!(matches!(
            step(None, Some(&recorded("r1", RUNNING)), "ns", "sc"),
            Step::Check { .. }
        ));
        assert_eq!(step(None, None, "ns", "sc"), Step::Idle);
    }

    #[test]
    fn outcomes() {
        let now = "2024-01-01T00:00:00Z";
        let done = advance(&recorded("r1", RUNNING), &Seen::Absent, Some(0), now);
        assert_eq!(done.phase, SUCCEEDED);
        assert_eq!(done.moved, Some(1000));
        let lost_start = advance(&recorded("r1", STARTING), &Seen::Absent, Some(1000), now);
        assert_eq!(lost_start.phase, INTERRUPTED);
        assert_eq!(lost_start.moved, None);
        let resumed = advance(&recorded("r1", STARTING), &Seen::Running, Some(400), now);
        assert_eq!(resumed.phase, RUNNING);
        let failed = advance(
            &recorded("r1", RUNNING),
            &Seen::Terminated("dest queue gone".into()),
            Some(300),
            now,
        );
        assert_eq!(failed.phase, FAILED);
        assert_eq!(failed.moved, Some(700));
    }

    #[test]
    fn shovel_confirms_and_stops_after_the_queue_length() {
        let d = shovel_definition("/", "orders.dlq", "orders", 50);
        assert_eq!(d["ack-mode"], "on-confirm");
        assert_eq!(d["src-delete-after"], "queue-length");
        assert_eq!(d["src-uri"], "amqp:///%2F");
        assert_eq!(d["dest-queue"], "orders");
        assert_eq!(d["src-prefetch-count"], 50);
    }
}
