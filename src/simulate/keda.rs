//! KEDA + HorizontalPodAutoscaler, as documented (the rules of `BASELINES.md`).
//!
//! - KEDA polls the trigger every `polling_interval` (default 30 s). It owns 0↔1: it
//!   activates a workload at zero when the metric is strictly greater than
//!   `activation_threshold` (default 0), and scales to 0 only after `cooldown` (default
//!   300 s) without activity, when `min_replicas` is 0.
//! - 1↔N is the HPA's, every `sync_period` (15 s), reading the value of KEDA's last poll.
//!   `AverageValue` target: desired = ⌈metric / target⌉; no change while
//!   |metric / (target × current) − 1| ≤ `tolerance` (0.1).
//! - HPA default behaviour. Up: no stabilization; per 15 s period at most
//!   max(+4 pods, +100 %) over the replicas at the start of the period. Down: 300 s
//!   stabilization (the highest recommendation in the window wins); per 15 s at most −100 %.
//! - HPA bounds: `[max(min_replicas, 1), max_replicas]`; the HPA does nothing at zero.
//!
//! The stabilization follows the HPA controller: each sync records the unstabilized
//! recommendation; the result is the current count raised to the lowest recommendation of
//! the scale-up window and lowered to the highest of the scale-down window; then the rate
//! limits apply, with "replicas at the start of the period" = current minus the changes
//! made less than one period ago.

/// KEDA ScaledObject + HPA settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KedaConfig {
    pub polling_interval: u64,
    pub target: f64,
    pub activation_threshold: f64,
    pub cooldown: f64,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub sync_period: u64,
    pub tolerance: f64,
    pub up_window: f64,
    pub up_pods: i32,
    pub up_percent: f64,
    pub up_period: f64,
    pub down_window: f64,
    pub down_percent: f64,
    pub down_period: f64,
}

impl KedaConfig {
    /// KEDA's and the HPA's defaults, with the given target and replica bounds.
    pub fn defaults(target: f64, min_replicas: i32, max_replicas: i32) -> Self {
        Self {
            polling_interval: 30,
            target,
            activation_threshold: 0.0,
            cooldown: 300.0,
            min_replicas,
            max_replicas,
            sync_period: 15,
            tolerance: 0.1,
            up_window: 0.0,
            up_pods: 4,
            up_percent: 100.0,
            up_period: 15.0,
            down_window: 300.0,
            down_percent: 100.0,
            down_period: 15.0,
        }
    }
}

/// KEDA operator + HPA controller state.
#[derive(Clone, Debug, Default)]
pub struct Keda {
    /// Value of the last poll.
    metric: Option<f64>,
    last_active: Option<f64>,
    /// Unstabilized HPA recommendations (time, replicas).
    recommendations: Vec<(f64, i32)>,
    /// Scale events made by the HPA (time, change).
    events: Vec<(f64, i32)>,
}

impl Keda {
    /// KEDA's poll at `now` with the trigger's `metric`. Returns a new count when KEDA itself
    /// scales (activation from zero, or to zero after the cooldown).
    pub fn poll(&mut self, cfg: &KedaConfig, now: f64, metric: f64, current: i32) -> Option<i32> {
        self.metric = Some(metric);
        let active = metric > cfg.activation_threshold;
        if active {
            self.last_active = Some(now);
        }
        if current == 0 {
            return active.then_some(cfg.min_replicas.max(1).min(cfg.max_replicas));
        }
        if !active && cfg.min_replicas == 0 {
            // Never seen active: the cooldown counts from the first poll.
            let since = *self.last_active.get_or_insert(now);
            if now - since >= cfg.cooldown {
                return Some(0);
            }
        }
        if current < cfg.min_replicas {
            return Some(cfg.min_replicas);
        }
        None
    }

    /// One HPA sync at `now`. Returns the count the HPA sets (equal to `current` for no change).
    pub fn sync(&mut self, cfg: &KedaConfig, now: f64, current: i32) -> i32 {
        if current <= 0 {
            return current; // scaling is disabled at zero: KEDA activates
        }
        let Some(metric) = self.metric else {
            return current;
        };
        let min = cfg.min_replicas.max(1);
        let max = cfg.max_replicas.max(min);
        let target = cfg.target.max(f64::MIN_POSITIVE);
        let ratio = metric / (target * f64::from(current));
        let raw = if (ratio - 1.0).abs() <= cfg.tolerance {
            current
        } else {
            ceil_i32(metric / target)
        };
        // Stabilization over recorded recommendations, then record the raw one.
        let mut up = raw;
        let mut down = raw;
        for &(t, r) in &self.recommendations {
            if t > now - cfg.up_window {
                up = up.min(r);
            }
            if t > now - cfg.down_window {
                down = down.max(r);
            }
        }
        let keep = cfg.up_window.max(cfg.down_window);
        self.recommendations.retain(|(t, _)| *t > now - keep);
        self.recommendations.push((now, raw));
        let mut desired = current;
        if desired < up {
            desired = up;
        }
        if desired > down {
            desired = down;
        }
        // Rate limits.
        if desired > current {
            let start = current - self.changes_within(now, cfg.up_period, true);
            let by_pods = start + cfg.up_pods;
            let by_percent = (f64::from(start) * (1.0 + cfg.up_percent / 100.0)).ceil() as i32;
            desired = desired.min(by_pods.max(by_percent)).min(max);
        } else if desired < current {
            let start = current - self.changes_within(now, cfg.down_period, false);
            let floor = (f64::from(start) * (1.0 - cfg.down_percent / 100.0)).trunc() as i32;
            desired = desired.max(floor).max(min);
        }
        desired = desired.clamp(min, max);
        if desired != current {
            self.events.push((now, desired - current));
            self.events
                .retain(|(t, _)| *t + cfg.up_period.max(cfg.down_period) > now);
        }
        desired
    }

    /// Sum of scale-ups (or scale-downs) made less than `period` ago.
    fn changes_within(&self, now: f64, period: f64, up: bool) -> i32 {
        self.events
            .iter()
            .filter(|(t, d)| *t + period > now && (*d > 0) == up)
            .map(|(_, d)| *d)
            .sum()
    }
}

fn ceil_i32(x: f64) -> i32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(i32::MAX) {
        i32::MAX
    } else {
        x.ceil() as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KedaConfig {
        KedaConfig::defaults(100.0, 1, 100)
    }

    fn synced(k: &mut Keda, c: &KedaConfig, now: f64, metric: f64, current: i32) -> i32 {
        k.metric = Some(metric);
        k.sync(c, now, current)
    }

    #[test]
    fn average_value_target() {
        let c = cfg();
        // 1000 messages at 100 per replica: 10, whatever the current count (within steps).
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 1000.0, 8), 10);
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 1001.0, 9), 11);
    }

    #[test]
    fn tolerance_band() {
        let c = cfg();
        // ratio = 1090 / (100 × 10) = 1.09: within 10 %, no change.
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 1090.0, 10), 10);
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 1099.0, 10), 10);
        // 1.11: outside, ⌈11.1⌉ = 12.
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 1110.0, 10), 12);
        // Below: 0.91 holds (the down window would hold anyway); 0.89 recommends 9.
        let mut k = Keda::default();
        assert_eq!(synced(&mut k, &c, 0.0, 910.0, 10), 10);
        assert_eq!(k.recommendations.last(), Some(&(0.0, 10)));
        let mut k = Keda::default();
        synced(&mut k, &c, 0.0, 890.0, 10);
        assert_eq!(k.recommendations.last(), Some(&(0.0, 9)));
    }

    #[test]
    fn scale_up_step_limit_is_max_of_four_pods_and_double() {
        let c = cfg();
        // From 2: max(2 + 4, 2 × 2) = 6.
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 5000.0, 2), 6);
        // From 10: max(14, 20) = 20.
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 5000.0, 10), 20);
        // Period start: a change made less than 15 s ago counts against the limit.
        let mut k = Keda::default();
        assert_eq!(synced(&mut k, &c, 0.0, 5000.0, 10), 20);
        assert_eq!(
            synced(&mut k, &c, 10.0, 5000.0, 20),
            20,
            "limit from 10: 20"
        );
        // Exactly one period later the earlier change no longer counts.
        assert_eq!(synced(&mut k, &c, 15.0, 5000.0, 20), 40);
        // Capped at max.
        assert_eq!(synced(&mut k, &c, 30.0, 50_000.0, 40), 80);
        assert_eq!(synced(&mut k, &c, 45.0, 50_000.0, 80), 100);
    }

    #[test]
    fn scale_down_stabilization_window() {
        let c = cfg();
        let mut k = Keda::default();
        assert_eq!(synced(&mut k, &c, 0.0, 2000.0, 20), 20);
        // Demand drops: the highest recommendation of the last 300 s (20) wins.
        let mut t = 15.0;
        while t < 300.0 {
            assert_eq!(synced(&mut k, &c, t, 100.0, 20), 20, "at {t}");
            t += 15.0;
        }
        // At 300 s the 0 s recommendation has left the window: straight down (−100 %).
        assert_eq!(synced(&mut k, &c, 300.0, 100.0, 20), 1);
    }

    #[test]
    fn down_window_uses_highest_not_latest() {
        let c = cfg();
        let mut k = Keda::default();
        synced(&mut k, &c, 0.0, 1000.0, 10);
        synced(&mut k, &c, 100.0, 500.0, 10);
        // At 310 s the 10 has expired, the 5 from 100 s is the highest: 5, not 2.
        assert_eq!(synced(&mut k, &c, 310.0, 200.0, 10), 5);
    }

    #[test]
    fn hpa_bounds_and_zero() {
        let c = KedaConfig::defaults(100.0, 0, 100);
        // The HPA never goes below 1 and does nothing at 0.
        let mut k = Keda::default();
        assert_eq!(synced(&mut k, &c, 0.0, 0.0, 0), 0);
        let c = KedaConfig {
            down_window: 0.0,
            ..c
        };
        assert_eq!(synced(&mut Keda::default(), &c, 0.0, 0.0, 5), 1);
        // No metric yet: no change.
        assert_eq!(Keda::default().sync(&c, 0.0, 5), 5);
    }

    #[test]
    fn activation_and_cooldown() {
        let c = KedaConfig::defaults(100.0, 0, 100);
        let mut k = Keda::default();
        // At zero, 0 messages is not above the threshold 0.
        assert_eq!(k.poll(&c, 0.0, 0.0, 0), None);
        // Strictly greater activates to 1.
        assert_eq!(k.poll(&c, 30.0, 1.0, 0), Some(1));
        let c5 = KedaConfig {
            activation_threshold: 5.0,
            ..c.clone()
        };
        assert_eq!(Keda::default().poll(&c5, 0.0, 5.0, 0), None);
        assert_eq!(Keda::default().poll(&c5, 0.0, 6.0, 0), Some(1));
        // Active at 60; idle afterwards: zero only 300 s after the last activity.
        assert_eq!(k.poll(&c, 60.0, 50.0, 3), None);
        assert_eq!(k.poll(&c, 90.0, 0.0, 3), None);
        assert_eq!(k.poll(&c, 330.0, 0.0, 3), None);
        assert_eq!(k.poll(&c, 360.0, 0.0, 3), Some(0));
        // With minReplicaCount > 0 KEDA never goes to zero.
        let c1 = KedaConfig::defaults(100.0, 1, 100);
        let mut k = Keda::default();
        assert_eq!(k.poll(&c1, 0.0, 0.0, 2), None);
        assert_eq!(k.poll(&c1, 1000.0, 0.0, 2), None);
    }
}
