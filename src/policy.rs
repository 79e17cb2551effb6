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

/// Weight of the newest sample in the smoothed per-replica throughput.
pub const THROUGHPUT_EWMA_ALPHA: f64 = 0.3;

/// Most recommendations remembered, whatever the windows: a guard against a caller that
/// ticks far more often than `pollInterval`.
const MAX_RECOMMENDATIONS: usize = 20_000;

/// Decide the replica count for one tick. Pure: everything it needs comes in as arguments.
///
/// Pipeline for a reading: objective → scale to zero / activation → bounds → stabilization
/// → step limits → bounds again (they win over steps when `current` is outside them).
/// Without a reading, the count is held (or raised by a `Fixed` fallback), never lowered by
/// data; `[min, max]` still applies. `paused` keeps `current` and says what would happen.
pub fn decide(
    input: Input<'_>,
    cfg: &PolicyConfig,
    history: &History,
    current: i32,
    now: Timestamp,
) -> Decision {
    let current = current.max(0);
    let (min, max) = bounds(cfg);
    let decision = match input {
        Input::Observed(obs) => decide_observed(obs, cfg, history, current, now, min, max),
        Input::Unavailable => decide_unavailable(cfg, history, current, min, max),
    };
    if cfg.paused {
        pause(decision, current)
    } else {
        decision
    }
}

/// `[min, max]` made sane even for a config that skipped validation.
fn bounds(cfg: &PolicyConfig) -> (i32, i32) {
    let min = cfg.min_replicas.max(0);
    (min, cfg.max_replicas.max(min))
}

/// What the objective asks for, and how it got there.
struct Objective {
    replicas: i32,
    text: String,
}

fn objective(backlog: i64, obs: &Observation, cfg: &PolicyConfig, history: &History) -> Objective {
    let per = cfg.backlog_per_replica.max(1);
    let by_backlog = saturate_i32(ceil_div(backlog, per));
    let backlog_text = if backlog == 0 {
        "backlog 0 → 0".to_string()
    } else {
        format!("backlog {backlog} at {per}/replica → {by_backlog}")
    };
    let Some(drain) = cfg.max_drain_time.filter(|d| !d.is_zero()) else {
        return Objective {
            replicas: by_backlog,
            text: backlog_text,
        };
    };
    let Some(mu) = history
        .per_replica_throughput
        .filter(|m| valid_rate(*m) && *m > 0.0)
    else {
        return Objective {
            replicas: by_backlog,
            text: format!("{backlog_text} (throughput not yet measured)"),
        };
    };
    let arrival = obs.publish_rate.filter(|r| valid_rate(*r));
    // backlog is at most i64::MAX; as f64 it is approximate only far beyond real queues.
    let need = (arrival.unwrap_or(0.0) + backlog as f64 / drain.as_secs_f64()) / mu;
    let by_drain = ceil_to_i32(need);
    let d = crate::validate::format_duration(drain);
    let mu_text = fmt_rate(mu);
    if by_drain > by_backlog {
        let text = match arrival {
            Some(a) => format!(
                "arrivals {}/s + backlog {backlog} over {d} at {mu_text}/s per replica → {by_drain}",
                fmt_rate(a)
            ),
            None => format!(
                "backlog {backlog} over {d} at {mu_text}/s per replica → {by_drain} (arrival rate unknown)"
            ),
        };
        Objective {
            replicas: by_drain,
            text,
        }
    } else if by_drain == 0 {
        Objective {
            replicas: by_backlog,
            text: backlog_text,
        }
    } else {
        Objective {
            replicas: by_backlog,
            text: format!("{backlog_text} (draining within {d} needs {by_drain})"),
        }
    }
}

fn decide_observed(
    obs: &Observation,
    cfg: &PolicyConfig,
    history: &History,
    current: i32,
    now: Timestamp,
    min: i32,
    max: i32,
) -> Decision {
    let backlog = obs.backlog.max(0);
    let activation = cfg.activation_backlog.max(0);
    let idle = backlog <= activation;
    let obj = objective(backlog, obs, cfg, history);
    let mut limit = None;
    let mut notes = String::new();

    // Scale to zero and activation (only when zero is allowed).
    let recommended;
    let target;
    let text;
    if min == 0 && idle {
        let idle_text = if activation > 0 {
            format!("backlog {backlog} at or below activation {activation}")
        } else {
            format!("backlog {backlog}")
        };
        if current == 0 {
            return Decision {
                desired: 0,
                recommended: Some(0),
                limit: None,
                reason: format!("{idle_text}: staying at 0"),
            };
        }
        recommended = 0;
        text = format!("{idle_text} → 0");
        match idle_duration(history, now) {
            Some(idle_for) if idle_for >= cfg.scale_to_zero_cooldown => target = 0,
            idle_for => {
                target = obj.replicas.max(1);
                limit = Some(Limit::ScaleToZeroCooldown);
                let so_far = idle_for.map_or_else(
                    || "nothing recorded yet".to_string(),
                    |d| format!("{} so far", fmt_dur(d)),
                );
                notes.push_str(&format!(
                    "; scale to zero held at {target} until idle for {} ({so_far})",
                    fmt_dur(cfg.scale_to_zero_cooldown)
                ));
            }
        }
    } else {
        recommended = obj.replicas;
        target = obj.replicas;
        text = obj.text;
    }

    // Bounds.
    let bounded = target.clamp(min, max);
    if bounded > target {
        limit = Some(Limit::Min);
        notes.push_str(&format!(", held at min {min}"));
    } else if bounded < target {
        limit = Some(Limit::Max);
        notes.push_str(&format!(", capped at max {max}"));
    }

    // Stabilization (HPA semantics): a scale-up goes only as far as the lowest
    // recommendation of the scale-up window, a scale-down only as far as the highest of the
    // scale-down window; neither ever moves against the raw direction.
    let up = window_extreme(history, now, cfg.scale_up_window, bounded, i32::min);
    let down = window_extreme(history, now, cfg.scale_down_window, bounded, i32::max);
    let stabilized = if up > current {
        up
    } else if down < current {
        down
    } else {
        current
    };
    if stabilized != bounded {
        limit = Some(Limit::Stabilization);
        if bounded > current {
            let w = fmt_dur(cfg.scale_up_window);
            if stabilized == current {
                notes.push_str(&format!(
                    "; scale-up from {current} held by {w} window (lowest recent: {up})"
                ));
            } else {
                notes.push_str(&format!(
                    "; scale-up from {current} limited to {stabilized} by {w} window (lowest recent: {up})"
                ));
            }
        } else {
            let w = fmt_dur(cfg.scale_down_window);
            if stabilized == current {
                notes.push_str(&format!(
                    "; scale-down from {current} held by {w} window (highest recent: {down})"
                ));
            } else {
                notes.push_str(&format!(
                    "; scale-down from {current} limited to {stabilized} by {w} window (highest recent: {down})"
                ));
            }
        }
    }

    // Step limits.
    let mut desired = stabilized;
    if desired > current {
        if let Some(step) = cfg.scale_up_max_step.filter(|s| *s >= 1) {
            let cap = current.saturating_add(step);
            if desired > cap {
                desired = cap;
                limit = Some(Limit::MaxStepUp);
                notes.push_str(&format!(
                    "; scale-up limited to {step} per step ({current} → {cap})"
                ));
            }
        }
    } else if desired < current
        && let Some(step) = cfg.scale_down_max_step.filter(|s| *s >= 1)
    {
        let floor = current.saturating_sub(step).max(0);
        if desired < floor {
            desired = floor;
            limit = Some(Limit::MaxStepDown);
            notes.push_str(&format!(
                "; scale-down limited to {step} per step ({current} → {floor})"
            ));
        }
    }

    // Bounds win over step limits when the workload starts outside them.
    if desired > max {
        desired = max;
        limit = Some(Limit::Max);
        notes.push_str(&format!("; capped at max {max}"));
    } else if desired < min {
        desired = min;
        limit = Some(Limit::Min);
        notes.push_str(&format!("; raised to min {min}"));
    }

    // Activation from zero: work above the threshold always gets at least one replica.
    if current == 0 && desired == 0 && !idle && max >= 1 {
        desired = 1;
        notes.push_str("; activating with 1");
    }

    Decision {
        desired,
        recommended: Some(recommended),
        limit,
        reason: format!("{text}{notes}"),
    }
}

fn decide_unavailable(
    cfg: &PolicyConfig,
    history: &History,
    current: i32,
    min: i32,
    max: i32,
) -> Decision {
    let failures = history.consecutive_failures.saturating_add(1);
    let head = format!(
        "source unavailable ({failures} failure{})",
        if failures == 1 { "" } else { "s" }
    );
    let (mut desired, mut reason) = match cfg.fallback {
        Fallback::Hold => (current, format!("{head}: holding {current}")),
        Fallback::Fixed {
            replicas,
            after_failures,
        } => {
            let floor = replicas.clamp(min, max);
            if failures >= after_failures.max(1) {
                if current < floor {
                    (
                        floor,
                        format!("{head}: fallback raises {current} → {floor}"),
                    )
                } else {
                    (
                        current,
                        format!("{head}: holding {current} (fallback {floor} never lowers)"),
                    )
                }
            } else {
                (
                    current,
                    format!(
                        "{head}: holding {current}; fallback to {floor} after {after_failures} failures"
                    ),
                )
            }
        }
    };
    let mut limit = Limit::NoData;
    if desired > max {
        desired = max;
        limit = Limit::Max;
        reason.push_str(&format!(", capped at max {max}"));
    } else if desired < min {
        desired = min;
        limit = Limit::Min;
        reason.push_str(&format!(", raised to min {min}"));
    }
    Decision {
        desired,
        recommended: None,
        limit: Some(limit),
        reason,
    }
}

fn pause(d: Decision, current: i32) -> Decision {
    let reason = if d.desired != current {
        format!(
            "paused: would scale {current} → {} ({})",
            d.desired, d.reason
        )
    } else {
        format!("paused: would stay at {current} ({})", d.reason)
    };
    Decision {
        desired: current,
        recommended: d.recommended,
        limit: Some(Limit::Paused),
        reason,
    }
}

/// How long the backlog has been at or below the activation threshold, as far as the history
/// shows. Never active: measured from the oldest recommendation (conservative after a
/// restart). None when there is nothing to measure from.
fn idle_duration(history: &History, now: Timestamp) -> Option<Duration> {
    let since = history
        .last_active
        .or_else(|| history.recommendations.iter().map(|(t, _)| *t).min())?;
    Some(elapsed(since, now))
}

/// `now - since`, zero if `since` is in the future, saturating.
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let ns = now.as_nanosecond().saturating_sub(since.as_nanosecond());
    if ns <= 0 {
        return Duration::ZERO;
    }
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    let nanos = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, nanos)
}

fn duration_ns(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

/// Fold `new` with every recommendation younger than `window` (a zero window: `new` alone).
fn window_extreme(
    history: &History,
    now: Timestamp,
    window: Duration,
    new: i32,
    pick: fn(i32, i32) -> i32,
) -> i32 {
    if window.is_zero() {
        return new;
    }
    let w = duration_ns(window);
    let now_ns = now.as_nanosecond();
    history
        .recommendations
        .iter()
        .filter(|(t, _)| now_ns.saturating_sub(t.as_nanosecond()) < w)
        .map(|(_, r)| *r)
        .fold(new, pick)
}

/// `ceil(a / b)` for `a >= 0`, `b >= 1`, exact.
fn ceil_div(a: i64, b: i64) -> i64 {
    let a = a.max(0);
    let b = b.max(1);
    a / b + i64::from(a % b != 0)
}

fn saturate_i32(v: i64) -> i32 {
    i32::try_from(v.max(0)).unwrap_or(i32::MAX)
}

/// Ceiling of a non-negative replica need, tolerant of float noise just above an integer
/// (`6.000000000001` is 6), saturating at `i32::MAX`; NaN and negatives are 0.
fn ceil_to_i32(x: f64) -> i32 {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let c = (x * (1.0 - 1e-12)).ceil();
    if c >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        // In range and integral: the cast is exact.
        c as i32
    }
}

fn valid_rate(r: f64) -> bool {
    r.is_finite() && r >= 0.0
}

fn fmt_rate(r: f64) -> String {
    if r >= 1.0 || r == 0.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.3}")
    }
}

fn fmt_dur(d: Duration) -> String {
    crate::validate::format_duration(d)
}

/// One per-replica throughput measurement, when this reading can give one.
///
/// The ack rate (or, without acks, the deliver rate) measures capacity only while the
/// consumers are saturated; with a short queue it measures demand. Rule: the consumers count
/// as saturated when at least one message per busy replica is waiting *ready*, beyond what
/// is already in flight. Busy replicas are the broker's consumer count when positive, else
/// `current`. Without a `ready` figure, ready is estimated as `backlog - unacked`, assuming
/// one in-flight message per busy replica when `unacked` is unknown too.
fn throughput_sample(obs: &Observation, current: i32) -> Option<f64> {
    let busy = match obs.consumers {
        Some(c) if c > 0 => c,
        _ => i64::from(current),
    };
    if busy <= 0 {
        return None;
    }
    let waiting = obs.ready.unwrap_or_else(|| {
        obs.backlog
            .max(0)
            .saturating_sub(obs.unacked.unwrap_or(busy).max(0))
    });
    if waiting < busy {
        return None;
    }
    let positive = |r: &f64| valid_rate(*r) && *r > 0.0;
    let rate = obs
        .ack_rate
        .filter(positive)
        .or(obs.deliver_rate.filter(positive))?;
    let sample = rate / busy as f64;
    (sample.is_finite() && sample > 0.0).then_some(sample)
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
    ///
    /// With a reading: remembers the recommendation clamped to `[min, max]`, resets the
    /// failure count, marks the queue active when the backlog exceeds `activationBacklog`,
    /// and updates the per-replica throughput (EWMA, alpha [`THROUGHPUT_EWMA_ALPHA`]) when
    /// the consumers were saturated (see `throughput_sample`). Without one: counts a failure.
    /// Always: notes a scale when `decision.desired != current`, and forgets recommendations
    /// older than the longest window (the scale-to-zero cooldown counts as a window when
    /// `minReplicas` is 0), keeping at least the newest.
    pub fn record(
        &mut self,
        input: Input<'_>,
        decision: &Decision,
        cfg: &PolicyConfig,
        current: i32,
        now: Timestamp,
    ) {
        let current = current.max(0);
        let (min, max) = bounds(cfg);
        match input {
            Input::Observed(obs) => {
                self.consecutive_failures = 0;
                if let Some(rec) = decision.recommended {
                    self.recommendations.push_back((now, rec.clamp(min, max)));
                }
                if obs.backlog.max(0) > cfg.activation_backlog.max(0) {
                    self.last_active = Some(now);
                }
                if let Some(sample) = throughput_sample(obs, current) {
                    let prev = self
                        .per_replica_throughput
                        .filter(|m| valid_rate(*m) && *m > 0.0);
                    self.per_replica_throughput = Some(match prev {
                        Some(prev) => {
                            THROUGHPUT_EWMA_ALPHA * sample + (1.0 - THROUGHPUT_EWMA_ALPHA) * prev
                        }
                        None => sample,
                    });
                }
            }
            Input::Unavailable => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
        }
        if decision.desired != current {
            self.last_scale = Some(now);
        }
        self.prune(cfg, now);
    }

    fn prune(&mut self, cfg: &PolicyConfig, now: Timestamp) {
        let mut keep = cfg.scale_up_window.max(cfg.scale_down_window);
        if cfg.min_replicas <= 0 {
            keep = keep.max(cfg.scale_to_zero_cooldown);
        }
        let keep = duration_ns(keep);
        let now_ns = now.as_nanosecond();
        while self.recommendations.len() > 1 {
            match self.recommendations.front() {
                Some((t, _)) if now_ns.saturating_sub(t.as_nanosecond()) > keep => {
                    self.recommendations.pop_front();
                }
                _ => break,
            }
        }
        while self.recommendations.len() > MAX_RECOMMENDATIONS {
            self.recommendations.pop_front();
        }
    }
}
