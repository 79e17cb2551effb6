//! Partition growth: carrying out [`model::growth`] through a [`PartitionAdmin`].
//!
//! The decision is pure ([`model::growth`]); this step adds what it needs from the world —
//! whether the broker can add partitions at all, and the `CreatePartitions` call — and turns
//! the outcome into status, a condition and, for an increase or a new problem, an Event.
//! Nothing here ever stops replica scaling: a broker that refuses or does not implement
//! `CreatePartitions` only sets `PartitionGrowth=False`.
//!
//! **Key ordering**: Kafka maps a keyed record to `murmur2(key) mod partitions`. After an
//! increase, new records of a key may go to another partition than its earlier records, so
//! per-key order holds only among records produced after the change (and among those
//! before it). That is why growth is opt-in.

use std::future::Future;

use jiff::Timestamp;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, TopicName, create_partitions_request::CreatePartitionsTopic,
};

use super::model::{self, Growth, GrowthConfig, GrowthInput};
use super::wire::{Cluster, Route, sb};
use super::{code_name, source_error};
use crate::core::conditions::CondUpdate;
use crate::spec::api::KafkaPartitionGrowthStatus;

/// Condition type.
pub const PARTITION_GROWTH: &str = "PartitionGrowth";

/// Why partitions could not be added.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AdminError {
    /// The broker does not implement `CreatePartitions`.
    #[error("the broker does not support CreatePartitions: {0}")]
    Unsupported(String),
    /// The broker refused (authorization, policy, invalid count).
    #[error("CreatePartitions refused: {0}")]
    Refused(String),
    /// The call failed (network, timeout).
    #[error("CreatePartitions failed: {0}")]
    Failed(String),
}

/// Adds partitions to topics. The operator uses [`Cluster`]; tests use a recording double.
pub trait PartitionAdmin: Send + Sync {
    /// Raise each topic to its new total partition count (increase only).
    fn create_partitions(
        &self,
        increases: &[(String, i32)],
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
}

impl PartitionAdmin for Cluster {
    async fn create_partitions(&self, increases: &[(String, i32)]) -> Result<(), AdminError> {
        let endpoint = self.settings().label();
        let topics = increases.iter().map(|(t, _)| t.clone()).collect();
        // The controller takes it; any broker forwards on current Kafka versions.
        let meta = super::metadata(self, &topics)
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))?;
        let route = meta.controller.map_or(Route::Any, Route::Node);
        match self.supports(route, ApiKey::CreatePartitions).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(AdminError::Unsupported(format!(
                    "{endpoint} does not offer it in ApiVersions"
                )));
            }
            Err(e) => return Err(AdminError::Failed(source_error(e, &endpoint).to_string())),
        }
        let mut req = CreatePartitionsRequest::default();
        req.timeout_ms = i32::try_from(self.settings().timeout.as_millis()).unwrap_or(30_000);
        req.validate_only = false;
        req.topics = increases
            .iter()
            .map(|(t, count)| {
                let mut ct = CreatePartitionsTopic::default();
                ct.name = TopicName(sb(t));
                ct.count = *count;
                ct.assignments = None;
                ct
            })
            .collect();
        let (resp, _) = self.call(route, &req).await.map_err(|e| match e {
            super::wire::WireError::Unsupported { .. } => AdminError::Unsupported(e.to_string()),
            other => AdminError::Failed(source_error(other, &endpoint).to_string()),
        })?;
        let mut refused = Vec::new();
        for r in resp.results {
            // INVALID_PARTITIONS with the count already reached (a retry) is success.
            let name = r.name.0.as_str().to_string();
            let already = r.error_code == 37
                && r.error_message
                    .as_ref()
                    .is_some_and(|m| m.as_str().contains("already has"));
            if r.error_code == 35 {
                return Err(AdminError::Unsupported(code_name(r.error_code)));
            }
            if r.error_code != 0 && !already {
                refused.push(format!(
                    "{name}: {}{}",
                    code_name(r.error_code),
                    r.error_message
                        .as_ref()
                        .map(|m| format!(" ({})", m.as_str()))
                        .unwrap_or_default()
                ));
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(AdminError::Refused(refused.join("; ")))
        }
    }
}

/// What the step reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: KafkaPartitionGrowthStatus,
    pub condition: CondUpdate,
    /// `(warning, reason, note)` when an Event is due.
    pub event: Option<(bool, &'static str, String)>,
}

fn plan_text(to: &[(String, i32, i32)]) -> String {
    to.iter()
        .map(|(t, from, to)| format!("{t} {from} → {to}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decide and, when due, add partitions. `prev`: the status as last written (keeps the
/// last increase across restarts). `cfg`: `None` when the section is absent (recommend only).
pub async fn step<A: PartitionAdmin>(
    admin: &A,
    input: &GrowthInput<'_>,
    cfg: Option<&GrowthConfig>,
    prev: Option<&KafkaPartitionGrowthStatus>,
    now: Timestamp,
) -> Outcome {
    let recommend_only = GrowthConfig {
        auto_increase: false,
        max_partitions: i32::MAX,
        cooldown: std::time::Duration::ZERO,
    };
    let cfg = cfg.unwrap_or(&recommend_only);
    let mut status = prev.cloned().unwrap_or_default();
    status.recommended = None;
    let decision = model::growth(input, cfg);
    let (condition, event) = match decision {
        Growth::NotNeeded(why) => {
            status.reason = Some(why.clone());
            (
                CondUpdate::new(PARTITION_GROWTH, true, "NotNeeded", why),
                None,
            )
        }
        Growth::Recommend { to, why } => {
            let text = format!("{why}; recommend {}", plan_text(&to));
            status.recommended = Some(to.iter().map(|(_, _, n)| n).sum());
            status.reason = Some(text.clone());
            let msg = format!("{text} (set partitionGrowth.autoIncrease to let nerite add them)");
            (
                CondUpdate::new(PARTITION_GROWTH, true, "Recommended", msg),
                None,
            )
        }
        Growth::Held { to, why, at_max } => {
            status.recommended = (!to.is_empty()).then(|| to.iter().map(|(_, _, n)| n).sum());
            status.reason = Some(why.clone());
            let reason = if at_max {
                "AtMaxPartitions"
            } else {
                "Cooldown"
            };
            (CondUpdate::new(PARTITION_GROWTH, true, reason, why), None)
        }
        Growth::Increase { to, why } => {
            let total: i32 = to.iter().map(|(_, _, n)| n).sum();
            status.recommended = Some(total);
            let increases: Vec<(String, i32)> =
                to.iter().map(|(t, _, n)| (t.clone(), *n)).collect();
            match admin.create_partitions(&increases).await {
                Ok(()) => {
                    let text = format!("{}: {why}", plan_text(&to));
                    status.last_increase_time = Some(crate::core::conditions::rfc3339(now));
                    status.last_increase = Some(plan_text(&to));
                    status.increases += 1;
                    status.reason = Some(text.clone());
                    (
                        CondUpdate::new(PARTITION_GROWTH, true, "Increased", text.clone()),
                        Some((
                            false,
                            "PartitionsIncreased",
                            format!(
                                "{text}. Records of a key may land on another partition from now on: per-key order holds only among records produced after the change"
                            ),
                        )),
                    )
                }
                Err(e) => {
                    let reason = match &e {
                        AdminError::Unsupported(_) => "BrokerUnsupported",
                        AdminError::Refused(_) => "Refused",
                        AdminError::Failed(_) => "Failed",
                    };
                    let text = format!(
                        "wanted {}: {e}; replicas keep scaling up to the partition count",
                        plan_text(&to)
                    );
                    status.reason = Some(text.clone());
                    (
                        CondUpdate::new(PARTITION_GROWTH, false, reason, text.clone()),
                        Some((true, "PartitionGrowthFailed", text)),
                    )
                }
            }
        }
    };
    Outcome {
        status,
        condition,
        event,
    }
}

/// The last increase time recorded in a status.
pub fn last_increase(prev: Option<&KafkaPartitionGrowthStatus>) -> Option<Timestamp> {
    prev.and_then(|p| p.last_increase_time.as_deref())
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Test double of [`PartitionAdmin`]: records the increases it is asked for and answers
    /// with a fixed result. Used only by tests; the operator uses [`Cluster`].
    struct RecordingAdmin {
        calls: Mutex<Vec<Vec<(String, i32)>>>,
        answer: Result<(), AdminError>,
    }

    impl RecordingAdmin {
        fn answering(answer: Result<(), AdminError>) -> Self {
            Self {
                calls: Mutex::default(),
                answer,
            }
        }
        fn calls(&self) -> Vec<Vec<(String, i32)>> {
            self.calls.lock().expect("lock").clone()
        }
    }

    impl PartitionAdmin for RecordingAdmin {
        async fn create_partitions(&self, increases: &[(String, i32)]) -> Result<(), AdminError> {
            self.calls.lock().expect("lock").push(increases.to_vec());
            self.answer.clone()
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn input<'a>(
        topics: &'a [(String, i32)],
        now: Timestamp,
        last: Option<Timestamp>,
    ) -> GrowthInput<'a> {
        GrowthInput {
            topics,
            wanted: 8,
            current: 4,
            lag: 50_000,
            consume_rate: Some(200.0),
            produce_rate: Some(200.0),
            drain_within: Duration::from_secs(120),
            last_increase: last,
            now,
        }
    }

    fn auto() -> GrowthConfig {
        GrowthConfig {
            auto_increase: true,
            max_partitions: 16,
            cooldown: Duration::from_secs(900),
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn increase_calls_the_admin_once_and_records_it() {
        let admin = RecordingAdmin::answering(Ok(()));
        let topics = vec![("orders".to_string(), 4)];
        let out = run(step(
            &admin,
            &input(&topics, at(0), None),
            Some(&auto()),
            None,
            at(0),
        ));
        assert_eq!(admin.calls(), vec![vec![("orders".to_string(), 8)]]);
        assert_eq!(out.condition.reason, "Increased");
        assert_eq!(out.status.increases, 1);
        assert_eq!(out.status.last_increase.as_deref(), Some("orders 4 → 8"));
        let (warning, reason, note) = out.event.expect("an event");
        assert!(!warning);
        assert_eq!(reason, "PartitionsIncreased");
        assert!(note.contains("per-key order"), "{note}");

        // The next tick, within the cooldown (the topic now has 8 partitions but the fleet
        // wants more): no second call.
        let topics = vec![("orders".to_string(), 8)];
        let mut next = input(&topics, at(60), last_increase(Some(&out.status)));
        next.wanted = 12;
        next.current = 8;
        let again = run(step(
            &admin,
            &next,
            Some(&auto()),
            Some(&out.status),
            at(60),
        ));
        assert_eq!(admin.calls().len(), 1);
        assert_eq!(again.condition.reason, "Cooldown");
        assert_eq!(again.status.increases, 1);
    }

    #[test]
    fn without_opt_in_only_recommends() {
        let admin = RecordingAdmin::answering(Ok(()));
        let topics = vec![("orders".to_string(), 4)];
        let out = run(step(
            &admin,
            &input(&topics, at(0), None),
            None,
            None,
            at(0),
        ));
        assert!(admin.calls().is_empty());
        assert_eq!(out.condition.reason, "Recommended");
        assert_eq!(out.status.recommended, Some(8));
        assert!(out.event.is_none());
    }

    #[test]
    fn an_unsupported_broker_gives_a_condition_not_a_failure_of_scaling() {
        let admin = RecordingAdmin::answering(Err(AdminError::Unsupported("not offered".into())));
        let topics = vec![("orders".to_string(), 4)];
        let out = run(step(
            &admin,
            &input(&topics, at(0), None),
            Some(&auto()),
            None,
            at(0),
        ));
        assert!(!out.condition.status);
        assert_eq!(out.condition.reason, "BrokerUnsupported");
        assert!(out.condition.message.contains("replicas keep scaling"));
        assert_eq!(out.status.increases, 0);
        assert!(out.event.expect("event").0, "a warning");
    }
}
