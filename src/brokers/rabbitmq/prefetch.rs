//! The prefetch model: pure, no clocks, no clients.
//!
//! Prefetch (`basic.qos`) is how many unacknowledged deliveries the broker pushes to one
//! consumer. Too low and a consumer waits for the next delivery after each ack (the queue shows
//! a backlog while consumers idle: low consumer utilisation); too high and one consumer hoards
//! messages other replicas could process (and a crash redelivers them all).
//!
//! Measurements (per queue, from the management API; `n` = consumers):
//! - `a = ackRate / n`: messages one consumer completes per second;
//! - `u = unacked / n`: deliveries one consumer holds;
//! - `U`: consumer utilisation (capacity), the fraction of time the queue could deliver to its
//!   consumers at once; below 1 means consumers were at their prefetch limit while messages
//!   waited;
//! - `p`: the prefetch the consumers use, as the broker reports it;
//! - `b = (ready + unacked) / n`: each consumer's fair share of the backlog.
//!
//! The rule:
//! 1. **starved** (`ready > 0`, consumers at their limit `u ≥ 0.8·p`, and `U < 0.9` or
//!    unknown): raise, `p · clamp(0.95 / U, 1.5, 4)` (×4 when `U` is unknown or 0);
//! 2. **hoarding** (`U ≥ 0.9` or nothing ready, and `u < 0.5·p`): lower to `max(2·u, floor)`;
//! 3. otherwise keep `p`;
//! 4. never below `floor = ceil(a × 0.1 s) + 1`: enough in flight to hide a delivery round trip
//!    of up to 100 ms at the measured speed;
//! 5. never above `max(floor, ceil(b))`: prefetch × consumers must not dwarf the backlog, so
//!    no replica holds more than its share while others could take it;
//! 6. the `[min, max]` bounds of the spec.
//!
//! Applying is separate ([`should_apply`]): only when the recommendation differs from the
//! current value by at least `minChangePercent`, and at most once per `minInterval`, because a
//! pod-template change restarts the consumers.

use std::time::Duration;

/// Seconds of processing the floor keeps in flight.
const ROUND_TRIP_COVER: f64 = 0.1;
/// Utilisation below which a consumer at its limit counts as starved.
const STARVED_BELOW: f64 = 0.9;

/// The measurements one recommendation uses.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measurements {
    pub consumers: i64,
    pub ready: i64,
    pub unacked: i64,
    /// Acks per second for the whole queue.
    pub ack_rate: Option<f64>,
    /// 0..1.
    pub utilisation: Option<f64>,
    /// Prefetch the consumers use (per consumer; 0 means unlimited).
    pub current: Option<u32>,
}

/// A recommendation and the measurements behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recommendation {
    pub value: u32,
    pub reason: String,
}

/// Recommend a prefetch within `[min, max]`, or explain why there is none.
pub fn recommend(m: &Measurements, min: u32, max: u32) -> Result<Recommendation, String> {
    if m.consumers <= 0 {
        return Err("no consumers on the queue: nothing to measure".into());
    }
    let n = m.consumers as f64;
    let a = m
        .ack_rate
        .filter(|r| r.is_finite() && *r >= 0.0)
        .unwrap_or(0.0)
        / n;
    let u = m.unacked.max(0) as f64 / n;
    let b = (m.ready.max(0) + m.unacked.max(0)) as f64 / n;
    let util = m
        .utilisation
        .filter(|v| v.is_finite())
        .map(|v| v.clamp(0.0, 1.0));
    let floor = (a * ROUND_TRIP_COVER).ceil() as u32 + 1;
    let cap = floor.max(b.ceil() as u32);
    // Unlimited (0) or unknown prefetch: start from what consumers hold.
    let p = m.current.filter(|p| *p > 0);

    let (raw, why) = match p {
        Some(p) => {
            let pf = f64::from(p);
            let at_limit = u >= 0.8 * pf;
            let starved = m.ready > 0 && at_limit && util.is_none_or(|x| x < STARVED_BELOW);
            let hoarding =
                (util.is_some_and(|x| x >= STARVED_BELOW) || m.ready == 0) && u < 0.5 * pf;
            if starved {
                let factor = match util {
                    Some(x) if x > 0.0 => (0.95 / x).clamp(1.5, 4.0),
                    _ => 4.0,
                };
                (
                    (pf * factor).ceil() as u32,
                    format!(
                        "consumers wait at their limit of {p} while {} messages are ready",
                        m.ready
                    ),
                )
            } else if hoarding {
                (
                    ((2.0 * u).ceil() as u32).max(floor),
                    format!("consumers use {u:.1} of their {p} deliveries"),
                )
            } else {
                (p, format!("prefetch {p} keeps consumers busy"))
            }
        }
        None => (
            ((2.0 * u).ceil() as u32).max(floor),
            "prefetch unlimited or unknown; sized from deliveries held".to_string(),
        ),
    };
    let mut value = raw.max(floor);
    let mut limits = Vec::new();
    if value > cap {
        value = cap;
        limits.push(format!("capped at the backlog share {cap}"));
    }
    if value < min {
        value = min;
        limits.push(format!("raised to min {min}"));
    }
    if value > max {
        value = max;
        limits.push(format!("lowered to max {max}"));
    }
    let util_text = util.map_or("unknown".to_string(), |x| format!("{:.0}%", x * 100.0));
    let mut reason = format!(
        "{why}; per consumer: {a:.1} acks/s, {u:.1} unacked, backlog share {b:.0}; utilisation {util_text} → {value}"
    );
    if !limits.is_empty() {
        reason.push_str(&format!(" ({})", limits.join(", ")));
    }
    Ok(Recommendation { value, reason })
}

/// Whether `Apply` should deliver `recommended` now.
///
/// `current`: the value in force (delivered before, or read from the target); `since_last`:
/// time since nerite last delivered a value (`None`: never).
pub fn should_apply(
    recommended: u32,
    current: Option<u32>,
    min_change_percent: u32,
    since_last: Option<Duration>,
    min_interval: Duration,
) -> Result<(), String> {
    if let Some(c) = current {
        if c == recommended {
            return Err(format!("already {c}"));
        }
        let diff = f64::from(recommended.abs_diff(c));
        if diff * 100.0 < f64::from(min_change_percent) * f64::from(c.max(1)) {
            return Err(format!(
                "{recommended} is within {min_change_percent}% of the current {c}"
            ));
        }
    }
    if let Some(since) = since_last
        && since < min_interval
    {
        return Err(format!(
            "last change {}s ago; at most one change per {}s",
            since.as_secs(),
            min_interval.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(current: u32, ready: i64, unacked: i64, ack: f64, util: Option<f64>) -> Measurements {
        Measurements {
            consumers: 1,
            ready,
            unacked,
            ack_rate: Some(ack),
            utilisation: util,
            current: Some(current),
        }
    }

    fn rec(x: Measurements) -> u32 {
        recommend(&x, 1, 1000).map(|r| r.value).unwrap_or(0)
    }

    #[test]
    fn slow_consumer_at_a_low_limit_gets_more() {
        // prefetch 2, always 2 unacked, 500 ready, 10 acks/s, utilisation 20%.
        let r = rec(m(2, 500, 2, 10.0, Some(0.2)));
        assert!(r >= 8, "{r}");
        // Unknown utilisation (quorum queues on 3.10): at the limit with a backlog is enough.
        assert_eq!(rec(m(2, 500, 2, 10.0, None)), 8);
    }

    #[test]
    fn fast_consumer_with_a_small_backlog_stays_low() {
        // 3 ready, barely anything held, fast acks.
        let r = rec(m(1, 3, 1, 20.0, Some(0.95)));
        assert!(r <= 4, "{r}");
        assert!(rec(m(10, 0, 0, 5.0, Some(1.0))) <= 2);
    }

    #[test]
    fn never_above_the_backlog_share() {
        // Starved, but only 12 messages for 4 consumers.
        let x = Measurements {
            consumers: 4,
            ready: 8,
            unacked: 4,
            ack_rate: Some(2.0),
            utilisation: Some(0.1),
            current: Some(1),
        };
        let r = recommend(&x, 1, 1000).map(|r| r.value);
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn hoarding_consumers_get_less() {
        // Prefetch 500 but only 20 held, utilisation full.
        assert_eq!(rec(m(500, 10_000, 20, 100.0, Some(1.0))), 40);
    }

    #[test]
    fn bounds_win() {
        assert_eq!(
            recommend(&m(2, 500, 2, 10.0, Some(0.2)), 1, 5).map(|r| r.value),
            Ok(5)
        );
        assert_eq!(
            recommend(&m(1, 0, 0, 0.0, Some(1.0)), 10, 50).map(|r| r.value),
            Ok(10)
        );
    }

    #[test]
    fn no_consumers_no_recommendation() {
        let x = Measurements::default();
        assert!(recommend(&x, 1, 10).is_err());
    }

    #[test]
    fn reason_shows_the_measurements() {
        let r = recommend(&m(2, 500, 2, 10.0, Some(0.2)), 1, 1000);
        let reason = r.map(|r| r.reason).unwrap_or_default();
        assert!(
            reason.contains("acks/s") && reason.contains("utilisation 20%"),
            "{reason}"
        );
    }

    #[test]
    fn apply_hysteresis() {
        let min = Duration::from_secs(600);
        assert!(should_apply(8, Some(2), 25, None, min).is_ok());
        assert!(should_apply(9, Some(8), 25, None, min).is_err());
        assert!(should_apply(8, Some(8), 0, None, min).is_err());
        assert!(should_apply(20, Some(8), 25, Some(Duration::from_secs(60)), min).is_err());
        assert!(should_apply(20, Some(8), 25, Some(Duration::from_secs(601)), min).is_ok());
        assert!(should_apply(5, None, 25, None, min).is_ok());
    }
}
