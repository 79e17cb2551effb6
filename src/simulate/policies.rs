//! The policies compared by `nerite simulate`.

use std::time::Duration;

use super::engine::{Scaler, View, timestamp};
use super::keda::{Keda, KedaConfig};
use crate::core::policy::{self, History, Input, PolicyConfig};

/// A fixed count.
pub struct Static(pub i32);

impl Scaler for Static {
    fn period(&self) -> u64 {
        3600
    }
    fn tick(&mut self, _: &View<'_>) -> i32 {
        self.0
    }
}

/// KEDA polling the queue length (ready + unacked, as the RabbitMQ HTTP API trigger
/// counts it), with the HPA syncing every 15 s on the last polled value.
pub struct KedaHpa {
    pub cfg: KedaConfig,
    state: Keda,
    period: u64,
}

impl KedaHpa {
    pub fn new(cfg: KedaConfig) -> Self {
        let period = gcd(cfg.polling_interval.max(1), cfg.sync_period.max(1));
        Self {
            cfg,
            state: Keda::default(),
            period,
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Scaler for KedaHpa {
    fn period(&self) -> u64 {
        self.period
    }

    fn tick(&mut self, view: &View<'_>) -> i32 {
        let now = view.now;
        let secs = now.round() as u64;
        let mut current = view.current();
        if secs.is_multiple_of(self.cfg.polling_interval.max(1)) {
            let metric = view.observation().backlog as f64;
            if let Some(n) = self.state.poll(&self.cfg, now, metric, current) {
                current = n;
            }
        }
        if secs.is_multiple_of(self.cfg.sync_period.max(1)) {
            current = self.state.sync(&self.cfg, now, current);
        }
        current
    }
}

/// nerite's own `policy::decide` + `History::record`, exactly as the controller drives them.
pub struct Nerite {
    pub cfg: PolicyConfig,
    history: Option<History>,
    /// Every change of the count, with nerite's reason (what `status.reason` would say).
    pub changes: Vec<Change>,
}

/// One change of the replica count and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Change {
    /// Seconds into the trace.
    pub t: f64,
    pub from: i32,
    pub to: i32,
    pub reason: String,
}

impl Nerite {
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            history: None,
            changes: Vec::new(),
        }
    }

    /// The settings a user would write for a scenario: the replica bounds, the
    /// scenario's `backlogPerReplica` (used only until the throughput is measured), the
    /// message-wait objective, and the defaults `nerite` applies to such a spec for
    /// everything else (the scale-down window is 1m with `maxMessageWait`).
    pub fn config(
        min: i32,
        max: i32,
        backlog_per_replica: i64,
        max_message_wait: Duration,
        poll_interval: Duration,
        startup_delay: Duration,
    ) -> PolicyConfig {
        use crate::spec::validate as v;
        PolicyConfig {
            min_replicas: min,
            max_replicas: max,
            paused: false,
            backlog_per_replica,
            max_drain_time: None,
            poll_interval,
            scale_up_window: v::DEFAULT_SCALE_UP_WINDOW,
            scale_down_window: v::DEFAULT_SCALE_DOWN_WINDOW_WITH_WAIT,
            scale_up_max_step: None,
            scale_down_max_step: None,
            activation_backlog: 0,
            scale_to_zero_cooldown: v::DEFAULT_SCALE_TO_ZERO_COOLDOWN,
            fallback: crate::core::policy::Fallback::Hold,
            max_message_wait: Some(max_message_wait),
            startup_delay,
        }
    }
}

impl Scaler for Nerite {
    fn period(&self) -> u64 {
        self.cfg.poll_interval.as_secs().max(1)
    }

    fn tick(&mut self, view: &View<'_>) -> i32 {
        let now = timestamp(view.now);
        let current = view.current();
        // Like the controller after a (re)start: the first count seen is remembered.
        let history = self
            .history
            .get_or_insert_with(|| History::seeded(current, now));
        let obs = view.observation();
        let input = Input::Observed(&obs);
        let d = policy::decide(input, &self.cfg, history, current, now);
        history.record(input, &d, &self.cfg, current, now);
        if d.desired != current {
            self.changes.push(Change {
                t: view.now,
                from: current,
                to: d.desired,
                reason: d.reason,
            });
        }
        d.desired
    }
}

/// Knows the future: every message's arrival time, the true backlog (no statistics delay),
/// the mean service rate and the start-up delay, and decides every second. Each tick it
/// picks the smallest count that, started now (ready after the start-up delay), serves
/// every message within `wait`, for every deadline up to `horizon` ahead, assuming service
/// at the mean rate (fluid model). It has no statistics delay, no polling, no smoothing:
/// a near-best reference, not an achievable policy.
pub struct Oracle {
    pub wait: f64,
    pub horizon: f64,
    pub min: i32,
    pub max: i32,
}

impl Scaler for Oracle {
    fn period(&self) -> u64 {
        1
    }

    fn tick(&mut self, view: &View<'_>) -> i32 {
        let w = view.workload();
        let mu = w.replica_rate();
        let d = w.startup_delay;
        let t = view.now;
        let waiting: Vec<f64> = view.waiting_arrivals().collect();
        let future = view.future();
        let ready = view.ready_times();

        // Messages that must have started by time `tau`.
        let due = |tau: f64| -> f64 {
            let cut = tau - self.wait;
            let q = waiting.partition_point(|a| *a <= cut);
            let f = if cut > t {
                future.partition_point(|m| m.arrival <= cut)
            } else {
                0
            };
            (q + f) as f64
        };
        // Capacity the current replicas give between t and `until` (messages).
        let existing = |until: f64| -> f64 {
            ready
                .iter()
                .map(|r| (until - r.max(t)).max(0.0))
                .sum::<f64>()
                * mu
        };
        let mut up = 0.0f64; // count needed from t + d on
        let mut now_need = 0.0f64; // count needed from t on, replicas kept running
        let have = existing(t + d);
        let mut tau = t + 1.0;
        while tau <= t + d + self.horizon {
            let need = due(tau);
            now_need = now_need.max(need / (mu * (tau - t)));
            if tau > t + d {
                up = up.max((need - have) / (mu * (tau - t - d)));
            }
            tau += 1.0;
        }
        let up = up.ceil() as i32;
        let now_need = (now_need - 1e-9).ceil() as i32;
        let current = view.current();
        let want = up.max(now_need);
        let want = if want > current {
            want
        } else {
            // Scaling down takes effect at once: keep what the coming deadlines need.
            want.max(now_need)
        };
        want.clamp(self.min, self.max)
    }
}
