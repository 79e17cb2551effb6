//! Pure Kafka rules: lag per partition, the totals nerite scales on, rates from offset
//! progress, the replica cap, and partition growth. No I/O, no clock.
//!
//! **Lag of a partition** (log-start `S`, log-end `E` = high watermark, committed `C`):
//! - with a committed offset: `E − max(C, S)`, never below 0. Records below `S` were
//!   deleted by retention; the group can never read them, so they are not work (counted
//!   apart as `retentionSkipped`).
//! - without one, by `offsetResetPolicy` (what the group's consumers will do when they
//!   start on that partition): `Latest` (Kafka's default) → 0, the consumers begin at the
//!   end; `Earliest` → `E − S`, everything retained will be read.

pub use crate::spec::validate::{CapMode, GrowthConfig, OffsetReset};
use std::time::Duration;

use jiff::Timestamp;

/// Offsets of one partition as the brokers report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    /// The group's committed offset; `None` when it has none.
    pub committed: Option<i64>,
}

/// One partition's lag and how it was counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub log_start: i64,
    pub log_end: i64,
    pub committed: Option<i64>,
    pub lag: i64,
    /// Records deleted by retention before the group read them.
    pub retention_skipped: i64,
}

/// The group's lag over its topics.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LagSummary {
    pub total: i64,
    pub partitions: i32,
    pub lagging: i32,
    /// Partitions without a committed offset.
    pub without_commit: i32,
    pub retention_skipped: i64,
    /// Sorted by topic, then partition.
    pub per_partition: Vec<PartitionLag>,
}

/// Apply the lag rules to every partition.
pub fn lag(parts: &[PartitionOffsets], reset: OffsetReset) -> LagSummary {
    let mut out = LagSummary::default();
    for p in parts {
        let start = p.log_start.max(0);
        let end = p.log_end.max(start);
        let (lag, skipped) = match p.committed.filter(|c| *c >= 0) {
            Some(c) => ((end - c.max(start)).max(0), (start - c).max(0)),
            None => match reset {
                OffsetReset::Latest => (0, 0),
                OffsetReset::Earliest => (end - start, 0),
            },
        };
        out.total = out.total.saturating_add(lag);
        out.partitions += 1;
        if lag > 0 {
            out.lagging += 1;
        }
        if p.committed.is_none_or(|c| c < 0) {
            out.without_commit += 1;
        }
        out.retention_skipped = out.retention_skipped.saturating_add(skipped);
        out.per_partition.push(PartitionLag {
            topic: p.topic.clone(),
            partition: p.partition,
            log_start: start,
            log_end: end,
            committed: p.committed.filter(|c| *c >= 0),
            lag,
            retention_skipped: skipped,
        });
    }
    out.per_partition
        .sort_by(|a, b| (a.topic.as_str(), a.partition).cmp(&(b.topic.as_str(), b.partition)));
    out
}

/// Sums that rates are derived from, at one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub at: Timestamp,
    /// Σ log-end offsets.
    pub produced: i64,
    /// Σ committed offsets (partitions with a commit).
    pub committed: i64,
    /// Partitions with a commit (a change means the sums are not comparable).
    pub with_commit: i32,
    pub partitions: i32,
}

impl Progress {
    pub fn of(parts: &[PartitionOffsets], at: Timestamp) -> Progress {
        let mut p = Progress {
            at,
            produced: 0,
            committed: 0,
            with_commit: 0,
            partitions: 0,
        };
        for x in parts {
            p.partitions += 1;
            p.produced = p.produced.saturating_add(x.log_end.max(0));
            if let Some(c) = x.committed.filter(|c| *c >= 0) {
                p.committed = p.committed.saturating_add(c);
                p.with_commit += 1;
            }
        }
        p
    }
}

/// Produce rate (log-end progress) and consume rate (committed-offset progress), records
/// per second, between two readings at least `min_gap` apart. `None` for a rate whose sums
/// are not comparable (partitions added, a first commit, offsets that went back).
pub fn rates(prev: &Progress, now: &Progress, min_gap: Duration) -> (Option<f64>, Option<f64>) {
    let Ok(span) = now.at.duration_since(prev.at).try_into() else {
        return (None, None);
    };
    let span: Duration = span;
    if span < min_gap || span.is_zero() {
        return (None, None);
    }
    let secs = span.as_secs_f64();
    let same_partitions = prev.partitions == now.partitions;
    let produce = (same_partitions && now.produced >= prev.produced)
        .then(|| (now.produced - prev.produced) as f64 / secs);
    let consume =
        (same_partitions && prev.with_commit == now.with_commit && now.committed >= prev.committed)
            .then(|| (now.committed - prev.committed) as f64 / secs);
    (produce, consume)
}

/// The cap for this reading, and how to say it.
pub fn replica_cap(mode: CapMode, summary: &LagSummary) -> Option<(i32, String)> {
    match mode {
        CapMode::None => None,
        CapMode::Partitions => Some((
            summary.partitions,
            format!(
                "{} partitions (more consumers would idle; allowIdleConsumers lifts this)",
                summary.partitions
            ),
        )),
        CapMode::LaggingPartitions => Some((
            summary.lagging,
            format!(
                "{} partitions with lag (limitToPartitionsWithLag)",
                summary.lagging
            ),
        )),
    }
}

// ----------------------------------------------------------------------- partition growth

/// What the growth decision looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthInput<'a> {
    /// Partition count per topic of the source.
    pub topics: &'a [(String, i32)],
    /// Replicas the objective asks for (before the partition cap, within maxReplicas).
    pub wanted: i32,
    /// Replicas running now.
    pub current: i32,
    pub lag: i64,
    pub consume_rate: Option<f64>,
    pub produce_rate: Option<f64>,
    /// How long the backlog may take to drain (`maxDrainTime`, `maxMessageWait`, or the
    /// default of [`DEFAULT_GROWTH_DRAIN`]).
    pub drain_within: Duration,
    pub last_increase: Option<Timestamp>,
    pub now: Timestamp,
}

/// Drain time the growth decision uses when the objective names none.
pub const DEFAULT_GROWTH_DRAIN: Duration = Duration::from_secs(300);

/// The outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Growth {
    /// Partitions are not what limits the fleet.
    NotNeeded(String),
    /// More partitions would help, but nerite may not add them (no opt-in).
    Recommend {
        to: Vec<(String, i32, i32)>,
        why: String,
    },
    /// More partitions would help, but not now (cooldown) or not beyond `maxPartitions`.
    Held {
        to: Vec<(String, i32, i32)>,
        why: String,
        at_max: bool,
    },
    /// Increase these topics (topic, from, to).
    Increase {
        to: Vec<(String, i32, i32)>,
        why: String,
    },
}

/// Decide whether the partition count should grow. Increases only, never beyond
/// `maxPartitions` per topic, at most once per cooldown, and only when the fleet already
/// runs one consumer per partition and the lag does not drain within the objective.
pub fn growth(i: &GrowthInput<'_>, cfg: &GrowthConfig) -> Growth {
    let total: i32 = i.topics.iter().map(|(_, n)| *n).sum();
    if total <= 0 {
        return Growth::NotNeeded("no partitions known".into());
    }
    if i.wanted <= total {
        return Growth::NotNeeded(format!(
            "{} replicas wanted, {total} partitions suffice",
            i.wanted
        ));
    }
    if i.current < total {
        return Growth::NotNeeded(format!(
            "{} replicas wanted beyond {total} partitions, but only {} run: replicas first",
            i.wanted, i.current
        ));
    }
    let (Some(consume), Some(produce)) = (i.consume_rate, i.produce_rate) else {
        return Growth::NotNeeded(format!(
            "{} replicas wanted beyond {total} partitions; waiting for measured rates",
            i.wanted
        ));
    };
    let net = consume - produce;
    let within = i.drain_within.as_secs_f64();
    if i.lag <= 0 {
        return Growth::NotNeeded("no lag".into());
    }
    if net > 0.0 {
        let eta = i.lag as f64 / net;
        if eta <= within {
            return Growth::NotNeeded(format!(
                "lag {} drains in {:.0}s at {:.1}/s net, within {:.0}s",
                i.lag, eta, net, within
            ));
        }
    }
    let drains = if net > 0.0 {
        format!("drains in {:.0}s at {:.1}/s net", i.lag as f64 / net, net)
    } else {
        format!("grows ({:.1}/s in, {:.1}/s consumed)", produce, consume)
    };
    // Grow each topic in proportion to its share, so the sum reaches `wanted`.
    let max = cfg.max_partitions.max(1);
    let mut to = Vec::new();
    let mut at_max = false;
    for (topic, n) in i.topics {
        let share = f64::from(*n) / f64::from(total);
        let want = (f64::from(i.wanted) * share).ceil() as i32;
        let target = want.min(max).max(*n);
        if want > max {
            at_max = true;
        }
        if target > *n {
            to.push((topic.clone(), *n, target));
        }
    }
    let why = format!(
        "{} replicas wanted but {total} partitions cap them, and lag {} {drains} (objective {:.0}s)",
        i.wanted, i.lag, within
    );
    if to.is_empty() {
        return Growth::Held {
            to,
            why: format!("{why}; already at maxPartitions {max}"),
            at_max: true,
        };
    }
    if !cfg.auto_increase {
        return Growth::Recommend { to, why };
    }
    if let Some(last) = i.last_increase {
        let since: Duration = i
            .now
            .duration_since(last)
            .try_into()
            .unwrap_or(Duration::ZERO);
        if since < cfg.cooldown {
            return Growth::Held {
                to,
                why: format!(
                    "{why}; cooldown: last increase {}s ago, {}s required",
                    since.as_secs(),
                    cfg.cooldown.as_secs()
                ),
                at_max: false,
            };
        }
    }
    let why = if at_max {
        format!("{why}; limited by maxPartitions {max}")
    } else {
        why
    };
    Growth::Increase { to, why }
}

/// Kafka's default partitioner for keyed records (murmur2 of the key, positive, modulo the
/// partition count), so redriven records land where the producer's records with the same
/// key do.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    let h = murmur2(key) & 0x7fff_ffff;
    (h % partitions as u32) as i32
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match rest.len() {
        3 => {
            h ^= u32::from(rest[2]) << 16;
            h ^= u32::from(rest[1]) << 8;
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(rest[1]) << 8;
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: i32, start: i64, end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            topic: "orders".into(),
            partition,
            log_start: start,
            log_end: end,
            committed,
        }
    }

    #[test]
    fn lag_per_partition_and_total() {
        let s = lag(
            &[
                p(0, 0, 2000, Some(500)),
                p(1, 0, 2000, Some(2000)),
                p(2, 0, 1500, Some(0)),
                p(3, 0, 3000, Some(0)),
            ],
            OffsetReset::Latest,
        );
        assert_eq!(
            s.per_partition.iter().map(|x| x.lag).collect::<Vec<_>>(),
            vec![1500, 0, 1500, 3000]
        );
        assert_eq!((s.total, s.partitions, s.lagging), (6000, 4, 3));
    }

    #[test]
    fn retention_deleted_records_are_not_lag() {
        let s = lag(&[p(0, 800, 1000, Some(300))], OffsetReset::Latest);
        assert_eq!(s.total, 200);
        assert_eq!(s.retention_skipped, 500);
    }

    #[test]
    fn no_commit_follows_the_reset_policy() {
        let parts = [p(0, 100, 1000, None), p(1, 0, 50, Some(-1))];
        let latest = lag(&parts, OffsetReset::Latest);
        assert_eq!((latest.total, latest.without_commit), (0, 2));
        let earliest = lag(&parts, OffsetReset::Earliest);
        assert_eq!(earliest.total, 900 + 50);
    }

    #[test]
    fn committed_beyond_the_end_is_no_lag() {
        assert_eq!(lag(&[p(0, 0, 10, Some(50))], OffsetReset::Latest).total, 0);
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn rates_from_offset_progress() {
        let a = Progress::of(&[p(0, 0, 1000, Some(100)), p(1, 0, 1000, Some(100))], at(0));
        let b = Progress::of(
            &[p(0, 0, 1500, Some(300)), p(1, 0, 1500, Some(300))],
            at(10),
        );
        assert_eq!(
            rates(&a, &b, Duration::from_secs(1)),
            (Some(100.0), Some(40.0))
        );
        // Too close together: nothing.
        assert_eq!(rates(&a, &a, Duration::from_secs(1)), (None, None));
        // A partition got its first commit: the consume sum is not comparable.
        let c = Progress::of(&[p(0, 0, 1500, Some(300)), p(1, 0, 1500, None)], at(20));
        assert_eq!(rates(&b, &c, Duration::from_secs(1)).1, None);
    }

    #[test]
    fn caps() {
        let s = lag(
            &[
                p(0, 0, 10, Some(0)),
                p(1, 0, 10, Some(10)),
                p(2, 0, 10, Some(5)),
            ],
            OffsetReset::Latest,
        );
        assert_eq!(replica_cap(CapMode::Partitions, &s).map(|c| c.0), Some(3));
        assert_eq!(
            replica_cap(CapMode::LaggingPartitions, &s).map(|c| c.0),
            Some(2)
        );
        assert_eq!(replica_cap(CapMode::None, &s), None);
    }

    fn cfg(auto: bool) -> GrowthConfig {
        GrowthConfig {
            auto_increase: auto,
            max_partitions: 12,
            cooldown: Duration::from_secs(600),
        }
    }

    fn input<'a>(topics: &'a [(String, i32)]) -> GrowthInput<'a> {
        GrowthInput {
            topics,
            wanted: 8,
            current: 4,
            lag: 60_000,
            consume_rate: Some(100.0),
            produce_rate: Some(100.0),
            drain_within: Duration::from_secs(300),
            last_increase: None,
            now: at(10_000),
        }
    }

    #[test]
    fn growth_needs_a_capped_fleet_that_cannot_drain() {
        let topics = vec![("orders".to_string(), 4)];
        let base = input(&topics);
        assert_eq!(
            growth(&base, &cfg(true)),
            Growth::Increase {
                to: vec![("orders".into(), 4, 8)],
                why: "8 replicas wanted but 4 partitions cap them, and lag 60000 grows (100.0/s in, 100.0/s consumed) (objective 300s)".into()
            }
        );
        // Enough partitions.
        assert!(matches!(
            growth(
                &GrowthInput {
                    wanted: 4,
                    ..base.clone()
                },
                &cfg(true)
            ),
            Growth::NotNeeded(_)
        ));
        // Replicas have not reached the partitions yet.
        assert!(matches!(
            growth(
                &GrowthInput {
                    current: 3,
                    ..base.clone()
                },
                &cfg(true)
            ),
            Growth::NotNeeded(_)
        ));
        // Draining within the objective: 60000 / (400 − 100) = 200 s.
        assert!(matches!(
            growth(
                &GrowthInput {
                    consume_rate: Some(400.0),
                    ..base.clone()
                },
                &cfg(true)
            ),
            Growth::NotNeeded(_)
        ));
        // Rates unknown: wait.
        assert!(matches!(
            growth(
                &GrowthInput {
                    consume_rate: None,
                    ..base.clone()
                },
                &cfg(true)
            ),
            Growth::NotNeeded(_)
        ));
        // Without opt-in: only a recommendation.
        assert!(matches!(
            growth(&base, &cfg(false)),
            Growth::Recommend { .. }
        ));
    }

    #[test]
    fn growth_respects_max_and_cooldown() {
        let topics = vec![("orders".to_string(), 4)];
        let base = GrowthInput {
            wanted: 40,
            ..input(&topics)
        };
        match growth(&base, &cfg(true)) {
            Growth::Increase { to, why } => {
                assert_eq!(to, vec![("orders".into(), 4, 12)]);
                assert!(why.contains("maxPartitions 12"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let at_max = vec![("orders".to_string(), 12)];
        assert!(matches!(
            growth(
                &GrowthInput {
                    current: 12,
                    ..GrowthInput {
                        wanted: 40,
                        ..input(&at_max)
                    }
                },
                &cfg(true)
            ),
            Growth::Held { at_max: true, .. }
        ));
        let recent = GrowthInput {
            last_increase: Some(at(10_000 - 60)),
            ..base.clone()
        };
        assert!(matches!(
            growth(&recent, &cfg(true)),
            Growth::Held { at_max: false, .. }
        ));
        let old = GrowthInput {
            last_increase: Some(at(10_000 - 601)),
            ..base
        };
        assert!(matches!(growth(&old, &cfg(true)), Growth::Increase { .. }));
    }

    #[test]
    fn growth_spreads_over_topics_and_never_shrinks() {
        let topics = vec![("a".to_string(), 2), ("b".to_string(), 6)];
        let i = GrowthInput {
            wanted: 12,
            current: 8,
            ..input(&topics)
        };
        match growth(&i, &cfg(true)) {
            Growth::Increase { to, .. } => {
                assert_eq!(to, vec![("a".into(), 2, 3), ("b".into(), 6, 9)]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Values from the Java client (`Utils.murmur2` / `toPositive(...) % n`).
    #[test]
    fn murmur2_matches_the_java_client() {
        // Known vectors used by several Kafka client test suites.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        assert_eq!(partition_for_key(b"abc", 1), 0);
    }
}
