//! The scaling policy: pure decisions, no clients, no clocks.
//!
//! `decide` takes the latest reading (or the fact that there is none), the validated
//! settings, the history kept by the caller, the current replica count and `now`, and
//! returns what the count should be and why. `History::record` folds a decision back into
//! the history. The operator and the simulator drive the same two functions.

use std::collections::VecDeque;
use std::time::Duration;

use jiff::Timestamp;

use crate::source::Observation;

/// Validated and defaulted policy settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub paused: bool,
    pub backlog_per_replica: i64,
    pub max_drain_time: Option<Duration>,
    pub poll_interval: Duration,
    pub scale_up_window: Duration,
    pub scale_down_window: Duration,
    pub scale_up_max_step: Option<i32>,
    pub scale_down_max_step: Option<i32>,
    pub activation_backlog: i64,
    pub scale_to_zero_cooldown: Duration,
    pub fallback: Fallback,
}

/// Behaviour while the source cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    Hold,
    /// After `after_failures` consecutive failures, raise the count to `replicas` (never lower).
    Fixed {
        replicas: i32,
        after_failures: u32,
    },
}

/// What the policy is given for one tick.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Observed(&'a Observation),
    /// The source could not be read this tick.
    Unavailable,
}

/// Why the count is not what the objective alone asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Min,
    Max,
    MaxStepUp,
    MaxStepDown,
    Stabilization,
    ScaleToZeroCooldown,
    Paused,
    NoData,
}

/// The outcome of one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The replica count to set (equal to `current` when nothing should change).
    pub desired: i32,
    /// What the objective alone asks for, before bounds, steps and windows (None without data).
    pub recommended: Option<i32>,
    /// The strongest limit that changed the outcome, if any.
    pub limit: Option<Limit>,
    /// One line for humans, e.g. "backlog 1200 at 100/replica → 12, capped at max 10".
    pub reason: String,
}

/// What the policy remembers between ticks. Owned by the caller, updated by `record`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Recent recommendations (time, replicas), oldest first.
    pub recommendations: VecDeque<(Timestamp, i32)>,
    /// When the count was last changed.
    pub last_scale: Option<Timestamp>,
    /// Consecutive ticks without data.
    pub consecutive_failures: u32,
    /// Smoothed messages/second one replica completes, once measured.
    pub per_replica_throughput: Option<f64>,
    /// Last time the backlog was above the activation threshold.
    pub last_active: Option<Timestamp>,
}

pub fn decide(
    input: Input<'_>,
    cfg: &PolicyConfig,
    history: &History,
    current: i32,
    now: Timestamp,
) -> Decision {
    let _ = (input, cfg, history, now);
    Decision {
        desired: current,
        recommended: None,
        limit: None,
        reason: String::new(),
    }
}

impl History {
    /// History for an object first seen at `now` with `current` replicas: scale-down waits a
    /// full window after an operator restart.
    pub fn seeded(current: i32, now: Timestamp) -> Self {
        let mut h = History::default();
        h.recommendations.push_back((now, current));
        h
    }

    /// Fold one tick into the history.
    pub fn record(
        &mut self,
        input: Input<'_>,
        decision: &Decision,
        cfg: &PolicyConfig,
        current: i32,
        now: Timestamp,
    ) {
        let _ = (input, decision, cfg, current, now);
    }
}
