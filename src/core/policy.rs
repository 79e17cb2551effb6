//! The scaling policy: pure decisions, no clients, no clocks.
//!
//! `decide` takes the latest reading (or the fact that there is none), the validated
//! settings, the history kept by the caller, the current replica count and `now`, and
//! returns what the count should be and why. `History::record` folds a decision back into
//! the history. The operator and the simulator drive the same two functions.
//!
//! For a reading, in order:
//! 1. objective: `ceil(backlog / backlogPerReplica)` (exact integer ceiling), and with
//!    `maxDrainTime` and a measured per-replica throughput μ,
//!    `ceil((arrivals + backlog / maxDrainTime) / μ)`; the larger wins;
//! 2. scale to zero (`minReplicas: 0`): a backlog at or below `activationBacklog` is idle
//!    and recommends 0; at zero it stays there, otherwise zero waits for
//!    `scaleToZeroCooldown` of idleness (held at 1 or more meanwhile); above the threshold
//!    a workload at zero gets at least one replica;
//! 3. bounds `[minReplicas, maxReplicas]`;
//! 4. HPA-style stabilization: a scale-up is limited to the lowest recommendation of the
//!    scale-up window, a scale-down to the highest of the scale-down window;
//! 5. step limits; then the bounds again (they win when `current` starts outside them).
//!
//! Without a reading the count is held (or raised by a `Fixed` fallback), never lowered
//! because of missing data. `paused` keeps `current` and says what would have happened.
//! `Decision::limit` names the last stage that changed the result.

use std::collections::VecDeque;
use std::time::Duration;

use jiff::Timestamp;

use crate::core::observation::Observation;

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
    /// Message-wait objective (policy v2): size the fleet from the measured per-replica
    /// throughput, the smoothed arrival rate and its trend so that messages wait at most this
    /// long. Replaces the backlog objective once the throughput is measured.
    pub max_message_wait: Option<Duration>,
    /// How long a new replica takes to start consuming; the wait objective looks this far
    /// (plus one poll interval) ahead.
    pub startup_delay: Duration,
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
    /// The source's limit on useful replicas (Kafka: the partition count).
    ReplicaCap,
}

/// The outcome of one tick.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The replica count to set (equal to `current` when nothing should change).
    pub desired: i32,
    /// What the objective alone asks for, before bounds, steps and windows (None without data).
    pub recommended: Option<i32>,
    /// What the objective asks for before the source's replica cap (the partition count),
    /// when that cap lowered it.
    pub uncapped: Option<i32>,
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
    /// Smoothed arrival rate and its trend, once a publish rate has been read.
    pub arrival: Option<ArrivalEstimate>,
    /// Messages one replica holds at once (its prefetch), seen while saturated.
    pub slots_per_replica: Option<f64>,
    /// Consumers (or replicas) at the last reading: a rate averaged over the broker's
    /// window says something per consumer only while their number held still.
    pub last_busy: Option<i64>,
}

/// Smoothed arrival rate and its short-term trend (Holt's linear smoothing of the broker's
/// publish rate).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrivalEstimate {
    /// Messages per second.
    pub rate: f64,
    /// Change of the rate, messages per second per second.
    pub trend: f64,
    /// When the last sample was folded in.
    pub at: Timestamp,
}

/// Weight of the newest publish-rate sample in the arrival estimate.
pub const ARRIVAL_ALPHA: f64 = 0.05;
/// A publish-rate sample this many standard deviations (Poisson, over one poll interval)
/// from the estimate is a level shift.
pub const SHIFT_SIGMAS: f64 = 4.0;
/// ... and differs by at least this many messages per poll interval.
pub const SHIFT_MIN_COUNT: f64 = 5.0;
/// Weight of the newest slope in the arrival trend.
pub const TREND_BETA: f64 = 0.02;
/// A trend older than this many poll intervals without a sample is dropped.
const TREND_MAX_GAP_POLLS: f64 = 4.0;
/// Share of `maxMessageWait` that waiting messages may use as a buffer in steady state.
pub const WAIT_BUFFER_SHARE: f64 = 0.4;
/// Share of `maxMessageWait` in which waiting beyond the buffer is drained; the rest covers
/// the time new replicas need to start and the age of the broker's statistics.
pub const WAIT_DRAIN_SHARE: f64 = 0.3;
/// Waiting beyond the buffer is drained only once it exceeds this multiple of it (between
/// the buffer and this the fleet just keeps up: a band, so filling and draining do not take
/// turns).
pub const WAIT_DRAIN_ABOVE: f64 = 1.5;
/// With arrivals falling and the queue below its buffer, the fleet is sized for the
/// arrivals expected this many `maxMessageWait`s ahead (the queue holds the difference
/// until the fleet catches up)...
pub const WAIT_FALL_HORIZON: f64 = 3.0;
/// ... but never more than this share below today's arrivals.
pub const WAIT_FALL_MAX: f64 = 0.15;
/// Within the buffer, a scale-up waits until the shortfall exceeds this share of the fleet
/// (one replica at least), like the HPA's tolerance; then it goes to the full need.
pub const WAIT_TOLERANCE: f64 = 0.1;

/// Weight of the newest sample in the smoothed per-replica throughput.
pub const THROUGHPUT_EWMA_ALPHA: f64 = 0.1;

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

fn objective(
    backlog: i64,
    obs: &Observation,
    cfg: &PolicyConfig,
    history: &History,
    current: i32,
    now: Timestamp,
) -> Objective {
    let per = cfg.backlog_per_replica.max(1);
    let by_backlog = saturate_i32(ceil_div(backlog, per));
    let backlog_text = if backlog == 0 {
        "backlog 0 → 0".to_string()
    } else {
        format!("backlog {backlog} at {per}/replica → {by_backlog}")
    };
    if let Some(wait) = cfg.max_message_wait.filter(|w| !w.is_zero()) {
        return match wait_objective(obs, cfg, history, current, now, wait) {
            Some(obj) => obj,
            None => Objective {
                replicas: by_backlog,
                text: format!("{backlog_text} (throughput not yet measured)"),
            },
        };
    }
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
    let d = crate::core::duration::format_duration(drain);
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

/// Policy v2: the message-wait objective. None until the per-replica throughput is measured.
///
/// With μ the smoothed per-replica throughput, λ the smoothed arrival rate and s its trend,
/// Q the messages waiting (ready; in-flight ones are already being served), n the current
/// count, W = `maxMessageWait` and h = startupDelay + pollInterval (how long until a
/// replica asked for now consumes, and until the next look):
///
/// ```text
/// λ⁺   = λ + min(max(s, 0)·h, λ/2)              arrivals when new replicas are up
/// Q⁺   = max(0, Q + (λ + (λ⁺−λ)/2 − n·μ)·h)     waiting by then with the current fleet
/// Q*   = λ⁺ · W · WAIT_BUFFER_SHARE               waiting messages the objective accepts
/// D    = Q⁺ − Q*   when Q⁺ > Q* · WAIT_DRAIN_ABOVE, else 0
/// F    = min(−s · W · WAIT_FALL_HORIZON, λ · WAIT_FALL_MAX)   when s < 0 and Q⁺ < Q*, else 0
/// need = (λ⁺ + D / (W · WAIT_DRAIN_SHARE) − F) / μ
/// ```
///
/// The queue is a buffer: up to Q* waiting messages (a wait of W · WAIT_BUFFER_SHARE) are
/// fine, and only well past it (WAIT_DRAIN_ABOVE) is the excess drained within
/// W · WAIT_DRAIN_SHARE. A rising trend is met ahead of time; a falling one lets the
/// queue fill toward its buffer while the fleet shrinks with the arrivals. While the queue
/// is within its buffer, a shortfall up to [`WAIT_TOLERANCE`] of the fleet (one replica at
/// least) is left to the queue; a larger one gets the full need. The need grows with the
/// backlog, never falls with it.
fn wait_objective(
    obs: &Observation,
    cfg: &PolicyConfig,
    history: &History,
    current: i32,
    now: Timestamp,
    wait: Duration,
) -> Option<Objective> {
    let mu = history
        .per_replica_throughput
        .filter(|m| valid_rate(*m) && *m > 0.0)?;
    let estimate = arrival_update(history.arrival, obs, cfg, now);
    let (rate, trend, known) = match estimate {
        Some(e) => (e.rate, e.trend, true),
        // No publish rate: what is being consumed is a lower bound of what arrives.
        None => (
            obs.ack_rate
                .or(obs.deliver_rate)
                .filter(|r| valid_rate(*r))
                .unwrap_or(0.0),
            0.0,
            false,
        ),
    };
    let waiting = waiting_of(obs);
    let h = (cfg.startup_delay + cfg.poll_interval).as_secs_f64();
    let w = wait.as_secs_f64();
    let n = f64::from(current.max(0));
    let rise = (trend.max(0.0) * h).min(rate / 2.0);
    let rate_up = rate + rise;
    // waiting is at most i64::MAX; as f64 it is approximate only far beyond real queues.
    let projected = (waiting as f64 + (rate + rise / 2.0 - n * mu) * h).max(0.0);
    let accepted = rate_up * w * WAIT_BUFFER_SHARE;
    let excess = if projected > accepted * WAIT_DRAIN_ABOVE {
        projected - accepted
    } else {
        0.0
    };
    let fall = if projected < accepted && trend < 0.0 {
        (-trend * w * WAIT_FALL_HORIZON).min(rate * WAIT_FALL_MAX)
    } else {
        0.0
    };
    let drain = (w * WAIT_DRAIN_SHARE).max(1.0);
    let mut need = (rate_up + excess / drain - fall) / mu;
    // Within the buffer a small shortfall is left to the queue (noise in the rates would
    // otherwise add a replica and remove it again); a larger one, or waiting messages past
    // the band, get the full need.
    if excess <= 0.0 && need > n && need - n <= (n * WAIT_TOLERANCE).max(1.0) {
        need = n;
    }
    let mut replicas = ceil_to_i32(need);
    // Messages in the queue always get a consumer.
    if obs.backlog > 0 {
        replicas = replicas.max(1);
    }
    let trend_text = if rise >= 0.01 * rate && rise > 0.0 {
        format!(" rising {}/s²", fmt_rate(trend))
    } else if fall > 0.0 {
        format!(" falling {}/s²", fmt_rate(-trend))
    } else {
        String::new()
    };
    let unknown = if known { "" } else { " (publish rate unknown)" };
    Some(Objective {
        replicas,
        text: format!(
            "arrivals {}/s{trend_text}{unknown}, {waiting} waiting (≈{} in {}, {} accepted) at {}/s per replica, wait ≤ {} → {replicas}",
            fmt_rate(rate),
            projected.round(),
            fmt_dur(Duration::from_secs_f64(h)),
            accepted.round(),
            fmt_rate(mu),
            fmt_dur(wait),
        ),
    })
}

/// Messages waiting for a consumer: ready ones, or the backlog minus those in flight.
fn waiting_of(obs: &Observation) -> i64 {
    obs.ready
        .unwrap_or_else(|| {
            obs.backlog
                .max(0)
                .saturating_sub(obs.unacked.unwrap_or(0).max(0))
        })
        .max(0)
}

/// The arrival estimate after folding in this reading's publish rate (Holt's linear
/// smoothing: level weight [`ARRIVAL_ALPHA`], trend weight [`TREND_BETA`]). Without a
/// usable publish rate the previous estimate stands.
fn arrival_update(
    prev: Option<ArrivalEstimate>,
    obs: &Observation,
    cfg: &PolicyConfig,
    now: Timestamp,
) -> Option<ArrivalEstimate> {
    let Some(sample) = obs.publish_rate.filter(|r| valid_rate(*r)) else {
        return prev;
    };
    let Some(prev) = prev.filter(|p| valid_rate(p.rate) && p.trend.is_finite()) else {
        return Some(ArrivalEstimate {
            rate: sample,
            trend: 0.0,
            at: now,
        });
    };
    let dt = elapsed(prev.at, now).as_secs_f64();
    if dt <= 0.0 {
        return Some(prev);
    }
    let max_gap = cfg.poll_interval.as_secs_f64().max(1.0) * TREND_MAX_GAP_POLLS;
    let trend = if dt > max_gap { 0.0 } else { prev.trend };
    let predicted = (prev.rate + trend * dt).max(0.0);
    // A level shift (a sample far outside what Poisson noise around the prediction allows
    // over one poll interval) replaces the estimate at once: a burst or its end is followed
    // in one step instead of a ramp of small ones, and the trend starts again from zero (a
    // step says nothing about a slope).
    let span = cfg.poll_interval.as_secs_f64().max(1.0);
    let expected = predicted * span;
    if (sample * span - expected).abs() > SHIFT_SIGMAS * expected.max(1.0).sqrt() + SHIFT_MIN_COUNT
    {
        return Some(ArrivalEstimate {
            rate: sample,
            trend: 0.0,
            at: now,
        });
    }
    let rate = ARRIVAL_ALPHA * sample + (1.0 - ARRIVAL_ALPHA) * predicted;
    let trend = TREND_BETA * (rate - prev.rate) / dt + (1.0 - TREND_BETA) * trend;
    Some(ArrivalEstimate {
        rate: rate.max(0.0),
        trend: if trend.is_finite() { trend } else { 0.0 },
        at: now,
    })
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
    let mut obj = objective(backlog, obs, cfg, history, current, now);
    let mut limit = None;
    let mut notes = String::new();
    // The source's cap on useful replicas (never below one while there is work).
    let mut uncapped = None;
    if let Some(cap) = &obs.replica_cap {
        let n = cap.max.max(i32::from(backlog > 0));
        if obj.replicas > n {
            uncapped = Some(obj.replicas);
            obj.replicas = n;
            obj.text = format!("{}, capped at {}", obj.text, cap.why);
            limit = Some(Limit::ReplicaCap);
        }
    }

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
                uncapped: None,
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
    let mut stabilized = if up > current {
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

    // With the message-wait objective, changes are spaced: no scale-down sooner than one
    // scale-down window after the last change (the queue absorbs the surplus meanwhile).
    if cfg.max_message_wait.is_some()
        && stabilized < current
        && let Some(last) = history.last_scale
    {
        let since = elapsed(last, now);
        if since < cfg.scale_down_window {
            limit = Some(Limit::Stabilization);
            notes.push_str(&format!(
                "; scale-down from {current} to {stabilized} waits until {} after the last change ({} so far)",
                fmt_dur(cfg.scale_down_window),
                fmt_dur(since)
            ));
            stabilized = current;
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
        uncapped,
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
        uncapped: None,
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
        uncapped: d.uncapped,
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
    crate::core::duration::format_duration(d)
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
    let busy = busy_of(obs, current);
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

/// The consumers serving the queue: the broker's count when positive, else `current`.
fn busy_of(obs: &Observation, current: i32) -> i64 {
    match obs.consumers {
        Some(c) if c > 0 => c,
        _ => i64::from(current),
    }
}

/// Messages one replica holds at once (its prefetch), from a saturated reading: every
/// consumer's prefetch is full, so `unacked / consumers` is the prefetch.
fn slots_sample(obs: &Observation, current: i32) -> Option<f64> {
    let busy = busy_of(obs, current);
    let unacked = obs.unacked.filter(|u| *u > 0)?;
    (busy > 0).then(|| unacked as f64 / busy as f64)
}

/// Per-replica throughput from a reading whose consumers are not saturated, by Little's
/// law: the mean processing time is `unacked / ack rate`, and a replica processes `slots`
/// messages at once, so it completes `slots × ack rate / unacked` per second when busy.
/// Needs a handful of messages in flight to say anything.
fn unsaturated_throughput_sample(obs: &Observation, slots: f64) -> Option<f64> {
    let unacked = obs.unacked.filter(|u| *u >= MIN_IN_FLIGHT_FOR_LITTLE)?;
    let positive = |r: &f64| valid_rate(*r) && *r > 0.0;
    let rate = obs.ack_rate.filter(positive)?;
    // Little's law holds for a flow in balance: while messages in flight pile up or drain
    // (a burst starts or ends) the window's ack rate and the instant in-flight count
    // disagree.
    let arrivals = obs.publish_rate.filter(|r| valid_rate(*r))?;
    if (arrivals - rate).abs() > LITTLE_BALANCE * rate {
        return None;
    }
    let sample = slots * rate / unacked as f64;
    (sample.is_finite() && sample > 0.0 && slots.is_finite() && slots > 0.0).then_some(sample)
}

/// Largest difference between publish and ack rate (share of the ack rate) for a
/// Little's-law throughput sample.
const LITTLE_BALANCE: f64 = 0.2;

/// Fewest messages in flight for a Little's-law throughput sample.
const MIN_IN_FLIGHT_FOR_LITTLE: i64 = 5;

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
                self.arrival = arrival_update(self.arrival, obs, cfg, now);
                let busy = busy_of(obs, current);
                let steady = self.last_busy.replace(busy) == Some(busy);
                let sample = match throughput_sample(obs, current).filter(|_| steady) {
                    Some(sample) => {
                        if let Some(slots) = slots_sample(obs, current) {
                            self.slots_per_replica = Some(slots);
                        }
                        Some(sample)
                    }
                    None if steady => self
                        .slots_per_replica
                        .and_then(|slots| unsaturated_throughput_sample(obs, slots)),
                    None => None,
                };
                if let Some(sample) = sample {
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).expect("valid timestamp")
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            min_replicas: 1,
            max_replicas: 10,
            paused: false,
            backlog_per_replica: 100,
            max_drain_time: None,
            poll_interval: Duration::from_secs(5),
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::from_secs(300),
            scale_up_max_step: None,
            scale_down_max_step: None,
            activation_backlog: 0,
            scale_to_zero_cooldown: Duration::from_secs(300),
            fallback: Fallback::Hold,
            max_message_wait: None,
            startup_delay: Duration::from_secs(20),
        }
    }

    fn obs(backlog: i64) -> Observation {
        Observation {
            backlog,
            ready: Some(backlog.max(0)),
            unacked: Some(0),
            consumers: None,
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
            consumer_utilisation: None,
            observed_at: t(0),
            replica_cap: None,
        }
    }

    fn observed(
        o: &Observation,
        cfg: &PolicyConfig,
        h: &History,
        current: i32,
        now: i64,
    ) -> Decision {
        decide(Input::Observed(o), cfg, h, current, t(now))
    }

    /// Drives decide + record like the controller does, applying each decision.
    struct Sim {
        cfg: PolicyConfig,
        history: History,
        current: i32,
        now: i64,
    }

    impl Sim {
        fn new(cfg: PolicyConfig, current: i32) -> Self {
            Sim {
                cfg,
                history: History::default(),
                current,
                now: 0,
            }
        }

        fn seeded(cfg: PolicyConfig, current: i32) -> Self {
            Sim {
                cfg,
                history: History::seeded(current, t(0)),
                current,
                now: 0,
            }
        }

        /// One tick at the current time, then advance by `step` seconds.
        fn tick(&mut self, input: Input<'_>, step: i64) -> Decision {
            let d = decide(input, &self.cfg, &self.history, self.current, t(self.now));
            self.history
                .record(input, &d, &self.cfg, self.current, t(self.now));
            self.current = d.desired;
            self.now += step;
            d
        }

        fn backlog(&mut self, backlog: i64) -> Decision {
            let o = obs(backlog);
            self.tick(Input::Observed(&o), 5)
        }
    }

    /// Deterministic pseudo-random numbers for property-style loops.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }

        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            let span = u64::try_from(hi - lo + 1).expect("non-empty range");
            lo + i64::try_from(self.next() % span).expect("fits")
        }

        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            xs[usize::try_from(self.next()).expect("fits") % xs.len()]
        }
    }

    fn random_cfg(r: &mut Rng) -> PolicyConfig {
        let min = r.range(0, 4) as i32;
        PolicyConfig {
            min_replicas: min,
            max_replicas: min + r.range(0, 15) as i32,
            paused: false,
            backlog_per_replica: r.pick(&[1, 7, 100, 1000]),
            max_drain_time: r.pick(&[
                None,
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(120)),
            ]),
            poll_interval: Duration::from_secs(5),
            scale_up_window: Duration::from_secs(r.pick(&[0, 30, 300])),
            scale_down_window: Duration::from_secs(r.pick(&[0, 60, 300])),
            scale_up_max_step: r.pick(&[None, Some(1), Some(4)]),
            scale_down_max_step: r.pick(&[None, Some(1), Some(3)]),
            activation_backlog: r.pick(&[0, 5, 100]),
            scale_to_zero_cooldown: Duration::from_secs(r.pick(&[0, 60, 300])),
            max_message_wait: r.pick(&[None, Some(Duration::from_secs(90))]),
            startup_delay: Duration::from_secs(20),
            fallback: if r.range(0, 1) == 0 {
                Fallback::Hold
            } else {
                Fallback::Fixed {
                    replicas: min,
                    after_failures: r.range(1, 3) as u32,
                }
            },
        }
    }

    fn random_history(r: &mut Rng, cfg: &PolicyConfig) -> History {
        let mut h = History::default();
        let mut at = -r.range(0, 600);
        for _ in 0..r.range(0, 8) {
            h.recommendations
                .push_back((t(at), r.range(0, i64::from(cfg.max_replicas)) as i32));
            at += r.range(1, 90);
        }
        h.last_active = r.pick(&[None, Some(t(-400)), Some(t(-30))]);
        h.per_replica_throughput =
            r.pick(&[None, Some(0.5), Some(12.5), Some(f64::NAN), Some(-1.0)]);
        h.consecutive_failures = r.range(0, 5) as u32;
        h
    }

    fn random_obs(r: &mut Rng) -> Observation {
        let mut o = obs(r.pick(&[
            -5,
            0,
            1,
            5,
            99,
            100,
            101,
            750,
            5000,
            1_000_000,
            i64::MAX,
            i64::MIN,
        ]));
        o.publish_rate = r.pick(&[
            None,
            Some(0.0),
            Some(50.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(-3.0),
        ]);
        o.ack_rate = r.pick(&[None, Some(10.0), Some(f64::NAN)]);
        o.consumers = r.pick(&[None, Some(0), Some(3)]);
        o
    }

    // ---- the reason examples ----

    #[test]
    fn capped_at_max() {
        let d = observed(&obs(1200), &cfg(), &History::default(), 5, 0);
        assert_eq!(d.desired, 10);
        assert_eq!(d.recommended, Some(12));
        assert_eq!(d.limit, Some(Limit::Max));
        assert_eq!(
            d.reason,
            "backlog 1200 at 100/replica → 12, capped at max 10"
        );
    }

    #[test]
    fn held_at_min() {
        let d = observed(&obs(0), &cfg(), &History::default(), 1, 0);
        assert_eq!(d.desired, 1);
        assert_eq!(d.recommended, Some(0));
        assert_eq!(d.limit, Some(Limit::Min));
        assert_eq!(d.reason, "backlog 0 → 0, held at min 1");
    }

    #[test]
    fn scale_down_held_by_window() {
        let h = History::seeded(6, t(-10));
        let d = observed(&obs(40), &cfg(), &h, 6, 0);
        assert_eq!(d.desired, 6);
        assert_eq!(d.recommended, Some(1));
        assert_eq!(d.limit, Some(Limit::Stabilization));
        assert_eq!(
            d.reason,
            "backlog 40 at 100/replica → 1; scale-down from 6 held by 5m window (highest recent: 6)"
        );
    }

    #[test]
    fn drain_objective_wins() {
        let mut c = cfg();
        c.backlog_per_replica = 1000;
        c.max_drain_time = Some(Duration::from_secs(120));
        let h = History {
            per_replica_throughput: Some(12.5),
            ..History::default()
        };
        let mut o = obs(3000);
        o.publish_rate = Some(50.0);
        let d = observed(&o, &c, &h, 2, 0);
        // (50 + 3000/120) / 12.5 = 6; backlog alone would ask for 3.
        assert_eq!(d.recommended, Some(6));
        assert_eq!(d.desired, 6);
        assert_eq!(d.limit, None);
        assert_eq!(
            d.reason,
            "arrivals 50.0/s + backlog 3000 over 2m at 12.5/s per replica → 6"
        );
    }

    #[test]
    fn unavailable_holds() {
        let h = History {
            consecutive_failures: 2,
            ..History::default()
        };
        let d = decide(Input::Unavailable, &cfg(), &h, 4, t(0));
        assert_eq!(d.desired, 4);
        assert_eq!(d.recommended, None);
        assert_eq!(d.limit, Some(Limit::NoData));
        assert_eq!(d.reason, "source unavailable (3 failures): holding 4");
        let d = decide(Input::Unavailable, &cfg(), &History::default(), 4, t(0));
        assert_eq!(d.reason, "source unavailable (1 failure): holding 4");
    }

    #[test]
    fn paused_says_what_it_would_do() {
        let mut c = cfg();
        c.paused = true;
        let d = observed(&obs(500), &c, &History::default(), 2, 0);
        assert_eq!(d.desired, 2);
        assert_eq!(d.recommended, Some(5));
        assert_eq!(d.limit, Some(Limit::Paused));
        assert_eq!(
            d.reason,
            "paused: would scale 2 → 5 (backlog 500 at 100/replica → 5)"
        );
        let d = observed(&obs(200), &c, &History::default(), 2, 0);
        assert_eq!(d.desired, 2);
        assert_eq!(
            d.reason,
            "paused: would stay at 2 (backlog 200 at 100/replica → 2)"
        );
        let d = decide(Input::Unavailable, &c, &History::default(), 3, t(0));
        assert_eq!((d.desired, d.limit), (3, Some(Limit::Paused)));
        assert_eq!(
            d.reason,
            "paused: would stay at 3 (source unavailable (1 failure): holding 3)"
        );
        // Paused leaves even an out-of-bounds count alone.
        let d = observed(&obs(0), &c, &History::default(), 20, 0);
        assert_eq!(d.desired, 20);
    }

    // ---- objective ----

    #[test]
    fn backlog_ceiling_is_exact() {
        let c = PolicyConfig {
            max_replicas: i32::MAX,
            scale_down_window: Duration::ZERO,
            ..cfg()
        };
        let h = History::default();
        for (backlog, want) in [(1, 1), (99, 1), (100, 1), (101, 2), (1000, 10), (1001, 11)] {
            assert_eq!(
                observed(&obs(backlog), &c, &h, 1, 0).recommended,
                Some(want),
                "{backlog}"
            );
        }
        // Huge backlogs saturate instead of overflowing.
        let one = PolicyConfig {
            backlog_per_replica: 1,
            ..c.clone()
        };
        let d = observed(&obs(i64::MAX), &one, &h, 1, 0);
        assert_eq!((d.recommended, d.desired), (Some(i32::MAX), i32::MAX));
        // Negative backlog counts as empty.
        let d = observed(&obs(-40), &c, &h, 3, 0);
        assert_eq!((d.recommended, d.desired), (Some(0), 1));
        assert_eq!(d.reason, "backlog 0 → 0, held at min 1");
    }

    #[test]
    fn drain_objective_without_throughput() {
        let mut c = cfg();
        c.max_drain_time = Some(Duration::from_secs(120));
        for mu in [
            None,
            Some(f64::NAN),
            Some(0.0),
            Some(-2.0),
            Some(f64::INFINITY),
        ] {
            let h = History {
                per_replica_throughput: mu,
                ..History::default()
            };
            let d = observed(&obs(450), &c, &h, 5, 0);
            assert_eq!(d.recommended, Some(5), "{mu:?}");
            assert_eq!(
                d.reason,
                "backlog 450 at 100/replica → 5 (throughput not yet measured)"
            );
        }
    }

    #[test]
    fn drain_objective_when_backlog_wins_and_unknown_arrivals() {
        let mut c = cfg();
        c.max_drain_time = Some(Duration::from_secs(60));
        let h = History {
            per_replica_throughput: Some(10.0),
            ..History::default()
        };
        // 900/60 = 15/s → 2 replicas by drain; 9 by backlog.
        let d = observed(&obs(900), &c, &h, 9, 0);
        assert_eq!(d.recommended, Some(9));
        assert_eq!(
            d.reason,
            "backlog 900 at 100/replica → 9 (draining within 1m needs 2)"
        );
        // Backlog per replica so large the drain objective decides; arrivals unknown.
        c.backlog_per_replica = 100_000;
        let d = observed(&obs(900), &c, &h, 1, 0);
        assert_eq!(d.recommended, Some(2));
        assert_eq!(
            d.reason,
            "backlog 900 over 1m at 10.0/s per replica → 2 (arrival rate unknown)"
        );
        // An empty queue still needs capacity for its arrivals.
        let mut o = obs(0);
        o.publish_rate = Some(35.0);
        let d = observed(&o, &c, &h, 1, 0);
        assert_eq!(d.recommended, Some(4));
        // A tiny throughput saturates and is capped by max.
        let slow = History {
            per_replica_throughput: Some(1e-300),
            ..History::default()
        };
        let d = observed(&obs(900), &c, &slow, 1, 0);
        assert_eq!(
            (d.recommended, d.desired, d.limit),
            (Some(i32::MAX), 10, Some(Limit::Max))
        );
        // Non-finite arrivals are ignored.
        let mut o = obs(900);
        o.publish_rate = Some(f64::INFINITY);
        assert_eq!(observed(&o, &c, &h, 1, 0).recommended, Some(2));
    }

    #[test]
    fn drain_ceiling_tolerates_float_noise() {
        assert_eq!(ceil_to_i32(6.0), 6);
        assert_eq!(ceil_to_i32(6.000_000_000_000_1), 6);
        assert_eq!(ceil_to_i32(6.001), 7);
        assert_eq!(ceil_to_i32(1e-9), 1);
        assert_eq!(ceil_to_i32(0.0), 0);
        assert_eq!(ceil_to_i32(-1.0), 0);
        assert_eq!(ceil_to_i32(f64::NAN), 0);
        assert_eq!(ceil_to_i32(f64::INFINITY), i32::MAX);
        assert_eq!(ceil_to_i32(3e9), i32::MAX);
    }

    // ---- properties ----

    #[test]
    fn never_outside_bounds() {
        let mut r = Rng(7);
        for i in 0..20_000 {
            let c = random_cfg(&mut r);
            let h = random_history(&mut r, &c);
            let current = r.range(-1, 25) as i32;
            let o = random_obs(&mut r);
            let input = if i % 5 == 0 {
                Input::Unavailable
            } else {
                Input::Observed(&o)
            };
            let d = decide(input, &c, &h, current, t(0));
            assert!(
                (c.min_replicas..=c.max_replicas).contains(&d.desired),
                "{c:?} {h:?} current {current} {o:?} → {d:?}"
            );
            assert!(!d.reason.is_empty());
            let mut paused = c.clone();
            paused.paused = true;
            assert_eq!(
                decide(input, &paused, &h, current, t(0)).desired,
                current.max(0)
            );
        }
    }

    #[test]
    fn more_backlog_never_means_fewer_replicas() {
        let mut r = Rng(11);
        let backlogs = [
            -3,
            0,
            1,
            4,
            5,
            6,
            50,
            99,
            100,
            101,
            250,
            999,
            1000,
            5000,
            100_000,
            i64::MAX,
        ];
        for _ in 0..3_000 {
            let c = random_cfg(&mut r);
            let h = random_history(&mut r, &c);
            let current = r.range(0, 20) as i32;
            let rate = r.pick(&[None, Some(0.0), Some(40.0)]);
            let mut last = i32::MIN;
            for b in backlogs {
                let mut o = obs(b);
                o.publish_rate = rate;
                let d = observed(&o, &c, &h, current, 0);
                assert!(
                    d.desired >= last,
                    "{c:?} {h:?} current {current} backlog {b}: {} < {last}",
                    d.desired
                );
                last = d.desired;
            }
        }
    }

    #[test]
    fn constant_load_gives_constant_count() {
        for c in [
            cfg(),
            PolicyConfig {
                scale_up_window: Duration::from_secs(60),
                scale_up_max_step: Some(2),
                scale_down_max_step: Some(1),
                ..cfg()
            },
        ] {
            let mut sim = Sim::seeded(c, 3);
            let mut seen = Vec::new();
            for _ in 0..1_000 {
                seen.push(sim.backlog(750).desired);
            }
            let settled = &seen[100..];
            assert!(settled.iter().all(|&n| n == 8), "{seen:?}");
            // Never overshoots on the way.
            assert!(seen.iter().all(|&n| (3..=8).contains(&n)), "{seen:?}");
        }
    }

    #[test]
    fn unavailable_never_lowers() {
        let mut r = Rng(3);
        for _ in 0..5_000 {
            let c = random_cfg(&mut r);
            let h = random_history(&mut r, &c);
            let current = r.range(i64::from(c.min_replicas), i64::from(c.max_replicas)) as i32;
            let d = decide(Input::Unavailable, &c, &h, current, t(0));
            assert!(d.desired >= current, "{c:?} {h:?} {current} → {d:?}");
            assert_eq!(d.recommended, None);
        }
    }

    #[test]
    fn fixed_fallback_after_failures_raises_only() {
        let c = PolicyConfig {
            fallback: Fallback::Fixed {
                replicas: 5,
                after_failures: 3,
            },
            ..cfg()
        };
        let mut sim = Sim::new(c.clone(), 2);
        let d1 = sim.tick(Input::Unavailable, 5);
        assert_eq!((d1.desired, d1.limit), (2, Some(Limit::NoData)));
        assert_eq!(
            d1.reason,
            "source unavailable (1 failure): holding 2; fallback to 5 after 3 failures"
        );
        assert_eq!(sim.tick(Input::Unavailable, 5).desired, 2);
        let d3 = sim.tick(Input::Unavailable, 5);
        assert_eq!(d3.desired, 5);
        assert_eq!(
            d3.reason,
            "source unavailable (3 failures): fallback raises 2 → 5"
        );
        assert_eq!(sim.history.consecutive_failures, 3);
        assert_eq!(sim.tick(Input::Unavailable, 5).desired, 5);
        // Data comes back: failures reset.
        sim.backlog(700);
        assert_eq!(sim.history.consecutive_failures, 0);
        assert_eq!(sim.current, 7);

        // Above the fallback count: held, not lowered.
        let mut sim = Sim::new(c.clone(), 7);
        for _ in 0..5 {
            assert_eq!(sim.tick(Input::Unavailable, 5).desired, 7);
        }
        let h = History {
            consecutive_failures: 9,
            ..History::default()
        };
        assert_eq!(
            decide(Input::Unavailable, &c, &h, 7, t(0)).reason,
            "source unavailable (10 failures): holding 7 (fallback 5 never lowers)"
        );
    }

    #[test]
    fn unavailable_respects_bounds() {
        let c = PolicyConfig {
            fallback: Fallback::Fixed {
                replicas: 8,
                after_failures: 1,
            },
            max_replicas: 6,
            ..cfg()
        };
        let d = decide(Input::Unavailable, &c, &History::default(), 2, t(0));
        assert_eq!(d.desired, 6);
        let d = decide(Input::Unavailable, &cfg(), &History::default(), 0, t(0));
        assert_eq!((d.desired, d.limit), (1, Some(Limit::Min)));
        assert_eq!(
            d.reason,
            "source unavailable (1 failure): holding 0, raised to min 1"
        );
    }

    #[test]
    fn missing_data_does_not_scale_down_through_the_window() {
        // A high count with only low recommendations in the window: data says go down,
        // missing data must not.
        let c = PolicyConfig {
            scale_down_window: Duration::from_secs(60),
            ..cfg()
        };
        let mut h = History::default();
        h.recommendations.push_back((t(-30), 1));
        assert_eq!(decide(Input::Unavailable, &c, &h, 8, t(0)).desired, 8);
        assert_eq!(observed(&obs(0), &c, &h, 8, 0).desired, 1);
    }

    // ---- stabilization ----

    #[test]
    fn scale_up_window_uses_lowest_recent() {
        let c = PolicyConfig {
            scale_up_window: Duration::from_secs(60),
            ..cfg()
        };
        let mut h = History::default();
        h.recommendations.push_back((t(-90), 1)); // outside the window
        h.recommendations.push_back((t(-30), 3));
        h.recommendations.push_back((t(-10), 6));
        let d = observed(&obs(800), &c, &h, 2, 0);
        assert_eq!((d.desired, d.limit), (3, Some(Limit::Stabilization)));
        assert_eq!(
            d.reason,
            "backlog 800 at 100/replica → 8; scale-up from 2 limited to 3 by 1m window (lowest recent: 3)"
        );
        // The lowest recent is at or below current: held, never lowered.
        h.recommendations.push_back((t(-5), 1));
        let d = observed(&obs(800), &c, &h, 2, 0);
        assert_eq!((d.desired, d.limit), (2, Some(Limit::Stabilization)));
        assert_eq!(
            d.reason,
            "backlog 800 at 100/replica → 8; scale-up from 2 held by 1m window (lowest recent: 1)"
        );
        // A zero window scales up at once.
        let d = observed(&obs(800), &cfg(), &h, 2, 0);
        assert_eq!((d.desired, d.limit), (8, None));
        assert_eq!(d.reason, "backlog 800 at 100/replica → 8");
    }

    #[test]
    fn scale_down_window_uses_highest_recent() {
        let mut h = History::default();
        h.recommendations.push_back((t(-400), 9)); // outside the 5m window
        h.recommendations.push_back((t(-100), 5));
        h.recommendations.push_back((t(-50), 3));
        let d = observed(&obs(200), &cfg(), &h, 8, 0);
        assert_eq!((d.desired, d.limit), (5, Some(Limit::Stabilization)));
        assert_eq!(
            d.reason,
            "backlog 200 at 100/replica → 2; scale-down from 8 limited to 5 by 5m window (highest recent: 5)"
        );
        // Entries above current do not push a scale-down upward.
        h.recommendations.push_back((t(-20), 12));
        let d = observed(&obs(200), &cfg(), &h, 8, 0);
        assert_eq!(d.desired, 8);
        // Without a window the scale-down is immediate.
        let c = PolicyConfig {
            scale_down_window: Duration::ZERO,
            ..cfg()
        };
        assert_eq!(observed(&obs(200), &c, &h, 8, 0).desired, 2);
    }

    #[test]
    fn seeded_restart_waits_a_full_scale_down_window() {
        let mut sim = Sim::seeded(cfg(), 6);
        for _ in 0..60 {
            // t = 0, 5, ..., 295
            let d = sim.backlog(100);
            assert_eq!(d.desired, 6, "at {}", sim.now - 5);
        }
        assert_eq!(sim.now, 300);
        let d = sim.backlog(100);
        assert_eq!((d.desired, d.limit), (1, None));
        // Scale-up is not held by the seed.
        let mut sim = Sim::seeded(cfg(), 6);
        assert_eq!(sim.backlog(900).desired, 9);
    }

    #[test]
    fn spike_then_quiet_scales_down_after_window() {
        let mut sim = Sim::new(cfg(), 1);
        assert_eq!(sim.backlog(1000).desired, 10);
        let spike_end = sim.now - 5;
        let mut first_down = None;
        for _ in 0..100 {
            let d = sim.backlog(100);
            if d.desired < 10 && first_down.is_none() {
                first_down = Some(sim.now - 5);
                assert_eq!(d.desired, 1);
            }
        }
        assert_eq!(first_down, Some(spike_end + 300));
    }

    // ---- steps ----

    #[test]
    fn step_limits() {
        let c = PolicyConfig {
            scale_up_max_step: Some(2),
            scale_down_max_step: Some(3),
            scale_down_window: Duration::ZERO,
            ..cfg()
        };
        let h = History::default();
        let d = observed(&obs(1000), &c, &h, 2, 0);
        assert_eq!((d.desired, d.limit), (4, Some(Limit::MaxStepUp)));
        assert_eq!(
            d.reason,
            "backlog 1000 at 100/replica → 10; scale-up limited to 2 per step (2 → 4)"
        );
        let d = observed(&obs(100), &c, &h, 10, 0);
        assert_eq!((d.desired, d.limit), (7, Some(Limit::MaxStepDown)));
        assert_eq!(
            d.reason,
            "backlog 100 at 100/replica → 1; scale-down limited to 3 per step (10 → 7)"
        );
        // Within the step: no limit.
        let d = observed(&obs(300), &c, &h, 2, 0);
        assert_eq!((d.desired, d.limit), (3, None));
        // Walks there step by step.
        let mut sim = Sim::new(c.clone(), 10);
        let path: Vec<i32> = (0..5).map(|_| sim.backlog(100).desired).collect();
        assert_eq!(path, [7, 4, 1, 1, 1]);
    }

    #[test]
    fn bounds_win_over_steps() {
        let c = PolicyConfig {
            scale_down_max_step: Some(2),
            scale_up_max_step: Some(1),
            scale_down_window: Duration::ZERO,
            min_replicas: 3,
            ..cfg()
        };
        let d = observed(&obs(100), &c, &History::default(), 20, 0);
        assert_eq!((d.desired, d.limit), (10, Some(Limit::Max)));
        let d = observed(&obs(100), &c, &History::default(), 0, 0);
        assert_eq!((d.desired, d.limit), (3, Some(Limit::Min)));
    }

    // ---- scale to zero ----

    fn zero_cfg() -> PolicyConfig {
        PolicyConfig {
            min_replicas: 0,
            activation_backlog: 10,
            scale_down_window: Duration::ZERO,
            ..cfg()
        }
    }

    #[test]
    fn stays_at_zero_below_activation() {
        let h = History::default();
        let d = observed(&obs(10), &zero_cfg(), &h, 0, 0);
        assert_eq!((d.desired, d.recommended, d.limit), (0, Some(0), None));
        assert_eq!(
            d.reason,
            "backlog 10 at or below activation 10: staying at 0"
        );
        let c = PolicyConfig {
            activation_backlog: 0,
            ..zero_cfg()
        };
        assert_eq!(
            observed(&obs(0), &c, &h, 0, 0).reason,
            "backlog 0: staying at 0"
        );
    }

    #[test]
    fn activates_above_threshold() {
        let h = History::default();
        let d = observed(&obs(11), &zero_cfg(), &h, 0, 0);
        assert_eq!((d.desired, d.recommended), (1, Some(1)));
        assert_eq!(observed(&obs(250), &zero_cfg(), &h, 0, 0).desired, 3);
        // Even a scale-up window full of zeros does not keep work waiting at zero.
        let c = PolicyConfig {
            scale_up_window: Duration::from_secs(300),
            ..zero_cfg()
        };
        let mut h = History::default();
        h.recommendations.push_back((t(-10), 0));
        let d = observed(&obs(250), &c, &h, 0, 0);
        assert_eq!(d.desired, 1);
        assert!(d.reason.ends_with("; activating with 1"), "{}", d.reason);
    }

    #[test]
    fn scale_to_zero_waits_for_cooldown() {
        let c = zero_cfg();
        let h = History {
            last_active: Some(t(-100)),
            ..History::default()
        };
        let d = observed(&obs(5), &c, &h, 3, 0);
        assert_eq!((d.desired, d.recommended), (1, Some(0)));
        assert_eq!(d.limit, Some(Limit::ScaleToZeroCooldown));
        assert_eq!(
            d.reason,
            "backlog 5 at or below activation 10 → 0; scale to zero held at 1 until idle for 5m (1m40s so far)"
        );
        let h = History {
            last_active: Some(t(-300)),
            ..History::default()
        };
        let d = observed(&obs(5), &c, &h, 3, 0);
        assert_eq!((d.desired, d.limit), (0, None));
        assert_eq!(d.reason, "backlog 5 at or below activation 10 → 0");
    }

    #[test]
    fn scale_to_zero_is_conservative_without_activity() {
        let c = zero_cfg();
        let d = observed(&obs(0), &c, &History::default(), 2, 0);
        assert_eq!((d.desired, d.limit), (1, Some(Limit::ScaleToZeroCooldown)));
        assert!(d.reason.ends_with("(nothing recorded yet)"), "{}", d.reason);
        // Never active: measured from the oldest remembered recommendation.
        let d = observed(&obs(0), &c, &History::seeded(2, t(-200)), 2, 0);
        assert_eq!(d.desired, 1);
        let d = observed(&obs(0), &c, &History::seeded(2, t(-300)), 2, 0);
        assert_eq!(d.desired, 0);
    }

    #[test]
    fn scale_to_zero_over_time_after_restart() {
        // Windows shorter than the cooldown: the history must still remember long enough.
        let c = PolicyConfig {
            scale_to_zero_cooldown: Duration::from_secs(60),
            ..zero_cfg()
        };
        let mut sim = Sim::seeded(c, 2);
        let mut zero_at = None;
        for _ in 0..40 {
            let d = sim.backlog(0);
            if d.desired == 0 && zero_at.is_none() {
                zero_at = Some(sim.now - 5);
            }
        }
        assert_eq!(zero_at, Some(60));
        assert!(sim.history.recommendations.len() > 1);
    }

    #[test]
    fn scale_to_zero_needs_cooldown_and_scale_down_window() {
        let c = PolicyConfig {
            scale_down_window: Duration::from_secs(300),
            scale_to_zero_cooldown: Duration::from_secs(120),
            ..zero_cfg()
        };
        let mut sim = Sim::new(c, 0);
        assert_eq!(sim.backlog(400).desired, 4);
        let last_busy = sim.now - 5;
        let mut path = Vec::new();
        for _ in 0..80 {
            path.push((sim.now, sim.backlog(0).desired));
        }
        let zero = path.iter().find(|(_, n)| *n == 0).map(|(at, _)| *at);
        assert_eq!(zero, Some(last_busy + 300));
        assert!(path.iter().all(|(_, n)| *n == 0 || *n == 4), "{path:?}");
        // And wakes up again on work.
        assert_eq!(sim.backlog(11).desired, 1);
    }

    // ---- throughput estimate ----

    fn saturated(ready: i64, consumers: Option<i64>, ack: Option<f64>) -> Observation {
        Observation {
            ready: Some(ready),
            unacked: Some(10),
            consumers,
            ack_rate: ack,
            ..obs(ready + 10)
        }
    }

    /// History whose last reading saw `busy` consumers (a sample needs a steady count).
    fn steady(busy: i64) -> History {
        History {
            last_busy: Some(busy),
            ..History::default()
        }
    }

    fn record_obs(h: &mut History, o: &Observation, current: i32) {
        let c = cfg();
        let d = decide(Input::Observed(o), &c, h, current, t(0));
        h.record(Input::Observed(o), &d, &c, current, t(0));
    }

    #[test]
    fn throughput_measured_only_when_saturated() {
        let mut h = History::default();
        // Empty queue: the ack rate is demand, not capacity.
        record_obs(&mut h, &saturated(0, Some(4), Some(100.0)), 4);
        assert_eq!(h.per_replica_throughput, None);
        // Fewer ready messages than consumers: not clearly saturated.
        record_obs(&mut h, &saturated(3, Some(4), Some(100.0)), 4);
        assert_eq!(h.per_replica_throughput, None);
        // Saturated: 100/s over 4 consumers.
        record_obs(&mut h, &saturated(50, Some(4), Some(100.0)), 4);
        assert_eq!(h.per_replica_throughput, Some(25.0));
        // EWMA: 0.1 * 50 + 0.9 * 25.
        record_obs(&mut h, &saturated(50, Some(4), Some(200.0)), 4);
        let mu = h.per_replica_throughput.expect("measured");
        assert!((mu - 27.5).abs() < 1e-9, "{mu}");
        // Garbage rates are ignored.
        for bad in [
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(-5.0),
            Some(0.0),
            None,
        ] {
            record_obs(&mut h, &saturated(50, Some(4), bad), 4);
            assert_eq!(h.per_replica_throughput, Some(mu), "{bad:?}");
        }
    }

    #[test]
    fn throughput_needs_a_steady_consumer_count() {
        // The broker's rates are averages over a window; per consumer they mean something
        // only when the count held still since the last reading.
        let mut h = History::default();
        record_obs(&mut h, &saturated(50, Some(4), Some(100.0)), 4);
        assert_eq!(
            h.per_replica_throughput, None,
            "first reading: no earlier count"
        );
        record_obs(&mut h, &saturated(50, Some(6), Some(100.0)), 6);
        assert_eq!(h.per_replica_throughput, None, "4 → 6 consumers");
        record_obs(&mut h, &saturated(50, Some(6), Some(120.0)), 6);
        assert_eq!(h.per_replica_throughput, Some(20.0));
    }

    #[test]
    fn throughput_fallbacks() {
        // Without acks, the deliver rate counts; without a consumer count, `current` does.
        let mut h = steady(3);
        let mut o = saturated(50, None, None);
        o.deliver_rate = Some(30.0);
        record_obs(&mut h, &o, 3);
        assert_eq!(h.per_replica_throughput, Some(10.0));
        // No one consuming: nothing to divide by.
        let mut h = History::default();
        record_obs(&mut h, &saturated(50, Some(0), Some(30.0)), 0);
        assert_eq!(h.per_replica_throughput, None);
        // Ready unknown: backlog minus unacked must cover the busy replicas.
        let mut h = steady(2);
        let mut o = saturated(0, Some(2), Some(30.0));
        o.ready = None;
        o.backlog = 11; // 11 - 10 unacked = 1 waiting < 2 consumers
        record_obs(&mut h, &o, 2);
        assert_eq!(h.per_replica_throughput, None);
        o.backlog = 12;
        record_obs(&mut h, &o, 2);
        assert_eq!(h.per_replica_throughput, Some(15.0));
        // An invalid stored estimate is replaced, not averaged.
        let mut h = History {
            per_replica_throughput: Some(f64::NAN),
            ..steady(2)
        };
        record_obs(&mut h, &saturated(50, Some(2), Some(30.0)), 2);
        assert_eq!(h.per_replica_throughput, Some(15.0));
    }

    #[test]
    fn drain_objective_with_measured_throughput_over_time() {
        let c = PolicyConfig {
            backlog_per_replica: 10_000,
            max_drain_time: Some(Duration::from_secs(60)),
            max_replicas: 50,
            ..cfg()
        };
        let mut sim = Sim::seeded(c, 2);
        sim.history.last_busy = Some(2);
        // Saturated consumers each doing 20/s; 100/s arrive; 6000 waiting.
        let mut o = Observation {
            ready: Some(6000),
            unacked: Some(0),
            consumers: Some(2),
            publish_rate: Some(100.0),
            ack_rate: Some(40.0),
            ..obs(6000)
        };
        let first = sim.tick(Input::Observed(&o), 5);
        assert_eq!(first.desired, 2);
        assert!(
            first.reason.contains("throughput not yet measured"),
            "{}",
            first.reason
        );
        assert_eq!(sim.history.per_replica_throughput, Some(20.0));
        // (100 + 6000/60) / 20 = 10.
        o.consumers = Some(i64::from(sim.current));
        o.ack_rate = Some(20.0 * f64::from(sim.current));
        let second = sim.tick(Input::Observed(&o), 5);
        assert_eq!(second.desired, 10);
        assert_eq!(
            second.reason,
            "arrivals 100.0/s + backlog 6000 over 1m at 20.0/s per replica → 10"
        );
    }

    // ---- record ----

    #[test]
    fn record_bookkeeping() {
        let c = PolicyConfig {
            scale_up_window: Duration::from_secs(30),
            scale_down_window: Duration::from_secs(60),
            activation_backlog: 5,
            ..cfg()
        };
        let mut h = History::default();
        let o = obs(5000);
        let d = decide(Input::Observed(&o), &c, &h, 2, t(0));
        assert_eq!(d.recommended, Some(50));
        h.record(Input::Observed(&o), &d, &c, 2, t(0));
        // The bounded recommendation is remembered.
        assert_eq!(h.recommendations.back(), Some(&(t(0), 10)));
        assert_eq!(h.last_scale, Some(t(0)));
        assert_eq!(h.last_active, Some(t(0)));

        // Unchanged count, quiet queue: no scale, not active.
        let o = obs(5);
        let d = decide(Input::Observed(&o), &c, &h, 10, t(10));
        h.record(Input::Observed(&o), &d, &c, 10, t(10));
        assert_eq!(d.desired, 10);
        assert_eq!(h.last_scale, Some(t(0)));
        assert_eq!(h.last_active, Some(t(0)));
        assert_eq!(h.recommendations.back(), Some(&(t(10), 1)));

        // Failures count up and push nothing.
        let d = decide(Input::Unavailable, &c, &h, 10, t(20));
        h.record(Input::Unavailable, &d, &c, 10, t(20));
        h.record(Input::Unavailable, &d, &c, 10, t(25));
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(h.recommendations.len(), 2);

        // Entries older than the longest window go; the newest always stays.
        let d = decide(Input::Observed(&o), &c, &h, 10, t(65));
        h.record(Input::Observed(&o), &d, &c, 10, t(65));
        assert_eq!(h.consecutive_failures, 0);
        assert_eq!(
            h.recommendations.iter().map(|e| e.0).collect::<Vec<_>>(),
            [t(10), t(65)]
        );
        h.record(Input::Unavailable, &d, &c, 10, t(10_000));
        assert_eq!(h.recommendations.len(), 1);
    }

    #[test]
    fn failure_count_saturates() {
        let mut h = History {
            consecutive_failures: u32::MAX,
            ..History::default()
        };
        let d = decide(Input::Unavailable, &cfg(), &h, 3, t(0));
        assert_eq!(d.desired, 3);
        h.record(Input::Unavailable, &d, &cfg(), 3, t(0));
        assert_eq!(h.consecutive_failures, u32::MAX);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let weird = PolicyConfig {
            min_replicas: -3,
            max_replicas: -5,
            backlog_per_replica: 0,
            max_drain_time: Some(Duration::ZERO),
            activation_backlog: -1,
            scale_up_max_step: Some(0),
            scale_down_max_step: Some(i32::MIN),
            scale_down_window: Duration::MAX,
            scale_up_window: Duration::MAX,
            ..cfg()
        };
        let mut h = History::seeded(i32::MAX, t(0));
        h.recommendations.push_back((t(-1_000_000_000), i32::MIN));
        for b in [i64::MIN, -1, 0, 1, i64::MAX] {
            for current in [i32::MIN, -1, 0, 1, i32::MAX] {
                let d = observed(&obs(b), &weird, &h, current, 0);
                assert!(d.desired >= 0);
                let mut h2 = h.clone();
                h2.record(Input::Observed(&obs(b)), &d, &weird, current, t(0));
            }
        }
    }

    // ---- policy v2: the message-wait objective ----

    fn wait_cfg() -> PolicyConfig {
        PolicyConfig {
            max_message_wait: Some(Duration::from_secs(90)),
            scale_down_window: Duration::from_secs(120),
            max_replicas: 100,
            ..cfg()
        }
    }

    /// A reading of a queue fed at `rate`/s with `waiting` ready messages and `current`
    /// replicas of 10 slots each doing 20/s.
    fn load(rate: f64, waiting: i64, current: i32) -> Observation {
        // Messages waiting means every replica is busy.
        let busy = if waiting > 0 {
            f64::from(current)
        } else {
            (rate / 20.0).min(f64::from(current))
        };
        Observation {
            backlog: waiting + (busy * 10.0) as i64,
            ready: Some(waiting),
            unacked: Some((busy * 10.0) as i64),
            consumers: Some(i64::from(current)),
            publish_rate: Some(rate),
            ack_rate: Some(busy * 20.0),
            deliver_rate: Some(busy * 20.0),
            ..obs(0)
        }
    }

    fn measured() -> History {
        History {
            per_replica_throughput: Some(20.0),
            slots_per_replica: Some(10.0),
            ..History::default()
        }
    }

    #[test]
    fn wait_objective_sizes_to_arrivals_and_uses_the_buffer() {
        let c = wait_cfg();
        // 200/s at 20/s per replica, nothing waiting: 10 replicas.
        let d = observed(&load(200.0, 0, 10), &c, &measured(), 10, 0);
        assert_eq!(d.desired, 10, "{}", d.reason);
        assert!(
            d.reason.starts_with("arrivals 200.0/s, 0 waiting"),
            "{}",
            d.reason
        );
        // A waiting backlog inside the buffer (200/s × 90 s × 0.4 = 7200) asks for little more.
        let d = observed(&load(200.0, 3000, 10), &c, &measured(), 10, 0);
        assert_eq!(d.desired, 10, "{}", d.reason);
        // Beyond the buffer it is drained within 27 s: (200 + (12000 − 7200)/27)/20 → 19.
        let d = observed(&load(200.0, 12_000, 10), &c, &measured(), 10, 0);
        assert_eq!(d.desired, 19, "{}", d.reason);
        // Throughput not yet measured: the backlog objective (KEDA meaning) applies.
        let d = observed(&load(200.0, 1000, 1), &c, &History::default(), 1, 0);
        assert!(
            d.reason.contains("throughput not yet measured"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn backlog_per_replica_keeps_its_meaning_without_a_wait_objective() {
        let d = observed(&obs(1000), &cfg(), &measured(), 1, 0);
        assert_eq!(d.desired, 10);
    }

    #[test]
    fn wait_objective_never_outside_bounds_and_monotone_in_backlog() {
        let mut rng = Rng(11);
        for _ in 0..3000 {
            let min = i32::try_from(rng.range(0, 5)).expect("small");
            let max = min + i32::try_from(rng.range(1, 60)).expect("small");
            let c = PolicyConfig {
                min_replicas: min,
                max_replicas: max,
                scale_down_window: Duration::ZERO,
                ..wait_cfg()
            };
            let current = i32::try_from(rng.range(0, 80)).expect("small");
            let rate = rng.range(0, 2000) as f64;
            let waiting = rng.range(0, 200_000);
            let h = measured();
            let a = observed(&load(rate, waiting, current), &c, &h, current, 0);
            assert!(a.desired >= min && a.desired <= max, "{a:?}");
            let more = waiting + rng.range(1, 50_000);
            let b = observed(&load(rate, more, current), &c, &h, current, 0);
            assert!(
                b.desired >= a.desired,
                "{waiting} → {}, {more} → {}",
                a.desired,
                b.desired
            );
        }
    }

    #[test]
    fn wait_objective_constant_load_gives_constant_count() {
        let mut sim = Sim::seeded(wait_cfg(), 10);
        sim.history.per_replica_throughput = Some(20.0);
        sim.history.slots_per_replica = Some(10.0);
        for _ in 0..200 {
            let o = load(190.0, 0, sim.current);
            let d = sim.tick(Input::Observed(&o), 5);
            assert_eq!(d.desired, 10, "{}", d.reason);
        }
    }

    #[test]
    fn wait_objective_noisy_steady_load_gives_few_changes() {
        let mut sim = Sim::seeded(wait_cfg(), 10);
        sim.history.per_replica_throughput = Some(20.0);
        sim.history.slots_per_replica = Some(10.0);
        let mut rng = Rng(5);
        let mut changes = 0;
        for _ in 0..720 {
            // One hour of 5 s readings: rate 180 ± 15 %, a few messages waiting now and then.
            let rate = 180.0 * (0.85 + 0.3 * rng.range(0, 1000) as f64 / 1000.0);
            let waiting = rng.range(0, 300);
            let o = load(rate, waiting, sim.current);
            let before = sim.current;
            let d = sim.tick(Input::Observed(&o), 5);
            if d.desired != before {
                changes += 1;
            }
        }
        assert!(changes <= 6, "{changes} changes in an hour of steady load");
    }

    #[test]
    fn wait_objective_missing_data_never_lowers() {
        let c = wait_cfg();
        let mut h = measured();
        let o = load(400.0, 20_000, 10);
        let d = decide(Input::Observed(&o), &c, &h, 10, t(0));
        h.record(Input::Observed(&o), &d, &c, 10, t(0));
        let up = d.desired;
        assert!(up > 10);
        for k in 1..100 {
            let d = decide(Input::Unavailable, &c, &h, up, t(5 * k));
            h.record(Input::Unavailable, &d, &c, up, t(5 * k));
            assert_eq!(d.desired, up);
        }
    }

    #[test]
    fn wait_objective_projects_a_rising_trend() {
        let c = wait_cfg();
        let mut h = measured();
        // The rate climbs 0.2/s every second (1/s per 5 s reading), within the noise a
        // level shift allows: the estimate learns the trend.
        for k in 0..300 {
            let rate = 100.0 + f64::from(k);
            let o = load(rate, 0, 30);
            let d = decide(Input::Observed(&o), &c, &h, 30, t(5 * i64::from(k)));
            h.record(Input::Observed(&o), &d, &c, 30, t(5 * i64::from(k)));
        }
        let e = h.arrival.expect("estimated");
        assert!(e.trend > 0.1 && e.trend < 0.3, "{e:?}");
        // 18 replicas fall short of the tolerance: the need counts the arrivals in 25 s,
        // more than 400/20 = 20 now.
        let o = load(400.0, 0, 18);
        let d = decide(Input::Observed(&o), &c, &h, 18, t(1500));
        assert!(d.desired > 20, "{}", d.reason);
        assert!(d.reason.contains("rising"), "{}", d.reason);
    }

    #[test]
    fn a_level_shift_is_followed_at_once() {
        let c = wait_cfg();
        let mut h = measured();
        for k in 0..50 {
            let o = load(100.0, 0, 5);
            let d = decide(Input::Observed(&o), &c, &h, 5, t(5 * k));
            h.record(Input::Observed(&o), &d, &c, 5, t(5 * k));
        }
        // A burst: 100/s → 400/s. The estimate jumps instead of creeping up at 5 % a reading.
        let o = load(400.0, 0, 5);
        let d = decide(Input::Observed(&o), &c, &h, 5, t(250));
        h.record(Input::Observed(&o), &d, &c, 5, t(250));
        let e = h.arrival.expect("estimated");
        assert_eq!(e.rate, 400.0);
        assert_eq!(e.trend, 0.0);
        // Noise is smoothed: 410/s moves the estimate by 5 % of the difference.
        let o = load(410.0, 0, 20);
        let d = decide(Input::Observed(&o), &c, &h, 20, t(255));
        h.record(Input::Observed(&o), &d, &c, 20, t(255));
        let e = h.arrival.expect("estimated");
        assert!((e.rate - 400.5).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn throughput_learned_without_saturation_by_littles_law() {
        let mut h = steady(4);
        // Saturated once: 4 consumers, 40 in flight (10 slots each), 80/s.
        let mut o = saturated(50, Some(4), Some(80.0));
        o.unacked = Some(40);
        record_obs(&mut h, &o, 4);
        assert_eq!(h.slots_per_replica, Some(10.0));
        assert_eq!(h.per_replica_throughput, Some(20.0));
        // Not saturated, in balance (40/s arrive, 40/s acked): 10 in flight completing
        // 40/s → 0.25 s each → 40/s per replica.
        let mut o = saturated(0, Some(4), Some(40.0));
        o.unacked = Some(10);
        o.publish_rate = Some(40.0);
        record_obs(&mut h, &o, 4);
        let mu = h.per_replica_throughput.expect("measured");
        assert!((mu - (0.1 * 40.0 + 0.9 * 20.0)).abs() < 1e-9, "{mu}");
        // Too few in flight: no sample.
        o.unacked = Some(2);
        record_obs(&mut h, &o, 4);
        assert_eq!(h.per_replica_throughput, Some(mu));
        // Out of balance (a burst ended: the window's acks outrun arrivals, the in-flight
        // count already fell): no sample.
        o.unacked = Some(10);
        o.publish_rate = Some(5.0);
        record_obs(&mut h, &o, 4);
        assert_eq!(h.per_replica_throughput, Some(mu));
        // Arrivals unknown: no sample either.
        o.publish_rate = None;
        record_obs(&mut h, &o, 4);
        assert_eq!(h.per_replica_throughput, Some(mu));
    }
}
