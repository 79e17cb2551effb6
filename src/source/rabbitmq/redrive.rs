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
//!
//! With `maxMessagesPerSecond` the move is *paced* ([`paced`]): batches of `rate × poll
//! interval` messages, one shovel each (`src-delete-after: <n>`, so it moves exactly n and
//! deletes itself), named `<shovel>.b<k>`. Batch k+1 starts once batch k's shovel is gone and
//! no sooner than n / rate seconds after batch k started. Each batch is recorded (`Starting`,
//! its number and size) before its shovel is created, so a batch is never created twice; a
//! batch found `Starting` without a shovel after a restart ends the request `Interrupted`,
//! with the completed batches counted and the uncertain one named. A paced move ends when it
//! has moved what the DLQ held at the start, or the DLQ is empty.

use std::time::Duration;

use jiff::Timestamp;
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

/// The shovel definition: it moves what the DLQ holds when it starts (`count: None`), or
/// exactly `count` messages (one batch of a paced redrive), then deletes itself.
pub fn shovel_definition(
    vhost: &str,
    dlq: &str,
    source: &str,
    max_in_flight: u16,
    count: Option<i64>,
) -> Value {
    // `amqp:///<vhost>`: a direct connection to the local node, in that vhost.
    let uri = format!("amqp:///{}", super::encode_segment(vhost));
    let delete_after = match count {
        Some(n) => json!(n.max(1)),
        None => json!("queue-length"),
    };
    json!({
        "src-protocol": "amqp091",
        "src-uri": uri,
        "src-queue": dlq,
        "src-delete-after": delete_after,
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

/// Batches of a paced redrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    pub per_second: u32,
    /// Messages per batch: `per_second × poll interval`, at least 1.
    pub batch: i64,
}

impl Pace {
    pub fn new(per_second: u32, poll: Duration) -> Pace {
        let per_second = per_second.max(1);
        // At most 100,000/s × 1 h: far inside i64.
        let batch = (f64::from(per_second) * poll.as_secs_f64()).ceil().max(1.0) as i64;
        Pace { per_second, batch }
    }
}

/// Shovel name of batch `k`.
pub fn batch_shovel(base: &str, k: i64) -> String {
    format!("{base}.b{k}")
}

/// The status recorded before a paced redrive's first batch; `size` from [`first_batch`].
pub fn starting_paced(
    request_id: &str,
    base: &str,
    dlq_depth: i64,
    size: i64,
    now: &str,
) -> RedriveStatus {
    RedriveStatus {
        request_id: request_id.to_owned(),
        phase: STARTING.into(),
        shovel: Some(batch_shovel(base, 1)),
        started_at: Some(now.to_owned()),
        dlq_depth_at_start: Some(dlq_depth),
        moved: Some(0),
        batch: Some(1),
        batch_size: Some(size),
        batch_started_at: Some(now.to_owned()),
        message: Some(format!("creating the shovel of batch 1 ({size} messages)")),
        ..RedriveStatus::default()
    }
}

/// Size of a paced redrive's first batch for a DLQ of `depth` messages (0: nothing to do).
pub fn first_batch(depth: i64, pace: Pace) -> i64 {
    depth.clamp(0, pace.batch)
}

/// What a paced redrive does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Paced {
    /// Record this status; `delete` names a shovel to remove first.
    Stay {
        status: RedriveStatus,
        delete: Option<String>,
    },
    /// Record `record` (the next batch, `Starting`), then create `shovel` moving `size`.
    Batch {
        record: RedriveStatus,
        shovel: String,
        size: i64,
    },
}

/// The next step of a paced redrive (`recorded.batch` is set), from what the broker says
/// about the current batch's shovel (`seen`; ignored between batches, when
/// `recorded.shovel` is None) and the DLQ's depth (ready + unacknowledged). `base` is the
/// request's shovel name ([`shovel_name`]); batch k's shovel is [`batch_shovel`]`(base, k)`.
pub fn paced(
    recorded: &RedriveStatus,
    base: &str,
    seen: &Seen,
    dlq_depth: Option<i64>,
    now: Timestamp,
    pace: Pace,
) -> Paced {
    let now_text = now.to_string();
    let stay = |status: RedriveStatus| Paced::Stay {
        status,
        delete: None,
    };
    let mut r = recorded.clone();
    let k = r.batch.unwrap_or(1);
    let size = r.batch_size.unwrap_or(0);
    let moved = r.moved.unwrap_or(0);
    let finish = |mut r: RedriveStatus, phase: &str, message: String| {
        r.phase = phase.into();
        r.finished_at = Some(now_text.clone());
        r.dlq_depth_at_end = dlq_depth;
        r.message = Some(message);
        r
    };
    if let Some(shovel) = r.shovel.clone() {
        match seen {
            Seen::Running => {
                if dlq_depth == Some(0) {
                    // The shovel waits for messages someone else took from the DLQ.
                    r.shovel = None;
                    let msg = format!(
                        "the dead-letter queue emptied while batch {k} ran (another consumer                          took messages from it); {moved} moved by the completed batches, up to                          {size} more by batch {k}"
                    );
                    return Paced::Stay {
                        status: finish(r, SUCCEEDED, msg),
                        delete: Some(shovel),
                    };
                }
                r.phase = RUNNING.into();
                r.message = Some(format!(
                    "batch {k}: moving {size} messages ({moved} moved before it{})",
                    dlq_depth.map_or(String::new(), |d| format!("; {d} in the dead-letter queue"))
                ));
                return stay(r);
            }
            Seen::Terminated(reason) => {
                let msg = format!(
                    "the shovel of batch {k} stopped: {reason}; {moved} moved by the completed                      batches; unmoved messages stay in the dead-letter queue"
                );
                return stay(finish(r, FAILED, msg));
            }
            Seen::Absent if r.phase == STARTING => {
                let msg = format!(
                    "the operator stopped while starting batch {k} and no shovel exists:                      whether its {size} messages moved is unknown; {moved} moved by the                      completed batches; set a new requestId to move what is left"
                );
                return stay(finish(r, INTERRUPTED, msg));
            }
            Seen::Absent => {
                // The batch moved its count and the shovel deleted itself.
                r.moved = Some(moved + size);
                r.shovel = None;
                r.phase = RUNNING.into();
            }
        }
    }
    let moved = r.moved.unwrap_or(0);
    let remaining = r.dlq_depth_at_start.unwrap_or(0) - moved;
    if remaining <= 0 || dlq_depth == Some(0) {
        let msg = format!(
            "moved {moved} messages back to the source queue in {k} batch{}; {} in the              dead-letter queue now",
            if k == 1 { "" } else { "es" },
            dlq_depth.map_or("unknown".into(), |d| d.to_string())
        );
        return stay(finish(r, SUCCEEDED, msg));
    }
    let Some(depth) = dlq_depth else {
        // A batch must not ask for more than the DLQ holds: wait for a reading.
        r.message = Some(format!(
            "{moved} moved in {k} batch(es); waiting for the dead-letter queue's depth"
        ));
        return stay(r);
    };
    let started = r
        .batch_started_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let spacing = Duration::from_secs_f64(size.max(0) as f64 / f64::from(pace.per_second.max(1)));
    let due = started.and_then(|t| t.checked_add(spacing).ok());
    if let Some(due) = due
        && now < due
    {
        r.message = Some(format!(
            "{moved} moved in {k} batch(es); next batch at {due} ({} a second)",
            pace.per_second
        ));
        return stay(r);
    }
    let next = k + 1;
    let n = pace.batch.min(remaining).min(depth).max(1);
    let shovel = batch_shovel(base, next);
    r.phase = STARTING.into();
    r.shovel = Some(shovel.clone());
    r.batch = Some(next);
    r.batch_size = Some(n);
    r.batch_started_at = Some(now_text);
    r.message = Some(format!(
        "creating the shovel of batch {next} ({n} messages; {moved} moved before it)"
    ));
    Paced::Batch {
        record: r,
        shovel,
        size: n,
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
        let d = shovel_definition("/", "orders.dlq", "orders", 50, None);
        assert_eq!(d["ack-mode"], "on-confirm");
        assert_eq!(d["src-delete-after"], "queue-length");
        let batch = shovel_definition("/", "orders.dlq", "orders", 50, Some(120));
        assert_eq!(batch["src-delete-after"], 120);
        assert_eq!(d["src-uri"], "amqp:///%2F");
        assert_eq!(d["dest-queue"], "orders");
        assert_eq!(d["src-prefetch-count"], 50);
    }

    // ---- paced (rate-limited) redrive ----

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid")
    }

    const BASE: &str = "nerite-redrive.ns.sc.r1";

    /// 1,000 messages at 100/s with a 5 s poll: batches of 500.
    fn first() -> (RedriveStatus, Pace) {
        let pace = Pace::new(100, Duration::from_secs(5));
        assert_eq!(pace.batch, 500);
        let size = first_batch(1000, pace);
        (
            starting_paced("r1", BASE, 1000, size, &at(0).to_string()),
            pace,
        )
    }

    fn batch(p: Paced) -> (RedriveStatus, String, i64) {
        match p {
            Paced::Batch {
                record,
                shovel,
                size,
            } => (record, shovel, size),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    fn stay(p: Paced) -> RedriveStatus {
        match p {
            Paced::Stay { status, .. } => status,
            other => panic!("expected to stay, got {other:?}"),
        }
    }

    #[test]
    fn paced_batches_follow_the_rate_and_count_exactly() {
        let (s, pace) = first();
        assert_eq!(s.shovel.as_deref(), Some("nerite-redrive.ns.sc.r1.b1"));
        assert_eq!(
            (s.batch, s.batch_size, s.moved),
            (Some(1), Some(500), Some(0))
        );
        // Batch 1 runs.
        let s = stay(paced(&s, BASE, &Seen::Running, Some(800), at(1), pace));
        assert_eq!(s.phase, RUNNING);
        // Done at 2 s: 500 moved, but the next batch waits until 5 s (500 at 100/s).
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(500), at(2), pace));
        assert_eq!(
            (s.phase.as_str(), s.moved, s.shovel.clone()),
            (RUNNING, Some(500), None)
        );
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(500), at(4), pace));
        assert_eq!(s.moved, Some(500), "nothing counted twice while waiting");
        // At 5 s batch 2 starts: recorded first, then created.
        let (s, shovel, size) = batch(paced(&s, BASE, &Seen::Absent, Some(500), at(5), pace));
        assert_eq!(shovel, "nerite-redrive.ns.sc.r1.b2");
        assert_eq!((s.phase.as_str(), s.batch, size), (STARTING, Some(2), 500));
        // Batch 2 done: all 1,000 moved.
        let s = stay(paced(&s, BASE, &Seen::Running, Some(200), at(6), pace));
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(0), at(7), pace));
        assert_eq!((s.phase.as_str(), s.moved), (SUCCEEDED, Some(1000)));
        assert!(s.message.unwrap_or_default().contains("in 2 batches"));
    }

    #[test]
    fn a_batch_never_asks_for_more_than_the_queue_holds_or_the_request_covers() {
        let (s, pace) = first();
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(600), at(1), pace));
        // 500 moved; 500 left of the request, but new dead letters make the DLQ 600: the
        // request covers 500 more.
        let (s, _, size) = batch(paced(&s, BASE, &Seen::Absent, Some(600), at(5), pace));
        assert_eq!(size, 500);
        // Someone took messages meanwhile: only 30 left in the DLQ.
        let mut between = s.clone();
        between.phase = RUNNING.into();
        between.shovel = None;
        between.moved = Some(900);
        between.batch_size = Some(100);
        let (_, _, size) = batch(paced(&between, BASE, &Seen::Absent, Some(30), at(60), pace));
        assert_eq!(size, 30);
        // Without a depth reading no batch is sized.
        assert!(matches!(
            paced(&between, BASE, &Seen::Absent, None, at(60), pace),
            Paced::Stay { .. }
        ));
    }

    #[test]
    fn a_paced_restart_never_creates_a_batch_twice() {
        let (s, pace) = first();
        // Found Starting with its shovel running: resumed.
        assert_eq!(
            stay(paced(&s, BASE, &Seen::Running, Some(900), at(1), pace)).phase,
            RUNNING
        );
        // Found Starting without a shovel: the batch's outcome is unknown, the request ends.
        let s2 = stay(paced(&s, BASE, &Seen::Absent, Some(900), at(1), pace));
        assert_eq!((s2.phase.as_str(), s2.moved), (INTERRUPTED, Some(0)));
        assert!(s2.message.unwrap_or_default().contains("batch 1"));
        // A shovel waiting for messages someone else took is removed; the request ends.
        let s3 = paced(&s, BASE, &Seen::Running, Some(0), at(1), pace);
        match s3 {
            Paced::Stay { status, delete } => {
                assert_eq!(status.phase, SUCCEEDED);
                assert_eq!(delete.as_deref(), Some("nerite-redrive.ns.sc.r1.b1"));
            }
            other => panic!("{other:?}"),
        }
        // A terminated batch fails the request, counting what completed.
        let s4 = stay(paced(
            &s,
            BASE,
            &Seen::Terminated("gone".into()),
            Some(900),
            at(1),
            pace,
        ));
        assert_eq!((s4.phase.as_str(), s4.moved), (FAILED, Some(0)));
    }
}
