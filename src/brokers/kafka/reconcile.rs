//! One ScaledConsumer's Kafka step in a tick: the target (settings with the Secrets'
//! contents), and after the decision the status details, partition growth, the dead-letter
//! topic and the redrive.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;

use super::growth::{self, PARTITION_GROWTH};
use super::model::{DEFAULT_GROWTH_DRAIN, GrowthInput};
use super::sasl::Mechanism;
use super::wire::{SaslLogin, Settings, TlsMaterial};
use super::{KafkaApi, KafkaReading, KafkaTarget};
use crate::core::conditions::CondUpdate;
use crate::core::policy::{Decision, PolicyConfig};
use crate::kubeio::KubeIo;
use crate::kubeio::error::Result;
use crate::spec::api::{
    KafkaDeadLetterStatus, KafkaPartitionStatus, KafkaSaslMechanism, KafkaStatus, ScaledConsumer,
};
use crate::spec::redrive::{self as vocab, DEAD_LETTER_READY, REDRIVE};
use crate::spec::validate::ValidKafka;
/// Partitions listed in `status.kafka.perPartition` at most.
pub const MAX_LISTED_PARTITIONS: usize = 64;

/// Build the target: Secrets are read here (the cache in [`KubeIo`] keeps that cheap).
pub async fn target(
    kube: &KubeIo,
    namespace: &str,
    k: &ValidKafka,
    timeout: std::time::Duration,
) -> Result<KafkaTarget> {
    let sasl = match &k.sasl {
        None => None,
        Some(s) => {
            let c = kube
                .credentials(namespace, &s.credentials_secret_ref)
                .await?;
            Some(SaslLogin {
                mechanism: match s.mechanism {
                    KafkaSaslMechanism::Plain => Mechanism::Plain,
                    KafkaSaslMechanism::ScramSha256 => Mechanism::ScramSha256,
                    KafkaSaslMechanism::ScramSha512 => Mechanism::ScramSha512,
                },
                username: c.username.clone(),
                password: c.password().to_string(),
            })
        }
    };
    let tls = match &k.tls {
        None => None,
        Some(t) => {
            let ca_pem = match &t.ca_secret_ref {
                Some(r) => Some(
                    kube.secret_values(namespace, &r.name, &[&r.key])
                        .await?
                        .concat()
                        .into_bytes(),
                ),
                None => None,
            };
            let (client_cert_pem, client_key_pem) = match &t.client_cert_secret_ref {
                Some(r) => {
                    let mut v = kube
                        .secret_values(namespace, &r.name, &[&r.cert_key, &r.key_key])
                        .await?;
                    let key = v.pop().unwrap_or_default().into_bytes();
                    let cert = v.pop().unwrap_or_default().into_bytes();
                    (Some(cert), Some(key))
                }
                None => (None, None),
            };
            Some(TlsMaterial {
                ca_pem,
                client_cert_pem,
                client_key_pem,
                server_name: t.server_name.clone(),
            })
        }
    };
    Ok(KafkaTarget {
        settings: Settings {
            bootstrap: k.bootstrap.clone(),
            tls,
            sasl,
            timeout,
            client_id: "nerite".to_string(),
        },
        topics: k.topics.clone(),
        group: k.group.clone(),
        offset_reset: k.offset_reset,
        cap: k.cap,
        dead_letter_topic: k.dead_letter.as_ref().map(|d| d.topic.clone()),
    })
}

/// What the Kafka step adds to a tick's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickOutcome {
    /// `status.kafka` without `redrive` (the redrive writes its own progress).
    pub status: Option<KafkaStatus>,
    pub conditions: Vec<CondUpdate>,
}

/// `status.kafka` as the tick applies it: everything but the redrive progress.
pub fn status_for_apply(s: KafkaStatus) -> KafkaStatus {
    KafkaStatus { redrive: None, ..s }
}

/// Inputs of the step after the decision.
pub struct After<'a> {
    pub sc: &'a ScaledConsumer,
    pub key: &'a str,
    pub spec: &'a ValidKafka,
    /// The target (`None` when its Secrets could not be read).
    pub target: Option<&'a KafkaTarget>,
    /// This tick's reading (`None` when the read failed).
    pub reading: Option<&'a KafkaReading>,
    pub decision: &'a Decision,
    pub current: i32,
    pub policy: &'a PolicyConfig,
    pub kube: &'a Arc<KubeIo>,
}

impl KafkaApi {
    /// Status details, partition growth, the dead-letter topic and the redrive. Never fails
    /// the tick: problems become conditions (and an Event when they first appear).
    pub async fn after_decide(&self, a: After<'_>) -> TickOutcome {
        let prev_status = a.sc.status.as_ref();
        let prev = prev_status
            .and_then(|s| s.kafka.clone())
            .unwrap_or_default();
        let prev_cond =
            |t: &str| prev_status.and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned());
        let Some(target) = a.target else {
            return TickOutcome {
                status: Some(status_for_apply(prev)),
                conditions: Vec::new(),
            };
        };
        // The redrive needs only the cluster: it runs (and resumes) even while the group
        // cannot be read.
        let redrive = self.supervise_redrive(&a, target, &prev).await;
        let Some(reading) = a.reading else {
            return TickOutcome {
                status: Some(status_for_apply(prev)),
                conditions: redrive.into_iter().collect(),
            };
        };
        let s = &reading.summary;
        let mut status = KafkaStatus {
            partitions: s.partitions,
            lagging_partitions: s.lagging,
            total_lag: s.total,
            partitions_without_commit: s.without_commit,
            retention_skipped: s.retention_skipped,
            produce_rate: reading.produce_rate.map(round2),
            consume_rate: reading.consume_rate.map(round2),
            estimated_time_lag_seconds: reading.time_lag().map(round2),
            per_partition: s
                .per_partition
                .iter()
                .take(MAX_LISTED_PARTITIONS)
                .map(|p| KafkaPartitionStatus {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    log_start: p.log_start,
                    log_end: p.log_end,
                    committed: p.committed,
                    lag: p.lag,
                })
                .collect(),
            per_partition_truncated: s.per_partition.len() > MAX_LISTED_PARTITIONS,
            partition_growth: None,
            dead_letter: None,
            redrive: None,
        };
        let mut conditions: Vec<CondUpdate> = redrive.into_iter().collect();

        // Partition growth (recommend without opt-in).
        let now = Timestamp::now();
        let wanted = a
            .decision
            .uncapped
            .or(a.decision.recommended)
            .unwrap_or(a.current)
            .min(a.policy.max_replicas);
        let drain_within = a
            .policy
            .max_drain_time
            .or(a.policy.max_message_wait)
            .unwrap_or(DEFAULT_GROWTH_DRAIN);
        let input = GrowthInput {
            topics: &reading.topics,
            wanted,
            current: a.current,
            lag: s.total,
            consume_rate: reading.consume_rate,
            produce_rate: reading.produce_rate,
            drain_within,
            last_increase: growth::last_increase(prev.partition_growth.as_ref()),
            now,
        };
        let shared = self.shared(&target.settings);
        let outcome = growth::step(
            shared.cluster.as_ref(),
            &input,
            a.spec.growth.as_ref(),
            prev.partition_growth.as_ref(),
            now,
        )
        .await;
        if let Some((warning, reason, note)) = &outcome.event {
            let repeated = prev_cond(PARTITION_GROWTH)
                .is_some_and(|c| c.reason == outcome.condition.reason && *warning);
            if !repeated {
                a.kube
                    .event(a.sc, *warning, reason, "PartitionGrowth", note.clone())
                    .await;
            }
        }
        status.partition_growth = Some(outcome.status);
        conditions.push(outcome.condition);

        // The dead-letter topic.
        if let Some(d) = &a.spec.dead_letter {
            match &reading.dead_letter {
                Some(Ok(t)) => {
                    status.dead_letter = Some(KafkaDeadLetterStatus {
                        topic: d.topic.clone(),
                        depth: Some(t.depth()),
                        partitions: i32::try_from(t.partitions.len()).ok(),
                    });
                    conditions.push(CondUpdate::new(
                        DEAD_LETTER_READY,
                        true,
                        "TopicFound",
                        format!("dead-letter topic {} holds {} records", d.topic, t.depth()),
                    ));
                }
                Some(Err(e)) => {
                    status.dead_letter = Some(KafkaDeadLetterStatus {
                        topic: d.topic.clone(),
                        depth: None,
                        partitions: None,
                    });
                    let reason = if e.reason() == "TopicNotFound" {
                        "DeadLetterTopicNotFound"
                    } else {
                        e.reason()
                    };
                    if prev_cond(DEAD_LETTER_READY).is_none_or(|c| c.reason != reason) {
                        a.kube
                            .event(a.sc, true, reason, "DeadLetter", e.to_string())
                            .await;
                    }
                    conditions.push(CondUpdate::new(
                        DEAD_LETTER_READY,
                        false,
                        reason,
                        e.to_string(),
                    ));
                }
                None => {}
            }
        }
        TickOutcome {
            status: Some(status),
            conditions,
        }
    }
}

impl KafkaApi {
    /// Start, resume or leave the redrive in force (`deadLetter.redrive`, the
    /// `nerite.dev/redrive-request` annotation, or a recorded one still running); returns the
    /// `Redrive` condition (a refusal gets a Warning Event when it first appears).
    async fn supervise_redrive(
        &self,
        a: &After<'_>,
        target: &KafkaTarget,
        prev: &KafkaStatus,
    ) -> Option<CondUpdate> {
        let dead_letter = a.spec.dead_letter.as_ref();
        let spec_redrive = dead_letter.and_then(|d| d.redrive.as_ref());
        let recorded = prev.redrive.as_ref();
        let requested = vocab::requested(
            spec_redrive.map(|r| (r.request_id.as_str(), r.cancel)),
            a.sc.annotations(),
            recorded.map(|r| (r.progress.request_id.as_str(), r.progress.phase)),
        );
        let previous =
            a.sc.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == REDRIVE));
        let mut refusal = None;
        if let (Some(d), Some(r)) = (dead_letter, &requested.request) {
            // The target topic: the spec's, the recorded one's, or the only source topic.
            let target_topic = match (spec_redrive, recorded) {
                (Some(s), _) => Some(s.target_topic.clone()),
                (None, Some(rec)) if rec.progress.request_id == r.request_id => {
                    Some(rec.target_topic.clone())
                }
                (None, _) => match a.spec.topics.as_slice() {
                    [one] => Some(one.clone()),
                    _ => None,
                },
            };
            match target_topic {
                Some(target_topic) => {
                    super::redrive::supervise(
                        &self.redrives,
                        super::redrive::Request {
                            sc: a.sc,
                            key: a.key,
                            kube: a.kube,
                            settings: &target.settings,
                            dead_letter_topic: &d.topic,
                            target_topic: &target_topic,
                            request_id: &r.request_id,
                            rate: spec_redrive.and_then(|s| s.max_messages_per_second),
                            cancel: r.cancel,
                        },
                    );
                }
                None => {
                    refusal = Some(CondUpdate::new(
                        REDRIVE,
                        false,
                        "TargetTopicRequired",
                        format!(
                            "redrive request {} not carried out: with several topics the \
                             target needs spec.source.kafka.deadLetter.redrive.targetTopic",
                            vocab::quote(&r.request_id)
                        ),
                    ));
                }
            }
        }
        let refused = refusal.is_some()
            || requested.invalid.is_some()
            || (requested.triggered() && dead_letter.is_none());
        let c = match refusal.filter(|_| requested.invalid.is_none()) {
            Some(c) => Some(c),
            None => vocab::tick_condition(
                &requested,
                dead_letter.is_some(),
                "spec.source.kafka.deadLetter",
                recorded.map(|r| &r.progress),
                previous,
            ),
        };
        if let Some(c) = &c
            && refused
            && vocab::is_new_problem(previous, c)
        {
            a.kube
                .event(
                    a.sc,
                    true,
                    &c.reason,
                    vocab::EVENT_ACTION,
                    c.message.clone(),
                )
                .await;
        }
        c
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}
