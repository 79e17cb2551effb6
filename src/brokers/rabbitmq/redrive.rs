//! Redrive of a dead-letter queue: the pure state machine.
//!
//! A redrive moves the DLQ's messages back to the source queue with one dynamic shovel running
//! inside the broker: `ack-mode: on-confirm` (a message leaves the DLQ only after the source
//! queue confirmed it), `src-delete-after: queue-length` (the shovel moves what the DLQ held
//! when it started, then deletes itself). The status is the durable record; its phases are the
//! ones every broker uses ([`RedrivePhase`]):
//!
//! ```text
//!   new requestId ──► Pending ──(shovel created)──► Running ──(shovel gone)──► Succeeded
//!                       │                            ├──(shovel terminated)──► Failed
//!                       │                            └──(cancel: shovel removed)──► Cancelled
//!                       └──(found at start-up, no shovel)──► Failed (RedriveInterrupted)
//! ```
//!
//! `Pending` (with `creating`) is written before the shovel is created, so every request id
//! gets at most one shovel: a `Pending` found by a later reconcile (the operator stopped
//! between the two writes) becomes `Running` when the shovel exists and `Failed`
//! (`RedriveInterrupted`) when it does not: whether it ran is unknown, so it is never created
//! a second time; the messages stay in the DLQ and a new request id moves them. (This is not
//! resumable, unlike an interrupted SQS or Kafka run, which stays `Running` and resumes.)
//!
//! With `maxMessagesPerSecond` the move is *paced* ([`paced`]): batches of `rate × poll
//! interval` messages, one shovel each (`src-delete-after: <n>`, so it moves exactly n and
//! deletes itself), named `<shovel>.b<k>`. Batch k+1 starts once batch k's shovel is gone and
//! no sooner than n / rate seconds after batch k started. Each batch is recorded (`creating`,
//! its number and size) before its shovel is created, so a batch is never created twice; a
//! batch found `creating` without a shovel after a restart ends the request `Failed`
//! (`RedriveInterrupted`), with the completed batches counted and the uncertain one named. A
//! paced move ends when it has moved what the DLQ held at the start, or the DLQ is empty.
//!
//! **Cancel** ([`cancelling`], [`cancelled`]): the request's shovel is removed and `moved`
//! reports what left the DLQ (by its depth; messages the shovel held unconfirmed return to
//! the DLQ). A paced batch in progress moves a bounded, exact count: it is let finish (up to
//! [`CANCEL_GRACE`]), so a cancelled paced redrive reports an exact count.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::spec::api::{RedrivePhase, RedriveProgress, RedriveStatus};

/// `Failed` reason: the operator stopped while creating a shovel and none exists.
pub const INTERRUPTED: &str = "RedriveInterrupted";
/// `Failed` reason: the broker terminated the shovel.
pub const TERMINATED: &str = "ShovelTerminated";
/// How long a cancel lets a paced batch in progress finish before removing its shovel.
pub const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// What the reconcile has to do for the redrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No request, or the request is finished.
    Idle,
    /// A new request: record `Pending`, then create the shovel.
    Start { request_id: String, shovel: String },
    /// A new request cancelled before it started: record `Cancelled`, create nothing.
    CancelBeforeStart { request_id: String },
    /// A request in progress (or possibly started): look at the shovel.
    Check { shovel: String, was_starting: bool },
    /// The request in progress is cancelled: remove its shovel.
    Cancel,
}

/// Shovel name for a request: unique per ScaledConsumer and request id.
pub fn shovel_name(namespace: &str, name: &str, request_id: &str) -> String {
    format!("nerite-redrive.{namespace}.{name}.{request_id}")
}

/// Whether the recorded shovel may or may not exist (recorded before its creation was
/// confirmed).
pub fn uncertain(r: &RedriveStatus) -> bool {
    r.creating || r.progress.phase == RedrivePhase::Pending
}

/// Decide from the request in force (`(requestId, cancel)`) and the recorded status.
pub fn step(
    request: Option<(&str, bool)>,
    recorded: Option<&RedriveStatus>,
    namespace: &str,
    name: &str,
) -> Step {
    let check = |r: &RedriveStatus, id: &str| Step::Check {
        shovel: r
            .shovel
            .clone()
            .unwrap_or_else(|| shovel_name(namespace, name, id)),
        was_starting: uncertain(r),
    };
    let Some((id, cancel)) = request else {
        return match recorded {
            Some(r) if r.progress.phase.is_active() => check(r, &r.progress.request_id),
            _ => Step::Idle,
        };
    };
    match recorded {
        Some(r) if r.progress.request_id == id => match r.progress.phase.is_active() {
            true if cancel => Step::Cancel,
            true => check(r, id),
            false => Step::Idle,
        },
        // A different request is still moving messages: let it finish first.
        Some(r) if r.progress.phase.is_active() => check(r, &r.progress.request_id),
        _ if cancel => Step::CancelBeforeStart {
            request_id: id.to_owned(),
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
        progress: RedriveProgress {
            message: Some("creating the shovel".into()),
            ..RedriveProgress::pending(request_id, now)
        },
        shovel: Some(shovel.to_owned()),
        creating: true,
        dlq_depth_at_start: dlq_depth,
        ..RedriveStatus::default()
    }
}

/// A request cancelled before anything was created.
pub fn cancelled_before_start(
    request_id: &str,
    dlq_depth: Option<i64>,
    now: &str,
) -> RedriveStatus {
    RedriveStatus {
        progress: RedriveProgress {
            phase: RedrivePhase::Cancelled,
            finished_at: Some(now.to_owned()),
            message: Some("cancelled before it started: nothing was moved".into()),
            ..RedriveProgress::pending(request_id, now)
        },
        dlq_depth_at_start: dlq_depth,
        dlq_depth_at_end: dlq_depth,
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
        progress: RedriveProgress {
            message: Some(format!("creating the shovel of batch 1 ({size} messages)")),
            ..RedriveProgress::pending(request_id, now)
        },
        shovel: Some(batch_shovel(base, 1)),
        creating: true,
        dlq_depth_at_start: Some(dlq_depth),
        batch: Some(1),
        batch_size: Some(size),
        batch_started_at: Some(now.to_owned()),
        ..RedriveStatus::default()
    }
}

/// Size of a paced redrive's first batch for a DLQ of `depth` messages (0: nothing to do).
pub fn first_batch(depth: i64, pace: Pace) -> i64 {
    depth.clamp(0, pace.batch)
}

/// End the request in `phase` now.
fn finish(
    mut r: RedriveStatus,
    phase: RedrivePhase,
    reason: Option<&str>,
    dlq_depth: Option<i64>,
    now: &str,
    message: String,
) -> RedriveStatus {
    r.progress.phase = phase;
    r.progress.finished_at = Some(now.to_owned());
    r.progress.reason = reason.map(str::to_owned);
    r.progress.message = Some(message);
    r.dlq_depth_at_end = dlq_depth;
    r.shovel = None;
    r.creating = false;
    r
}

/// What left the DLQ since the start, by its depth.
fn left_dlq(r: &RedriveStatus, dlq_depth: Option<i64>) -> Option<i64> {
    match (r.dlq_depth_at_start, dlq_depth) {
        (Some(start), Some(end)) => Some((start - end).max(0)),
        _ => None,
    }
}

/// What a paced redrive does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Paced {
    /// Record this status; `delete` names a shovel to remove first.
    Stay {
        status: RedriveStatus,
        delete: Option<String>,
    },
    /// Record `record` (the next batch, `creating`), then create `shovel` moving `size`.
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
    let moved = r.progress.moved;
    if let Some(shovel) = r.shovel.clone() {
        match seen {
            Seen::Running => {
                if dlq_depth == Some(0) {
                    // The shovel waits for messages someone else took from the DLQ.
                    let msg = format!(
                        "the dead-letter queue emptied while batch {k} ran (another consumer took messages from it); {moved} moved by the completed batches, up to {size} more by batch {k}"
                    );
                    return Paced::Stay {
                        status: finish(r, RedrivePhase::Succeeded, None, dlq_depth, &now_text, msg),
                        delete: Some(shovel),
                    };
                }
                r.progress.phase = RedrivePhase::Running;
                r.creating = false;
                r.progress.message = Some(format!(
                    "batch {k}: moving {size} messages ({moved} moved before it{})",
                    dlq_depth.map_or(String::new(), |d| format!("; {d} in the dead-letter queue"))
                ));
                return stay(r);
            }
            Seen::Terminated(reason) => {
                let msg = format!(
                    "the shovel of batch {k} stopped: {reason}; {moved} moved by the completed batches; unmoved messages stay in the dead-letter queue"
                );
                return stay(finish(
                    r,
                    RedrivePhase::Failed,
                    Some(TERMINATED),
                    dlq_depth,
                    &now_text,
                    msg,
                ));
            }
            Seen::Absent if uncertain(&r) => {
                let msg = format!(
                    "the operator stopped while starting batch {k} and no shovel exists: whether its {size} messages moved is unknown; {moved} moved by the completed batches; set a new requestId to move what is left"
                );
                return stay(finish(
                    r,
                    RedrivePhase::Failed,
                    Some(INTERRUPTED),
                    dlq_depth,
                    &now_text,
                    msg,
                ));
            }
            Seen::Absent => {
                // The batch moved its count and the shovel deleted itself.
                r.progress.moved = moved + size;
                r.shovel = None;
                r.progress.phase = RedrivePhase::Running;
            }
        }
    }
    let moved = r.progress.moved;
    let remaining = r.dlq_depth_at_start.unwrap_or(0) - moved;
    if remaining <= 0 || dlq_depth == Some(0) {
        let msg = format!(
            "moved {moved} messages back to the source queue in {k} batch{}; {} in the dead-letter queue now",
            if k == 1 { "" } else { "es" },
            dlq_depth.map_or("unknown".into(), |d| d.to_string())
        );
        return stay(finish(
            r,
            RedrivePhase::Succeeded,
            None,
            dlq_depth,
            &now_text,
            msg,
        ));
    }
    let Some(depth) = dlq_depth else {
        // A batch must not ask for more than the DLQ holds: wait for a reading.
        r.progress.message = Some(format!(
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
        r.progress.message = Some(format!(
            "{moved} moved in {k} batch(es); next batch at {due} ({} a second)",
            pace.per_second
        ));
        return stay(r);
    }
    let next = k + 1;
    let n = pace.batch.min(remaining).min(depth).max(1);
    let shovel = batch_shovel(base, next);
    r.progress.phase = RedrivePhase::Running;
    r.shovel = Some(shovel.clone());
    r.creating = true;
    r.batch = Some(next);
    r.batch_size = Some(n);
    r.batch_started_at = Some(now_text);
    r.progress.message = Some(format!(
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
            r.progress.phase = RedrivePhase::Running;
            r.creating = false;
            match r.batch {
                // Paced: `moved` counts completed batches exactly.
                Some(k) => {
                    r.progress.message = Some(format!(
                        "batch {k}: moving {} messages ({} moved before it)",
                        r.batch_size.unwrap_or(0),
                        r.progress.moved
                    ));
                }
                None => {
                    if let Some(m) = left_dlq(&r, dlq_depth) {
                        r.progress.moved = m;
                    }
                    r.progress.message = Some(match dlq_depth {
                        Some(d) => format!("moving: {d} messages left in the dead-letter queue"),
                        None => "moving".into(),
                    });
                }
            }
            r
        }
        Seen::Absent if uncertain(recorded) => {
            let msg = format!(
                "the operator stopped while starting this redrive and no shovel exists; whether it ran is unknown (the dead-letter queue holds {}); set a new requestId to move them",
                dlq_depth.map_or("an unknown number of".into(), |d| d.to_string())
            );
            finish(
                r,
                RedrivePhase::Failed,
                Some(INTERRUPTED),
                dlq_depth,
                now,
                msg,
            )
        }
        Seen::Absent => {
            // The shovel deletes itself after moving what the DLQ held when it started.
            r.progress.moved = r.dlq_depth_at_start.unwrap_or(r.progress.moved);
            let msg = format!(
                "moved {} messages back to the source queue; {} in the dead-letter queue now",
                r.progress.moved,
                dlq_depth.map_or("unknown".into(), |d| d.to_string())
            );
            finish(r, RedrivePhase::Succeeded, None, dlq_depth, now, msg)
        }
        Seen::Terminated(reason) => {
            if let Some(m) = left_dlq(&r, dlq_depth) {
                r.progress.moved = m;
            }
            let msg = format!(
                "the shovel stopped: {reason}; unmoved messages stay in the dead-letter queue"
            );
            finish(
                r,
                RedrivePhase::Failed,
                Some(TERMINATED),
                dlq_depth,
                now,
                msg,
            )
        }
    }
}

/// What a cancel does first.
#[derive(Clone, Debug, PartialEq)]
pub enum Cancelling {
    /// A paced batch is moving its (exact) count: record this and look again next tick.
    Wait(Box<RedriveStatus>),
    /// Remove `shovel` (when one may exist), read the DLQ's depth, then [`cancelled`].
    Remove { shovel: Option<String> },
}

/// The first step of a cancel of the recorded (active) request, from what the broker says
/// about its shovel.
pub fn cancelling(recorded: &RedriveStatus, seen: &Seen, now: Timestamp) -> Cancelling {
    let paced_batch_moving = recorded.batch.is_some() && *seen == Seen::Running;
    let started = recorded
        .batch_started_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let within_grace = started
        .and_then(|t| t.checked_add(CANCEL_GRACE).ok())
        .is_some_and(|until| now < until);
    if paced_batch_moving && within_grace {
        let mut r = recorded.clone();
        r.progress.phase = RedrivePhase::Running;
        r.creating = false;
        r.progress.message = Some(format!(
            "cancelling: letting batch {} finish its {} messages",
            r.batch.unwrap_or(1),
            r.batch_size.unwrap_or(0)
        ));
        return Cancelling::Wait(Box::new(r));
    }
    let shovel = match seen {
        Seen::Absent if !uncertain(recorded) => None,
        _ => recorded.shovel.clone(),
    };
    Cancelling::Remove { shovel }
}

/// The outcome of a cancel once the shovel is gone: `seen` is what the broker said before,
/// `dlq_depth` the DLQ's depth after the removal. `Cancelled`, unless the request had in fact
/// finished (then what it reached).
pub fn cancelled(
    recorded: &RedriveStatus,
    seen: &Seen,
    dlq_depth: Option<i64>,
    now: &str,
) -> RedriveStatus {
    let r = recorded.clone();
    let removed = r.shovel.clone().filter(|_| *seen != Seen::Absent);
    let (moved, exact) = match r.batch {
        None => match seen {
            // The shovel had already moved everything and deleted itself.
            Seen::Absent if !uncertain(&r) => return advance(recorded, seen, dlq_depth, now),
            _ => match left_dlq(&r, dlq_depth) {
                Some(m) => (m, false),
                None => (r.progress.moved, false),
            },
        },
        Some(_) => {
            let before = r.progress.moved;
            let size = r.batch_size.unwrap_or(0);
            match (&r.shovel, seen) {
                // Between batches, or the batch finished: every count is exact.
                (None, _) => (before, true),
                (Some(_), Seen::Absent) if !uncertain(&r) => (before + size, true),
                (Some(_), _) => (
                    left_dlq(&r, dlq_depth).map_or(before, |m| m.clamp(before, before + size)),
                    false,
                ),
            }
        }
    };
    let mut r = r;
    r.progress.moved = moved;
    if r.batch.is_some() && exact && moved >= r.dlq_depth_at_start.unwrap_or(0) {
        let msg = format!("moved all {moved} messages before the cancel took effect");
        return finish(r, RedrivePhase::Succeeded, None, dlq_depth, now, msg);
    }
    let msg = format!(
        "cancelled: {}; {moved} moved{}; the rest stays in the dead-letter queue (last reading: {})",
        match &removed {
            Some(s) => format!("shovel {s:?} removed"),
            None => "no shovel was running".into(),
        },
        if exact {
            ""
        } else {
            " (what left the dead-letter queue; messages the shovel held unconfirmed went back to it)"
        },
        dlq_depth.map_or("unknown".into(), |d| d.to_string())
    );
    finish(r, RedrivePhase::Cancelled, None, dlq_depth, now, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    use RedrivePhase::{Cancelled, Failed, Pending, Running, Succeeded};

    fn recorded(id: &str, phase: RedrivePhase) -> RedriveStatus {
        RedriveStatus {
            progress: RedriveProgress {
                request_id: id.into(),
                phase,
                ..RedriveProgress::default()
            },
            shovel: Some(shovel_name("ns", "sc", id)),
            creating: phase == Pending,
            dlq_depth_at_start: Some(1000),
            ..RedriveStatus::default()
        }
    }

    #[test]
    fn a_new_id_starts_once() {
        assert_eq!(
            step(Some(("r1", false)), None, "ns", "sc"),
            Step::Start {
                request_id: "r1".into(),
                shovel: "nerite-redrive.ns.sc.r1".into()
            }
        );
        for phase in [Succeeded, Failed, Cancelled] {
            assert_eq!(
                step(
                    Some(("r1", false)),
                    Some(&recorded("r1", phase)),
                    "ns",
                    "sc"
                ),
                Step::Idle
            );
            assert!(matches!(
                step(
                    Some(("r2", false)),
                    Some(&recorded("r1", phase)),
                    "ns",
                    "sc"
                ),
                Step::Start { .. }
            ));
        }
    }

    #[test]
    fn a_started_id_is_checked_never_restarted() {
        assert_eq!(
            step(
                Some(("r1", false)),
                Some(&recorded("r1", Pending)),
                "ns",
                "sc"
            ),
            Step::Check {
                shovel: "nerite-redrive.ns.sc.r1".into(),
                was_starting: true
            }
        );
        assert!(matches!(
            step(
                Some(("r1", false)),
                Some(&recorded("r1", Running)),
                "ns",
                "sc"
            ),
            Step::Check {
                was_starting: false,
                ..
            }
        ));
        // A new id waits for the running one.
        assert!(matches!(
            step(
                Some(("r2", false)),
                Some(&recorded("r1", Running)),
                "ns",
                "sc"
            ),
            Step::Check { .. }
        ));
        // Removing the request does not orphan a running shovel.
        assert!(matches!(
            step(None, Some(&recorded("r1", Running)), "ns", "sc"),
            Step::Check { .. }
        ));
        assert_eq!(step(None, None, "ns", "sc"), Step::Idle);
    }

    #[test]
    fn cancel_applies_to_its_own_active_request() {
        for phase in [Pending, Running] {
            assert_eq!(
                step(Some(("r1", true)), Some(&recorded("r1", phase)), "ns", "sc"),
                Step::Cancel
            );
        }
        // A finished request stays as it ended.
        assert_eq!(
            step(
                Some(("r1", true)),
                Some(&recorded("r1", Succeeded)),
                "ns",
                "sc"
            ),
            Step::Idle
        );
        // A new id cancelled at once is recorded cancelled, nothing created.
        assert_eq!(
            step(
                Some(("r2", true)),
                Some(&recorded("r1", Succeeded)),
                "ns",
                "sc"
            ),
            Step::CancelBeforeStart {
                request_id: "r2".into()
            }
        );
        let c = cancelled_before_start("r2", Some(5), "2024-01-01T00:00:00Z");
        assert_eq!((c.progress.phase, c.progress.moved), (Cancelled, 0));
    }

    #[test]
    fn outcomes() {
        let now = "2024-01-01T00:00:00Z";
        let done = advance(&recorded("r1", Running), &Seen::Absent, Some(0), now);
        assert_eq!(done.progress.phase, Succeeded);
        assert_eq!(done.progress.moved, 1000);
        assert_eq!(done.shovel, None);
        // Interrupted before the shovel existed: not resumable, so Failed with the reason.
        let lost_start = advance(&recorded("r1", Pending), &Seen::Absent, Some(1000), now);
        assert_eq!(lost_start.progress.phase, Failed);
        assert_eq!(lost_start.progress.reason.as_deref(), Some(INTERRUPTED));
        assert_eq!(lost_start.progress.moved, 0);
        let resumed = advance(&recorded("r1", Pending), &Seen::Running, Some(400), now);
        assert_eq!((resumed.progress.phase, resumed.creating), (Running, false));
        assert_eq!(resumed.progress.moved, 600, "what left the DLQ so far");
        let failed = advance(
            &recorded("r1", Running),
            &Seen::Terminated("dest queue gone".into()),
            Some(300),
            now,
        );
        assert_eq!(failed.progress.phase, Failed);
        assert_eq!(failed.progress.reason.as_deref(), Some(TERMINATED));
        assert_eq!(failed.progress.moved, 700);
    }

    #[test]
    fn an_unpaced_cancel_removes_the_shovel_and_counts_what_left() {
        let now = "2024-01-01T00:00:00Z";
        let r = recorded("r1", Running);
        assert_eq!(
            cancelling(&r, &Seen::Running, at(0)),
            Cancelling::Remove {
                shovel: Some("nerite-redrive.ns.sc.r1".into())
            }
        );
        let c = cancelled(&r, &Seen::Running, Some(640), now);
        assert_eq!((c.progress.phase, c.progress.moved), (Cancelled, 360));
        assert_eq!((c.shovel, c.dlq_depth_at_end), (None, Some(640)));
        assert!(c.progress.message.unwrap_or_default().contains("removed"));
        // The shovel had finished on its own: the request succeeded.
        let c = cancelled(&r, &Seen::Absent, Some(0), now);
        assert_eq!((c.progress.phase, c.progress.moved), (Succeeded, 1000));
        // Recorded but maybe never created: nothing to wait for, cancelled.
        let p = recorded("r1", Pending);
        assert!(matches!(
            cancelling(&p, &Seen::Absent, at(0)),
            Cancelling::Remove { shovel: Some(_) }
        ));
        assert_eq!(
            cancelled(&p, &Seen::Absent, Some(1000), now).progress.phase,
            Cancelled
        );
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
            (
                s.progress.phase,
                s.batch,
                s.batch_size,
                s.progress.moved,
                s.creating
            ),
            (Pending, Some(1), Some(500), 0, true)
        );
        // Batch 1 runs.
        let s = stay(paced(&s, BASE, &Seen::Running, Some(800), at(1), pace));
        assert_eq!((s.progress.phase, s.creating), (Running, false));
        // Done at 2 s: 500 moved, but the next batch waits until 5 s (500 at 100/s).
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(500), at(2), pace));
        assert_eq!(
            (s.progress.phase, s.progress.moved, s.shovel.clone()),
            (Running, 500, None)
        );
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(500), at(4), pace));
        assert_eq!(s.progress.moved, 500, "nothing counted twice while waiting");
        // At 5 s batch 2 starts: recorded first (creating), then created.
        let (s, shovel, size) = batch(paced(&s, BASE, &Seen::Absent, Some(500), at(5), pace));
        assert_eq!(shovel, "nerite-redrive.ns.sc.r1.b2");
        assert_eq!(
            (s.progress.phase, s.creating, s.batch, size),
            (Running, true, Some(2), 500)
        );
        // Batch 2 done: all 1,000 moved.
        let s = stay(paced(&s, BASE, &Seen::Running, Some(200), at(6), pace));
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(0), at(7), pace));
        assert_eq!((s.progress.phase, s.progress.moved), (Succeeded, 1000));
        assert!(
            s.progress
                .message
                .unwrap_or_default()
                .contains("in 2 batches")
        );
    }

    #[test]
    fn a_batch_never_asks_for_more_than_the_queue_holds_or_the_request_covers() {
        let (s, pace) = first();
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(600), at(1), pace));
        // Batch 1 was recorded `creating`: found absent, its outcome is unknown.
        assert_eq!(s.progress.phase, Failed);
        let (s, pace) = first();
        let s = stay(paced(&s, BASE, &Seen::Running, Some(900), at(1), pace));
        let s = stay(paced(&s, BASE, &Seen::Absent, Some(600), at(2), pace));
        // 500 moved; 500 left of the request, but new dead letters make the DLQ 600: the
        // request covers 500 more.
        let (s, _, size) = batch(paced(&s, BASE, &Seen::Absent, Some(600), at(5), pace));
        assert_eq!(size, 500);
        // Someone took messages meanwhile: only 30 left in the DLQ.
        let mut between = s.clone();
        between.progress.phase = Running;
        between.creating = false;
        between.shovel = None;
        between.progress.moved = 900;
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
        // Found creating with its shovel running: resumed.
        assert_eq!(
            stay(paced(&s, BASE, &Seen::Running, Some(900), at(1), pace))
                .progress
                .phase,
            Running
        );
        // Found creating without a shovel: the batch's outcome is unknown, the request ends.
        let s2 = stay(paced(&s, BASE, &Seen::Absent, Some(900), at(1), pace));
        assert_eq!((s2.progress.phase, s2.progress.moved), (Failed, 0));
        assert_eq!(s2.progress.reason.as_deref(), Some(INTERRUPTED));
        assert!(s2.progress.message.unwrap_or_default().contains("batch 1"));
        // The same for a later batch (Running, creating).
        let mut later = s.clone();
        later.progress.phase = Running;
        later.progress.moved = 500;
        later.batch = Some(2);
        let s5 = stay(paced(&later, BASE, &Seen::Absent, Some(500), at(9), pace));
        assert_eq!((s5.progress.phase, s5.progress.moved), (Failed, 500));
        // A shovel waiting for messages someone else took is removed; the request ends.
        let s3 = paced(&s, BASE, &Seen::Running, Some(0), at(1), pace);
        match s3 {
            Paced::Stay { status, delete } => {
                assert_eq!(status.progress.phase, Succeeded);
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
        assert_eq!((s4.progress.phase, s4.progress.moved), (Failed, 0));
    }

    #[test]
    fn a_paced_cancel_counts_exactly() {
        let (s, pace) = first();
        let s = stay(paced(&s, BASE, &Seen::Running, Some(900), at(1), pace));
        // Batch 1 moving: let it finish (within the grace).
        let Cancelling::Wait(w) = cancelling(&s, &Seen::Running, at(2)) else {
            panic!("a moving batch is let finish");
        };
        assert_eq!(w.progress.phase, Running);
        // Then cancelled with its exact count, nothing to remove.
        assert_eq!(
            cancelling(&w, &Seen::Absent, at(3)),
            Cancelling::Remove { shovel: None }
        );
        let c = cancelled(&w, &Seen::Absent, Some(480), &at(3).to_string());
        assert_eq!((c.progress.phase, c.progress.moved), (Cancelled, 500));
        assert!(!c.progress.message.unwrap_or_default().contains("what left"));
        // Between batches: the completed batches.
        let between = stay(paced(&s, BASE, &Seen::Absent, Some(500), at(2), pace));
        let c = cancelled(&between, &Seen::Absent, Some(500), &at(3).to_string());
        assert_eq!((c.progress.phase, c.progress.moved), (Cancelled, 500));
        // A batch stuck past the grace: removed, counted from the DLQ within its bounds.
        let late = at(1)
            .checked_add(CANCEL_GRACE + Duration::from_secs(1))
            .expect("in range");
        assert!(matches!(
            cancelling(&s, &Seen::Running, late),
            Cancelling::Remove { shovel: Some(_) }
        ));
        let c = cancelled(&s, &Seen::Running, Some(700), &late.to_string());
        assert_eq!((c.progress.phase, c.progress.moved), (Cancelled, 300));
    }
}
