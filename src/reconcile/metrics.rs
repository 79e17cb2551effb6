//! Operator metrics (Prometheus / OpenMetrics text), served by `runtime::http`.
//!
//! Every label is bounded: reasons and categories come from fixed sets in the code, and the
//! per-object series (`namespace`, `name`) are dropped when their ScaledConsumer is deleted.
//! See `docs/metrics.md` for the reference.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::core::observation::Observation;
use crate::kubeio::error::Error;

/// Series that belong to one ScaledConsumer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    category: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    direction: &'static str,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    namespace: String,
    name: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    source: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    write: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusWriteLabels {
    outcome: &'static str,
}

fn poll_histogram() -> Histogram {
    // 5 ms .. ~10 s
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// All of nerite's metrics, registered under the `nerite_` prefix.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    backlog: Family<ObjectLabels, Gauge>,
    observed_at: Family<ObjectLabels, Gauge>,
    current_replicas: Family<ObjectLabels, Gauge>,
    desired_replicas: Family<ObjectLabels, Gauge>,
    actions: Family<ActionLabels, Counter>,
    poll_duration: Family<PollLabels, Histogram, fn() -> Histogram>,
    leader: Gauge,
    leader_acquisitions: Counter,
    status_writes: Family<StatusWriteLabels, Counter>,
    writes_dropped: Family<WriteLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nerite");
        let m = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            decisions: Family::default(),
            backlog: Family::default(),
            observed_at: Family::default(),
            current_replicas: Family::default(),
            desired_replicas: Family::default(),
            actions: Family::default(),
            poll_duration: Family::new_with_constructor(poll_histogram as fn() -> Histogram),
            leader: Gauge::default(),
            leader_acquisitions: Counter::default(),
            status_writes: Family::default(),
            writes_dropped: Family::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "Reconciles started", m.reconciles.clone());
        registry.register(
            "errors",
            "Errors met while reconciling, by category (spec, target, source, kubernetes) and reason",
            m.errors.clone(),
        );
        registry.register(
            "decisions",
            "Scaling decisions, by direction (up, down, hold) and the limit that shaped them",
            m.decisions.clone(),
        );
        registry.register(
            "observed_backlog",
            "Backlog (messages counted toward the objective) at the last successful read",
            m.backlog.clone(),
        );
        registry.register(
            "last_observation_timestamp_seconds",
            "When the broker reading behind the last successful observation was taken (Unix seconds)",
            m.observed_at.clone(),
        );
        registry.register(
            "current_replicas",
            "The target's spec.replicas as read from /scale",
            m.current_replicas.clone(),
        );
        registry.register(
            "desired_replicas",
            "The replica count nerite decided on",
            m.desired_replicas.clone(),
        );
        registry.register(
            "scale_actions",
            "Writes to a target's /scale subresource, by direction",
            m.actions.clone(),
        );
        registry.register(
            "source_poll_duration_seconds",
            "Time to read a broker (credentials and the broker call), by source and outcome",
            m.poll_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader Lease (or runs without leader election)",
            m.leader.clone(),
        );
        registry.register(
            "leader_acquisitions",
            "Times this instance became leader",
            m.leader_acquisitions.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes of the reconcile, by outcome: written, or skipped because nothing a user reads changed and no heartbeat was due",
            m.status_writes.clone(),
        );
        registry.register(
            "writes_dropped",
            "Kubernetes writes dropped because this replica did not lead (or a job's term had lapsed), by kind (scale, status, event, prefetch)",
            m.writes_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    pub fn reconcile(&self) {
        self.reconciles.inc();
    }

    /// Count an error under its bounded category and reason.
    pub fn error(&self, err: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                category: category(err),
                reason: err.reason(),
            })
            .inc();
    }

    /// A broker read finished after `took`.
    pub fn poll(&self, source: &'static str, ok: bool, took: Duration) {
        self.poll_duration
            .get_or_create(&PollLabels {
                source,
                outcome: if ok { "ok" } else { "error" },
            })
            .observe(took.as_secs_f64());
    }

    /// What a successful read showed.
    pub fn observed(&self, namespace: &str, name: &str, obs: &Observation) {
        self.backlog
            .get_or_create(&object(namespace, name))
            .set(obs.backlog);
        self.observed_at
            .get_or_create(&object(namespace, name))
            .set(obs.observed_at.as_second());
    }

    /// A decision: `limit` is the condition reason of the limit that shaped it, if any.
    pub fn decision(
        &self,
        namespace: &str,
        name: &str,
        current: i32,
        desired: i32,
        limit: Option<&'static str>,
    ) {
        let direction = direction(current, desired);
        self.decisions
            .get_or_create(&DecisionLabels {
                direction,
                limit: limit.unwrap_or("None"),
            })
            .inc();
        let key = object(namespace, name);
        self.current_replicas
            .get_or_create(&key)
            .set(i64::from(current));
        self.desired_replicas
            .get_or_create(&key)
            .set(i64::from(desired));
    }

    /// nerite wrote a new count to the target's `/scale`.
    pub fn scaled(&self, namespace: &str, name: &str, from: i32, to: i32) {
        self.actions
            .get_or_create(&ActionLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                direction: direction(from, to),
            })
            .inc();
    }

    /// Drop every series of a deleted ScaledConsumer.
    pub fn forget(&self, namespace: &str, name: &str) {
        let key = object(namespace, name);
        self.backlog.remove(&key);
        self.observed_at.remove(&key);
        self.current_replicas.remove(&key);
        self.desired_replicas.remove(&key);
        for direction in ["up", "down"] {
            self.actions.remove(&ActionLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                direction,
            });
        }
    }

    /// A reconcile's status was written (`true`) or left as it was (`false`).
    pub fn status_write(&self, written: bool) {
        self.status_writes
            .get_or_create(&StatusWriteLabels {
                outcome: if written { "written" } else { "skipped" },
            })
            .inc();
    }

    /// A write was dropped: this replica does not lead.
    pub fn write_dropped(&self, write: &'static str) {
        self.writes_dropped
            .get_or_create(&WriteLabels { write })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn became_leader(&self) {
        self.leader_acquisitions.inc();
    }
}

fn object(namespace: &str, name: &str) -> ObjectLabels {
    ObjectLabels {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn direction(from: i32, to: i32) -> &'static str {
    match to.cmp(&from) {
        std::cmp::Ordering::Greater => "up",
        std::cmp::Ordering::Less => "down",
        std::cmp::Ordering::Equal => "hold",
    }
}

/// The bounded category of an error, for the `category` label.
pub fn category(err: &Error) -> &'static str {
    match err {
        Error::InvalidSpec(_) => "spec",
        Error::UnknownTargetKind { .. }
        | Error::TargetNotScalable { .. }
        | Error::TargetNotFound { .. } => "target",
        Error::Kube(_) | Error::MissingObjectKey(_) => "kubernetes",
        _ if err.is_source_failure() => "source",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(backlog: i64) -> Observation {
        Observation {
            backlog,
            ready: None,
            unacked: None,
            consumers: None,
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
            consumer_utilisation: None,
            observed_at: jiff::Timestamp::UNIX_EPOCH,
            replica_cap: None,
        }
    }

    #[test]
    fn encodes_per_object_series_and_forgets_them() {
        let m = Metrics::new();
        m.reconcile();
        m.observed("shop", "orders", &obs(1000));
        m.decision("shop", "orders", 1, 10, Some("AtMaxReplicas"));
        m.scaled("shop", "orders", 1, 10);
        m.poll("rabbitmq", true, Duration::from_millis(12));
        let text = m.encode();
        for want in [
            "nerite_reconciles_total 1",
            r#"nerite_observed_backlog{namespace="shop",name="orders"} 1000"#,
            r#"nerite_last_observation_timestamp_seconds{namespace="shop",name="orders"} 0"#,
            r#"nerite_desired_replicas{namespace="shop",name="orders"} 10"#,
            r#"nerite_decisions_total{direction="up",limit="AtMaxReplicas"} 1"#,
            r#"nerite_scale_actions_total{namespace="shop",name="orders",direction="up"} 1"#,
            r#"nerite_source_poll_duration_seconds_count{source="rabbitmq",outcome="ok"} 1"#,
            "nerite_leader 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        m.forget("shop", "orders");
        let text = m.encode();
        assert!(!text.contains(r#"name="orders""#), "{text}");
    }

    #[test]
    fn errors_have_bounded_categories() {
        let m = Metrics::new();
        m.error(&Error::TargetNotFound {
            kind: "Deployment".into(),
            name: "x".into(),
            namespace: "y".into(),
        });
        m.error(&Error::SecretNotFound {
            name: "s".into(),
            namespace: "y".into(),
        });
        let text = m.encode();
        assert!(
            text.contains(r#"nerite_errors_total{category="target",reason="TargetNotFound"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"nerite_errors_total{category="source",reason="SecretNotFound"} 1"#),
            "{text}"
        );
        // Names of objects never become labels of error series.
        assert!(!text.contains(r#"name="x""#));
    }
}
