//! Spec validation in code: the same constraints as the CRD schema and its CEL rules, for
//! clusters or clients that bypass them. Produces the settings the controller runs on.
//!
//! [`validate`] reports every problem it finds, not just the first, and each problem names
//! its field in the path form users see in `kubectl explain` (`spec.behavior.pollInterval`).
//! Messages quote the offending value where that helps, except for URLs: a management URL
//! is never echoed, because a refused one may carry credentials.

use std::time::Duration;

use crate::core::duration::parse_duration;
use crate::core::error::SpecError;
use crate::core::policy::{Fallback, PolicyConfig};
use crate::core::text::quote;
use crate::spec::api::{
    BehaviorSpec, FallbackMode, FallbackSpec, PrefetchMode, RabbitMqSource, ScaleTargetRef,
    ScaledConsumerSpec, ScalingRules, SecretKeysRef, SqsDeadLetter, SqsSource,
};

/// A spec that passed validation, with defaults applied and durations parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub target: ScaleTargetRef,
    pub policy: PolicyConfig,
    pub source: ValidSource,
}

/// The one configured source.
#[derive(Clone, Debug, PartialEq)]
pub enum ValidSource {
    RabbitMq {
        access: RabbitMqAccess,
        vhost: String,
        queue: String,
        include_unacked: bool,
        credentials: SecretKeysRef,
        prefetch: Option<ValidPrefetch>,
        dead_letter: Option<ValidDeadLetter>,
    },
    Sqs(ValidSqs),
    Kafka(ValidKafka),
}

/// How a RabbitMQ source is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RabbitMqAccess {
    /// The management HTTP API at this base URL: depth, unacknowledged count and rates.
    Management(String),
    /// AMQP alone at this URL (`amqp://` or `amqps://`): ready and consumer counts only.
    Amqp(String),
}

impl RabbitMqAccess {
    /// True for the management API, which prefetch, dead-lettering and redrive need.
    pub fn is_management(&self) -> bool {
        matches!(self, RabbitMqAccess::Management(_))
    }
}

/// A checked Kafka source.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidKafka {
    pub bootstrap: Vec<String>,
    pub topics: Vec<String>,
    pub group: String,
    pub offset_reset: OffsetReset,
    pub cap: CapMode,
    pub tls: Option<crate::spec::api::KafkaTls>,
    pub sasl: Option<crate::spec::api::KafkaSasl>,
    pub growth: Option<GrowthConfig>,
    pub dead_letter: Option<ValidKafkaDeadLetter>,
}

/// A checked Kafka dead-letter section.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidKafkaDeadLetter {
    pub topic: String,
    pub redrive: Option<ValidKafkaRedrive>,
}

/// A checked redrive request.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidKafkaRedrive {
    pub request_id: String,
    pub target_topic: String,
    pub max_messages_per_second: Option<u32>,
    pub cancel: bool,
}

/// Default `partitionGrowth.cooldown`.
pub const DEFAULT_GROWTH_COOLDOWN: Duration = Duration::from_secs(1800);

/// A checked SQS source.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSqs {
    pub queue_url: String,
    pub region: String,
    pub endpoint: Option<String>,
    /// Access key id as `username_key`, secret access key as `password_key`. `None`: the
    /// default AWS credential chain.
    pub credentials: Option<SecretKeysRef>,
    pub include_in_flight: bool,
    pub include_delayed: bool,
    pub dead_letter: Option<SqsDeadLetter>,
}

/// Default `behavior.pollInterval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default `behavior.scaleUp.stabilizationWindow`.
pub const DEFAULT_SCALE_UP_WINDOW: Duration = Duration::ZERO;
/// Default `behavior.scaleDown.stabilizationWindow`.
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// Default `behavior.scaleDown.stabilizationWindow` with `objective.maxMessageWait`: the
/// wait objective smooths its inputs and uses the queue as a buffer, so a shorter window
/// suffices.
pub const DEFAULT_SCALE_DOWN_WINDOW_WITH_WAIT: Duration = Duration::from_secs(60);
/// Default `behavior.scaleToZeroCooldown`.
pub const DEFAULT_SCALE_TO_ZERO_COOLDOWN: Duration = Duration::from_secs(300);
/// Default `behavior.startupDelay`.
pub const DEFAULT_STARTUP_DELAY: Duration = Duration::from_secs(20);
/// Default `fallback.afterFailures`.
pub const DEFAULT_AFTER_FAILURES: u32 = 3;

/// Validated `spec.source.rabbitmq.prefetch` (mode `Recommend` or `Apply`).
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPrefetch {
    pub apply: bool,
    pub min: u16,
    pub max: u16,
    pub deliver_to: Option<Delivery>,
    pub min_change_percent: u32,
    pub min_interval: Duration,
}

/// Where an applied prefetch goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Env { container: String, name: String },
    ConfigMap { name: String, key: String },
}

/// Validated `spec.source.rabbitmq.deadLetter`, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidDeadLetter {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
    pub max_deliveries: Option<u32>,
    /// `redrive.requestId`.
    pub redrive_request: Option<String>,
    /// `redrive.cancel`.
    pub redrive_cancel: bool,
    pub max_in_flight: u16,
    /// `redrive.maxMessagesPerSecond`.
    pub max_per_second: Option<u32>,
}

/// What a consumer does on a partition without a committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum OffsetReset {
    #[default]
    Latest,
    Earliest,
}

/// Most replicas that can do work, by partition assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapMode {
    /// One consumer per partition at most (default).
    Partitions,
    /// One per partition that has lag (`limitToPartitionsWithLag`).
    LaggingPartitions,
    /// No cap (`allowIdleConsumers`).
    None,
}

/// `partitionGrowth` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthConfig {
    /// Increase partitions (true) or only recommend (false).
    pub auto_increase: bool,
    pub max_partitions: i32,
    pub cooldown: Duration,
}

const ONE_SECOND: Duration = Duration::from_secs(1);
const ONE_HOUR: Duration = Duration::from_secs(3600);

/// Brokers nerite can read, for messages.
const SUPPORTED_SOURCES: &str = "rabbitmq, sqs, kafka";

/// Validate a spec and apply defaults. Collects every problem before failing.
pub fn validate(spec: &ScaledConsumerSpec) -> Result<ValidSpec, SpecError> {
    let mut p = Problems::default();

    check_target(&spec.scale_target_ref, &mut p);

    // Replica bounds.
    if spec.min_replicas < 0 {
        p.add(format!(
            "spec.minReplicas ({}) must be at least 0",
            spec.min_replicas
        ));
    }
    if spec.max_replicas < 1 {
        p.add(format!(
            "spec.maxReplicas ({}) must be at least 1",
            spec.max_replicas
        ));
    }
    if spec.min_replicas > spec.max_replicas {
        p.add(format!(
            "spec.minReplicas ({}) must not exceed spec.maxReplicas ({})",
            spec.min_replicas, spec.max_replicas
        ));
    }

    // Source.
    let source = check_source(spec, &mut p);

    // Objective.
    if spec.objective.backlog_per_replica < 1 {
        p.add(format!(
            "spec.objective.backlogPerReplica ({}) must be at least 1",
            spec.objective.backlog_per_replica
        ));
    }
    let max_drain_time = spec.objective.max_drain_time.as_deref().and_then(|s| {
        p.duration(
            "spec.objective.maxDrainTime",
            s,
            Some(ONE_SECOND),
            None,
            "at least 1s",
        )
    });

    let max_message_wait = spec.objective.max_message_wait.as_deref().and_then(|s| {
        p.duration(
            "spec.objective.maxMessageWait",
            s,
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(24 * 3600)),
            "between 10s and 24h",
        )
    });

    // Behavior.
    let default_behavior = BehaviorSpec::default();
    let b = spec.behavior.as_ref().unwrap_or(&default_behavior);
    let poll_interval = b
        .poll_interval
        .as_deref()
        .and_then(|s| {
            p.duration(
                "spec.behavior.pollInterval",
                s,
                Some(ONE_SECOND),
                Some(ONE_HOUR),
                "between 1s and 1h",
            )
        })
        .unwrap_or(DEFAULT_POLL_INTERVAL);
    let (scale_up_window, scale_up_max_step) = check_rules(
        "spec.behavior.scaleUp",
        b.scale_up.as_ref(),
        DEFAULT_SCALE_UP_WINDOW,
        &mut p,
    );
    let (scale_down_window, scale_down_max_step) = check_rules(
        "spec.behavior.scaleDown",
        b.scale_down.as_ref(),
        if spec.objective.max_message_wait.is_some() {
            DEFAULT_SCALE_DOWN_WINDOW_WITH_WAIT
        } else {
            DEFAULT_SCALE_DOWN_WINDOW
        },
        &mut p,
    );
    let activation_backlog = b.activation_backlog.unwrap_or(0);
    if activation_backlog < 0 {
        p.add(format!(
            "spec.behavior.activationBacklog ({activation_backlog}) must be at least 0"
        ));
    }
    let scale_to_zero_cooldown = b
        .scale_to_zero_cooldown
        .as_deref()
        .and_then(|s| p.duration("spec.behavior.scaleToZeroCooldown", s, None, None, ""))
        .unwrap_or(DEFAULT_SCALE_TO_ZERO_COOLDOWN);

    let startup_delay = b
        .startup_delay
        .as_deref()
        .and_then(|s| {
            p.duration(
                "spec.behavior.startupDelay",
                s,
                None,
                Some(ONE_HOUR),
                "at most 1h",
            )
        })
        .unwrap_or(DEFAULT_STARTUP_DELAY);

    // Fallback.
    let fallback = check_fallback(spec.fallback.as_ref(), spec, &mut p);

    if !p.0.is_empty() {
        return Err(SpecError { problems: p.0 });
    }
    let (Some(source), Some(fallback)) = (source, fallback) else {
        // Unreachable in practice: a missing piece always comes with a problem.
        return Err(SpecError {
            problems: vec!["spec is incomplete".to_string()],
        });
    };
    Ok(ValidSpec {
        target: spec.scale_target_ref.clone(),
        policy: PolicyConfig {
            min_replicas: spec.min_replicas,
            max_replicas: spec.max_replicas,
            paused: spec.paused,
            backlog_per_replica: spec.objective.backlog_per_replica,
            max_drain_time,
            poll_interval,
            scale_up_window,
            scale_down_window,
            scale_up_max_step,
            scale_down_max_step,
            activation_backlog,
            scale_to_zero_cooldown,
            fallback,
            max_message_wait,
            startup_delay,
        },
        source,
    })
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, problem: String) {
        self.0.push(problem);
    }

    /// Parse a duration field and check its range; records a problem and returns None when
    /// it is malformed or out of range.
    fn duration(
        &mut self,
        field: &str,
        value: &str,
        min: Option<Duration>,
        max: Option<Duration>,
        range: &str,
    ) -> Option<Duration> {
        match parse_duration(value) {
            Err(why) => {
                self.add(format!(
                    "{field} ({}) is not a valid duration: {why}",
                    quote(value)
                ));
                None
            }
            Ok(d) if min.is_some_and(|m| d < m) || max.is_some_and(|m| d > m) => {
                self.add(format!("{field} ({}) must be {range}", quote(value)));
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// A redrive request id: the rule every broker and the annotations share.
    fn request_id(&mut self, field: &str, id: &str) {
        if let Some(problem) = crate::spec::redrive::request_id_problem(id) {
            self.add(format!("{field} ({}) {problem}", quote(id)));
        }
    }

    fn non_empty(&mut self, field: &str, value: &str, max_len: Option<usize>) {
        if value.is_empty() {
            self.add(format!("{field} must not be empty"));
        } else if let Some(max) = max_len
            && value.len() > max
        {
            self.add(format!(
                "{field} is {} characters long; at most {max} are allowed",
                value.len()
            ));
        }
    }
}

fn check_target(t: &ScaleTargetRef, p: &mut Problems) {
    p.non_empty("spec.scaleTargetRef.apiVersion", &t.api_version, None);
    p.non_empty("spec.scaleTargetRef.kind", &t.kind, None);
    p.non_empty("spec.scaleTargetRef.name", &t.name, Some(253));
}

fn check_source(spec: &ScaledConsumerSpec, p: &mut Problems) -> Option<ValidSource> {
    if !spec.source.unsupported.is_empty() {
        let names: Vec<&str> = spec.source.unsupported.keys().map(String::as_str).collect();
        let set = usize::from(spec.source.rabbitmq.is_some())
            + usize::from(spec.source.sqs.is_some())
            + usize::from(spec.source.kafka.is_some())
            + names.len();
        p.add(format!(
            "spec.source: {} not supported by this version of nerite (supported: {SUPPORTED_SOURCES}){}",
            names.join(", "),
            if set > 1 {
                format!("; exactly one source must be set, found {set}")
            } else {
                String::new()
            }
        ));
        return None;
    }
    let set = usize::from(spec.source.rabbitmq.is_some())
        + usize::from(spec.source.sqs.is_some())
        + usize::from(spec.source.kafka.is_some());
    if set > 1 {
        p.add(format!(
            "spec.source: exactly one source must be set, found {set} (supported: {SUPPORTED_SOURCES})"
        ));
        return None;
    }
    if let Some(k) = spec.source.kafka.as_ref() {
        return check_kafka(k, p).map(ValidSource::Kafka);
    }
    if let Some(q) = spec.source.sqs.as_ref() {
        check_sqs(q, p);
        return Some(ValidSource::Sqs(ValidSqs {
            queue_url: q.queue_url.trim().to_string(),
            region: q.region.clone(),
            endpoint: q.endpoint.clone(),
            credentials: q.credentials_secret_ref.as_ref().map(|c| SecretKeysRef {
                name: c.name.clone(),
                username_key: c.access_key_id_key.clone(),
                password_key: c.secret_access_key_key.clone(),
            }),
            include_in_flight: q.include_in_flight,
            include_delayed: q.include_delayed,
            dead_letter: q.dead_letter.clone(),
        }));
    }
    let Some(r) = spec.source.rabbitmq.as_ref() else {
        p.add(format!(
            "spec.source: exactly one source must be set (supported: {SUPPORTED_SOURCES})"
        ));
        return None;
    };
    check_rabbitmq(r, p);
    let prefetch = check_prefetch(r, p);
    let dead_letter = check_dead_letter(r, p);
    let access = match (&r.management_url, &r.amqp_url) {
        (Some(url), None) => RabbitMqAccess::Management(url.clone()),
        (None, Some(url)) => RabbitMqAccess::Amqp(url.trim().to_string()),
        // Reported by check_rabbitmq.
        _ => return None,
    };
    Some(ValidSource::RabbitMq {
        access,
        vhost: r.vhost.clone(),
        queue: r.queue.clone(),
        include_unacked: r.include_unacked,
        credentials: r.credentials_secret_ref.clone(),
        prefetch,
        dead_letter,
    })
}

/// Kafka topic names: 1–249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn kafka_topic_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `host:port` with a port in 1–65535.
fn host_port_ok(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains('/')
                && !host.contains('@')
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// `spec.source.kafka`.
fn check_kafka(k: &crate::spec::api::KafkaSource, p: &mut Problems) -> Option<ValidKafka> {
    use {CapMode, GrowthConfig, OffsetReset};
    const F: &str = "spec.source.kafka";
    if k.bootstrap_servers.is_empty() {
        p.add(format!(
            "{F}.bootstrapServers must list at least one host:port"
        ));
    }
    for b in &k.bootstrap_servers {
        if !host_port_ok(b) {
            p.add(format!(
                "{F}.bootstrapServers: {b:?} is not host:port (no scheme, no credentials)"
            ));
        }
    }
    let topics = match (&k.topic, &k.topics) {
        (Some(_), Some(_)) | (None, None) => {
            p.add(format!("{F}: exactly one of topic and topics must be set"));
            Vec::new()
        }
        (Some(t), None) => vec![t.clone()],
        (None, Some(ts)) => {
            if ts.is_empty() {
                p.add(format!("{F}.topics must not be empty"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for t in ts {
                if !seen.insert(t) {
                    p.add(format!("{F}.topics lists {t:?} twice"));
                }
            }
            ts.clone()
        }
    };
    for t in &topics {
        if !kafka_topic_ok(t) {
            p.add(format!(
                "{F}: topic {t:?} is not a valid Kafka topic name (1–249 of letters, digits, '.', '_', '-')"
            ));
        }
    }
    p.non_empty(&format!("{F}.consumerGroup"), &k.consumer_group, Some(255));
    if k.allow_idle_consumers && k.limit_to_partitions_with_lag {
        p.add(format!(
            "{F}: allowIdleConsumers and limitToPartitionsWithLag exclude each other"
        ));
    }
    let cap = if k.allow_idle_consumers {
        CapMode::None
    } else if k.limit_to_partitions_with_lag {
        CapMode::LaggingPartitions
    } else {
        CapMode::Partitions
    };
    if let Some(t) = &k.tls {
        if let Some(ca) = &t.ca_secret_ref {
            p.non_empty(&format!("{F}.tls.caSecretRef.name"), &ca.name, Some(253));
            p.non_empty(&format!("{F}.tls.caSecretRef.key"), &ca.key, Some(253));
        }
        if let Some(c) = &t.client_cert_secret_ref {
            p.non_empty(
                &format!("{F}.tls.clientCertSecretRef.name"),
                &c.name,
                Some(253),
            );
        }
    }
    if let Some(s) = &k.sasl {
        p.non_empty(
            &format!("{F}.sasl.credentialsSecretRef.name"),
            &s.credentials_secret_ref.name,
            Some(253),
        );
    }
    let growth = k.partition_growth.as_ref().map(|g| {
        if !(1..=10_000).contains(&g.max_partitions) {
            p.add(format!(
                "{F}.partitionGrowth.maxPartitions ({}) must be between 1 and 10000",
                g.max_partitions
            ));
        }
        let cooldown = g
            .cooldown
            .as_deref()
            .and_then(|s| {
                p.duration(
                    &format!("{F}.partitionGrowth.cooldown"),
                    s,
                    Some(Duration::from_secs(60)),
                    None,
                    "at least 1m",
                )
            })
            .unwrap_or(DEFAULT_GROWTH_COOLDOWN);
        GrowthConfig {
            auto_increase: g.auto_increase,
            max_partitions: g.max_partitions,
            cooldown,
        }
    });
    let dead_letter = k.dead_letter.as_ref().map(|d| {
        if !kafka_topic_ok(&d.topic) {
            p.add(format!(
                "{F}.deadLetter.topic {:?} is not a valid Kafka topic name",
                d.topic
            ));
        }
        if topics.contains(&d.topic) {
            p.add(format!(
                "{F}.deadLetter.topic {:?} must not be a source topic",
                d.topic
            ));
        }
        let redrive = d.redrive.as_ref().and_then(|r| {
            p.request_id(&format!("{F}.deadLetter.redrive.requestId"), &r.request_id);
            let target = match (&r.target_topic, topics.as_slice()) {
                (Some(t), _) => Some(t.clone()),
                (None, [one]) => Some(one.clone()),
                (None, _) => {
                    p.add(format!(
                        "{F}.deadLetter.redrive.targetTopic is required with several topics"
                    ));
                    None
                }
            };
            if let Some(t) = &target {
                if !kafka_topic_ok(t) {
                    p.add(format!(
                        "{F}.deadLetter.redrive.targetTopic {t:?} is not a valid Kafka topic name"
                    ));
                }
                if *t == d.topic {
                    p.add(format!(
                        "{F}.deadLetter.redrive.targetTopic must differ from the dead-letter topic"
                    ));
                }
            }
            let rate = match r.max_messages_per_second {
                None => None,
                Some(n) if (1..=1_000_000).contains(&n) => Some(n.unsigned_abs()),
                Some(n) => {
                    p.add(format!(
                        "{F}.deadLetter.redrive.maxMessagesPerSecond ({n}) must be between 1 and 1000000"
                    ));
                    None
                }
            };
            target.map(|target_topic| ValidKafkaRedrive {
                request_id: r.request_id.clone(),
                target_topic,
                max_messages_per_second: rate,
                cancel: r.cancel,
            })
        });
        ValidKafkaDeadLetter {
            topic: d.topic.clone(),
            redrive,
        }
    });
    Some(ValidKafka {
        bootstrap: k.bootstrap_servers.clone(),
        topics,
        group: k.consumer_group.clone(),
        offset_reset: match k.offset_reset_policy {
            crate::spec::api::KafkaOffsetReset::Latest => OffsetReset::Latest,
            crate::spec::api::KafkaOffsetReset::Earliest => OffsetReset::Earliest,
        },
        cap,
        tls: k.tls.clone(),
        sasl: k.sasl.clone(),
        growth,
        dead_letter,
    })
}

/// `spec.source.rabbitmq.prefetch`: bounds, delivery target (required by `Apply`), hysteresis.
fn check_prefetch(r: &RabbitMqSource, p: &mut Problems) -> Option<ValidPrefetch> {
    const F: &str = "spec.source.rabbitmq.prefetch";
    let spec = r.prefetch.as_ref()?;
    if spec.mode == PrefetchMode::Off {
        return None;
    }
    let bound = |p: &mut Problems, name: &str, v: Option<i32>, default: u16| match v {
        None => default,
        Some(n) => match u16::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                p.add(format!("{F}.{name} ({n}) must be between 1 and 65535"));
                default
            }
        },
    };
    let min = bound(p, "min", spec.min, 1);
    let max = bound(p, "max", spec.max, 1000);
    if min > max {
        p.add(format!("{F}.min ({min}) must not exceed {F}.max ({max})"));
    }
    let min_change_percent = match spec.min_change_percent {
        None => 25,
        Some(n) if (0..=1000).contains(&n) => n.unsigned_abs(),
        Some(n) => {
            p.add(format!(
                "{F}.minChangePercent ({n}) must be between 0 and 1000"
            ));
            25
        }
    };
    let min_interval = spec
        .min_interval
        .as_deref()
        .and_then(|s| {
            p.duration(
                &format!("{F}.minInterval"),
                s,
                Some(ONE_SECOND),
                None,
                "at least 1s",
            )
        })
        .unwrap_or(Duration::from_secs(600));
    let deliver_to = match &spec.deliver_to {
        None => None,
        Some(d) => match (&d.env, &d.config_map) {
            (Some(e), None) => {
                p.non_empty(
                    &format!("{F}.deliverTo.env.container"),
                    &e.container,
                    Some(63),
                );
                p.non_empty(&format!("{F}.deliverTo.env.name"), &e.name, Some(253));
                Some(Delivery::Env {
                    container: e.container.clone(),
                    name: e.name.clone(),
                })
            }
            (None, Some(c)) => {
                p.non_empty(&format!("{F}.deliverTo.configMap.name"), &c.name, Some(253));
                p.non_empty(&format!("{F}.deliverTo.configMap.key"), &c.key, Some(253));
                Some(Delivery::ConfigMap {
                    name: c.name.clone(),
                    key: c.key.clone(),
                })
            }
            _ => {
                p.add(format!(
                    "{F}.deliverTo: exactly one of env and configMap must be set"
                ));
                None
            }
        },
    };
    if spec.mode == PrefetchMode::Apply && spec.deliver_to.is_none() {
        p.add(format!("{F}.deliverTo is required when {F}.mode is Apply"));
    }
    Some(ValidPrefetch {
        apply: spec.mode == PrefetchMode::Apply,
        min,
        max: max.max(min),
        deliver_to,
        min_change_percent,
        min_interval,
    })
}

/// `spec.source.rabbitmq.deadLetter`: names (defaults from the queue), the delivery limit and
/// the redrive request.
fn check_dead_letter(r: &RabbitMqSource, p: &mut Problems) -> Option<ValidDeadLetter> {
    const F: &str = "spec.source.rabbitmq.deadLetter";
    let spec = r.dead_letter.as_ref()?;
    let queue = spec
        .queue
        .clone()
        .unwrap_or_else(|| format!("{}.dlq", r.queue));
    let exchange = spec
        .exchange
        .clone()
        .unwrap_or_else(|| format!("{}.dlx", r.queue));
    let routing_key = spec.routing_key.clone().unwrap_or_else(|| queue.clone());
    p.non_empty(&format!("{F}.queue"), &queue, Some(255));
    p.non_empty(&format!("{F}.exchange"), &exchange, Some(255));
    p.non_empty(&format!("{F}.routingKey"), &routing_key, Some(255));
    if queue == r.queue {
        p.add(format!(
            "{F}.queue ({}) must differ from spec.source.rabbitmq.queue",
            quote(&queue)
        ));
    }
    if exchange.is_empty() || exchange.starts_with("amq.") {
        p.add(format!(
            "{F}.exchange ({}) must not be the default exchange or an amq.* exchange",
            quote(&exchange)
        ));
    }
    let max_deliveries = match spec.max_deliveries {
        None => None,
        Some(n) if n >= 1 => Some(n.unsigned_abs()),
        Some(n) => {
            p.add(format!("{F}.maxDeliveries ({n}) must be at least 1"));
            None
        }
    };
    let mut max_in_flight = 1000u16;
    let mut max_per_second = None;
    let redrive_request = spec.redrive.as_ref().map(|rd| {
        let id = &rd.request_id;
        p.request_id(&format!("{F}.redrive.requestId"), id);
        if let Some(n) = rd.max_in_flight {
            match u16::try_from(n) {
                Ok(n) if n >= 1 => max_in_flight = n,
                _ => p.add(format!(
                    "{F}.redrive.maxInFlight ({n}) must be between 1 and 65535"
                )),
            }
        }
        if let Some(n) = rd.max_messages_per_second {
            match u32::try_from(n) {
                Ok(n) if (1..=100_000).contains(&n) => max_per_second = Some(n),
                _ => p.add(format!(
                    "{F}.redrive.maxMessagesPerSecond ({n}) must be between 1 and 100000"
                )),
            }
        }
        id.clone()
    });
    Some(ValidDeadLetter {
        queue,
        exchange,
        routing_key,
        max_deliveries,
        redrive_request,
        redrive_cancel: spec.redrive.as_ref().is_some_and(|rd| rd.cancel),
        max_in_flight,
        max_per_second,
    })
}

fn check_rabbitmq(r: &RabbitMqSource, p: &mut Problems) {
    const F: &str = "spec.source.rabbitmq";
    match (&r.management_url, &r.amqp_url) {
        (Some(_), Some(_)) => p.add(format!(
            "{F}: set exactly one of managementUrl and amqpUrl, not both (managementUrl reads \
             the management HTTP API; amqpUrl reads through AMQP alone)"
        )),
        (None, None) => p.add(format!(
            "{F}: set exactly one of managementUrl (the management HTTP API) and amqpUrl \
             (AMQP alone, for brokers without the management plugin)"
        )),
        _ => {}
    }
    if let Some(url) = &r.management_url
        && let Some(problem) = management_url_problem(url)
    {
        p.add(format!("{F}.managementUrl {problem}"));
    }
    if let Some(url) = &r.amqp_url {
        if let Some(problem) = amqp_url_problem(url) {
            p.add(format!("{F}.amqpUrl {problem}"));
        }
        // What AMQP cannot see: the same rules as the CRD's.
        if r.prefetch.is_some() {
            p.add(format!(
                "{F}.prefetch needs managementUrl: through amqpUrl nerite sees no \
                 unacknowledged messages and no ack rate, which prefetch tuning measures; \
                 remove prefetch or read the queue through managementUrl"
            ));
        }
        if r.dead_letter.is_some() {
            p.add(format!(
                "{F}.deadLetter needs managementUrl: dead-letter policies, the dead-letter \
                 queue's depth and redrive go through the management API; remove deadLetter \
                 or read the queue through managementUrl"
            ));
        }
    }
    p.non_empty("spec.source.rabbitmq.vhost", &r.vhost, None);
    p.non_empty("spec.source.rabbitmq.queue", &r.queue, Some(255));
    let s = &r.credentials_secret_ref;
    p.non_empty(
        "spec.source.rabbitmq.credentialsSecretRef.name",
        &s.name,
        Some(253),
    );
    p.non_empty(
        "spec.source.rabbitmq.credentialsSecretRef.usernameKey",
        &s.username_key,
        None,
    );
    p.non_empty(
        "spec.source.rabbitmq.credentialsSecretRef.passwordKey",
        &s.password_key,
        None,
    );
}

fn check_sqs(q: &SqsSource, p: &mut Problems) {
    use crate::spec::names as model;
    const F: &str = "spec.source.sqs";
    let region_ok = model::is_region(&q.region);
    if !region_ok {
        p.add(format!(
            "{F}.region ({}) is not an AWS region name (e.g. eu-west-1)",
            quote(&q.region)
        ));
    }
    match model::QueueUrl::parse(&q.queue_url) {
        Err(why) => p.add(format!("{F}.queueUrl {why}")),
        Ok(url) => {
            if let Some(url_region) = url.region.as_deref()
                && region_ok
                && url_region != q.region
            {
                p.add(format!(
                    "{F}.region ({}) does not match the queue URL's region ({url_region:?})",
                    quote(&q.region)
                ));
            }
        }
    }
    if let Some(endpoint) = &q.endpoint
        && let Some(problem) = management_url_problem(endpoint)
    {
        p.add(format!("{F}.endpoint {problem}"));
    }
    if let Some(c) = &q.credentials_secret_ref {
        p.non_empty(
            &format!("{F}.credentialsSecretRef.name"),
            &c.name,
            Some(253),
        );
        p.non_empty(
            &format!("{F}.credentialsSecretRef.accessKeyIdKey"),
            &c.access_key_id_key,
            None,
        );
        p.non_empty(
            &format!("{F}.credentialsSecretRef.secretAccessKeyKey"),
            &c.secret_access_key_key,
            None,
        );
    }
    let Some(dl) = &q.dead_letter else {
        return;
    };
    if dl.queue.starts_with("arn:") {
        match model::QueueArn::parse(&dl.queue) {
            Err(why) => p.add(format!(
                "{F}.deadLetter.queue ({}) is not a valid SQS ARN: {why}",
                quote(&dl.queue)
            )),
            Ok(arn) if region_ok && arn.region != q.region => p.add(format!(
                "{F}.deadLetter.queue is in region {:?}; a dead-letter queue must be in the \
                 source's region ({})",
                arn.region,
                quote(&q.region)
            )),
            Ok(_) => {}
        }
    } else if !model::is_queue_name(&dl.queue) {
        p.add(format!(
            "{F}.deadLetter.queue ({}) is neither a queue name (letters, digits, - and _, at \
             most 80 characters, FIFO names end in .fifo) nor an SQS ARN",
            quote(&dl.queue)
        ));
    }
    if !(1..=1000).contains(&dl.max_receive_count) {
        p.add(format!(
            "{F}.deadLetter.maxReceiveCount ({}) must be between 1 and 1000",
            dl.max_receive_count
        ));
    }
    if let Some(r) = &dl.redrive {
        p.request_id(&format!("{F}.deadLetter.redrive.requestId"), &r.request_id);
        if let Some(rate) = r.max_messages_per_second
            && !(1..=500).contains(&rate)
        {
            p.add(format!(
                "{F}.deadLetter.redrive.maxMessagesPerSecond ({rate}) must be between 1 and 500"
            ));
        }
    }
}

/// What is wrong with a management URL, phrased to follow the field name. Never includes
/// the URL itself.
fn management_url_problem(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return Some("must not be empty".to_string());
    }
    // The CRD's CEL rule is a case-sensitive prefix check; mirror it exactly.
    if !(raw.starts_with("http://") || raw.starts_with("https://")) {
        return Some("must be an http:// or https:// URL".to_string());
    }
    let url = match reqwest::Url::parse(raw) {
        Ok(url) => url,
        // url's errors describe the problem without quoting the input.
        Err(e) => return Some(format!("is not a valid URL: {e}")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Some(
            "must not contain credentials (user info before the host): use credentialsSecretRef"
                .to_string(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some("must name a host".to_string());
    }
    None
}

/// What is wrong with an AMQP URL, phrased to follow the field name. Never includes the URL
/// itself.
fn amqp_url_problem(raw: &str) -> Option<String> {
    if raw.is_empty() {
        return Some("must not be empty".to_string());
    }
    // The CRD's CEL rule is a case-sensitive prefix check; mirror it exactly.
    if !(raw.starts_with("amqp://") || raw.starts_with("amqps://")) {
        return Some("must be an amqp:// or amqps:// URL".to_string());
    }
    match crate::spec::names::AmqpEndpoint::parse(raw) {
        Ok(_) => None,
        Err(crate::core::error::SourceError::InvalidConfig(why)) => Some(
            why.strip_prefix("the AMQP URL ")
                .map(str::to_owned)
                .unwrap_or(why),
        ),
        Err(e) => Some(e.to_string()),
    }
}

fn check_rules(
    path: &str,
    rules: Option<&ScalingRules>,
    default_window: Duration,
    p: &mut Problems,
) -> (Duration, Option<i32>) {
    let Some(rules) = rules else {
        return (default_window, None);
    };
    let window = rules
        .stabilization_window
        .as_deref()
        .and_then(|s| {
            p.duration(
                &format!("{path}.stabilizationWindow"),
                s,
                None,
                Some(ONE_HOUR),
                "at most 1h",
            )
        })
        .unwrap_or(default_window);
    if let Some(step) = rules.max_step
        && step < 1
    {
        p.add(format!("{path}.maxStep ({step}) must be at least 1"));
    }
    (window, rules.max_step)
}

fn check_fallback(
    f: Option<&FallbackSpec>,
    spec: &ScaledConsumerSpec,
    p: &mut Problems,
) -> Option<Fallback> {
    let Some(f) = f else {
        return Some(Fallback::Hold);
    };
    if let Some(r) = f.replicas {
        if r < 0 {
            p.add(format!("spec.fallback.replicas ({r}) must be at least 0"));
        } else if r < spec.min_replicas || r > spec.max_replicas {
            p.add(format!(
                "spec.fallback.replicas ({r}) must lie within [spec.minReplicas, spec.maxReplicas] ([{}, {}])",
                spec.min_replicas, spec.max_replicas
            ));
        }
    }
    let after_failures = match f.after_failures {
        None => DEFAULT_AFTER_FAILURES,
        Some(n) => match u32::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                p.add(format!(
                    "spec.fallback.afterFailures ({n}) must be at least 1"
                ));
                DEFAULT_AFTER_FAILURES
            }
        },
    };
    match f.mode {
        FallbackMode::Hold => Some(Fallback::Hold),
        FallbackMode::Fixed => match f.replicas {
            Some(replicas) => Some(Fallback::Fixed {
                replicas,
                after_failures,
            }),
            None => {
                p.add(
                    "spec.fallback.replicas is required when spec.fallback.mode is Fixed"
                        .to_string(),
                );
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn base() -> Value {
        json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
            "minReplicas": 1,
            "maxReplicas": 10,
            "source": {"rabbitmq": {
                "managementUrl": "http://rabbitmq.default.svc:15672",
                "queue": "orders",
                "credentialsSecretRef": {"name": "rabbit-creds"}
            }},
            "objective": {"backlogPerReplica": 100}
        })
    }

    fn spec(v: Value) -> ScaledConsumerSpec {
        serde_json::from_value(v).expect("test spec deserializes")
    }

    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
        let mut cur = &mut v;
        for part in parent.split('/').skip(1) {
            if cur.get(part).is_none() {
                cur[part] = json!({});
            }
            cur = &mut cur[part];
        }
        cur[key] = value;
        v
    }

    fn problems(v: Value) -> Vec<String> {
        validate(&spec(v))
            .expect_err("spec must be refused")
            .problems
    }

    fn one_problem(v: Value) -> String {
        let p = problems(v);
        assert_eq!(p.len(), 1, "expected exactly one problem, got {p:?}");
        p.into_iter().next().expect("one problem")
    }

    #[test]
    fn defaults_applied() {
        let v = validate(&spec(base())).expect("base spec is valid");
        let p = &v.policy;
        assert_eq!(p.min_replicas, 1);
        assert_eq!(p.max_replicas, 10);
        assert!(!p.paused);
        assert_eq!(p.backlog_per_replica, 100);
        assert_eq!(p.max_drain_time, None);
        assert_eq!(p.poll_interval, Duration::from_secs(5));
        assert_eq!(p.scale_up_window, Duration::ZERO);
        assert_eq!(p.scale_down_window, Duration::from_secs(300));
        assert_eq!(p.scale_up_max_step, None);
        assert_eq!(p.scale_down_max_step, None);
        assert_eq!(p.activation_backlog, 0);
        assert_eq!(p.scale_to_zero_cooldown, Duration::from_secs(300));
        assert_eq!(p.fallback, Fallback::Hold);
        assert_eq!(p.max_message_wait, None);
        assert_eq!(p.startup_delay, Duration::from_secs(20));
        assert_eq!(v.target.name, "worker");
        let ValidSource::RabbitMq {
            access,
            vhost,
            queue,
            include_unacked,
            credentials,
            ..
        } = v.source
        else {
            panic!("a RabbitMQ source")
        };
        assert_eq!(
            access,
            RabbitMqAccess::Management("http://rabbitmq.default.svc:15672".into())
        );
        assert_eq!(vhost, "/");
        assert_eq!(queue, "orders");
        assert!(include_unacked);
        assert_eq!(credentials.name, "rabbit-creds");
        assert_eq!(credentials.username_key, "username");
        assert_eq!(credentials.password_key, "password");
    }

    #[test]
    fn message_wait_objective_and_startup_delay() {
        let v = with(base(), "/objective/maxMessageWait", json!("90s"));
        let v = with(v, "/behavior", json!({"startupDelay": "45s"}));
        let p = validate(&spec(v)).expect("valid").policy;
        assert_eq!(p.max_message_wait, Some(Duration::from_secs(90)));
        assert_eq!(p.startup_delay, Duration::from_secs(45));
        // A shorter default scale-down window with the wait objective; an explicit one wins.
        assert_eq!(p.scale_down_window, Duration::from_secs(60));
        let v = with(base(), "/objective/maxMessageWait", json!("90s"));
        let v = with(
            v,
            "/behavior",
            json!({"scaleDown": {"stabilizationWindow": "5m"}}),
        );
        let p = validate(&spec(v)).expect("valid").policy;
        assert_eq!(p.scale_down_window, Duration::from_secs(300));
        let v = with(base(), "/objective/maxMessageWait", json!("5s"));
        assert_eq!(
            one_problem(v),
            "spec.objective.maxMessageWait (\"5s\") must be between 10s and 24h"
        );
        let v = with(base(), "/objective/maxMessageWait", json!("soon"));
        assert!(
            one_problem(v)
                .starts_with("spec.objective.maxMessageWait (\"soon\") is not a valid duration")
        );
        let v = with(base(), "/behavior", json!({"startupDelay": "2h"}));
        assert_eq!(
            one_problem(v),
            "spec.behavior.startupDelay (\"2h\") must be at most 1h"
        );
    }

    #[test]
    fn min_replicas_defaults_to_one() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("minReplicas");
        assert_eq!(validate(&spec(v)).expect("valid").policy.min_replicas, 1);
    }

    #[test]
    fn everything_set_is_carried_over() {
        let v = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "w"},
            "minReplicas": 0,
            "maxReplicas": 50,
            "paused": true,
            "source": {"rabbitmq": {
                "managementUrl": "https://rmq.example:15671/admin",
                "vhost": "prod",
                "queue": "q",
                "includeUnacked": false,
                "credentialsSecretRef": {"name": "s", "usernameKey": "u", "passwordKey": "p"}
            }},
            "objective": {"backlogPerReplica": 20, "maxDrainTime": "1m30s"},
            "behavior": {
                "pollInterval": "1.5s",
                "scaleUp": {"stabilizationWindow": "30s", "maxStep": 4},
                "scaleDown": {"stabilizationWindow": "10m", "maxStep": 2},
                "activationBacklog": 7,
                "scaleToZeroCooldown": "0s"
            },
            "fallback": {"mode": "Fixed", "replicas": 5}
        });
        let v = validate(&spec(v)).expect("valid");
        let p = &v.policy;
        assert_eq!((p.min_replicas, p.max_replicas, p.paused), (0, 50, true));
        assert_eq!(p.max_drain_time, Some(Duration::from_secs(90)));
        assert_eq!(p.poll_interval, Duration::from_millis(1500));
        assert_eq!(p.scale_up_window, Duration::from_secs(30));
        assert_eq!(p.scale_down_window, Duration::from_secs(600));
        assert_eq!(
            (p.scale_up_max_step, p.scale_down_max_step),
            (Some(4), Some(2))
        );
        assert_eq!(p.activation_backlog, 7);
        assert_eq!(p.scale_to_zero_cooldown, Duration::ZERO);
        assert_eq!(
            p.fallback,
            Fallback::Fixed {
                replicas: 5,
                after_failures: 3
            }
        );
        let ValidSource::RabbitMq {
            include_unacked,
            vhost,
            ..
        } = v.source
        else {
            panic!("a RabbitMQ source")
        };
        assert!(!include_unacked);
        assert_eq!(vhost, "prod");
    }

    #[test]
    fn min_above_max() {
        let v = with(base(), "/minReplicas", json!(5));
        let v = with(v, "/maxReplicas", json!(3));
        assert_eq!(
            one_problem(v),
            "spec.minReplicas (5) must not exceed spec.maxReplicas (3)"
        );
    }

    #[test]
    fn negative_min_and_zero_max() {
        let v = with(base(), "/minReplicas", json!(-1));
        assert_eq!(one_problem(v), "spec.minReplicas (-1) must be at least 0");
        let v = with(base(), "/minReplicas", json!(0));
        let v = with(v, "/maxReplicas", json!(0));
        assert_eq!(one_problem(v), "spec.maxReplicas (0) must be at least 1");
    }

    #[test]
    fn no_source() {
        let v = with(base(), "/source", json!({}));
        let p = one_problem(v);
        assert!(p.starts_with("spec.source: exactly one source"), "{p}");
        assert!(p.contains("supported: rabbitmq"), "{p}");
    }

    #[test]
    fn two_sources_or_an_unsupported_one() {
        let mut v = base();
        v["source"]["kafka"] =
            json!({"bootstrapServers": ["k:9092"], "topic": "t", "consumerGroup": "g"});
        let p = one_problem(v);
        assert!(p.contains("exactly one source must be set, found 2"), "{p}");
        let mut v = base();
        v["source"]["pulsar"] = json!({"topic": "t"});
        let p = one_problem(v);
        assert!(p.contains("pulsar not supported"), "{p}");
        assert!(p.contains("exactly one source must be set, found 2"), "{p}");
        let v = with(base(), "/source", json!({"kinesis": {"stream": "u"}}));
        let p = one_problem(v);
        assert!(p.contains("kinesis not supported"), "{p}");
        assert!(!p.contains("found"), "{p}");
    }

    fn kafka_base() -> Value {
        with(
            base(),
            "/source",
            json!({"kafka": {"bootstrapServers": ["kafka-0.kafka:9092"], "topic": "orders", "consumerGroup": "workers"}}),
        )
    }

    #[test]
    fn kafka_source_defaults_and_caps() {
        let v = validate(&spec(kafka_base())).expect("valid");
        let ValidSource::Kafka(k) = v.source else {
            panic!("not kafka")
        };
        use {CapMode, OffsetReset};
        assert_eq!(k.topics, vec!["orders".to_string()]);
        assert_eq!(
            (k.cap, k.offset_reset),
            (CapMode::Partitions, OffsetReset::Latest)
        );
        let v = with(
            kafka_base(),
            "/source/kafka/limitToPartitionsWithLag",
            json!(true),
        );
        let ValidSource::Kafka(k) = validate(&spec(v)).expect("valid").source else {
            panic!("not kafka")
        };
        assert_eq!(k.cap, CapMode::LaggingPartitions);
    }

    #[test]
    fn kafka_bad_inputs_are_named() {
        let cases = [
            (
                "/source/kafka/bootstrapServers",
                json!(["http://k:9092"]),
                "is not host:port",
            ),
            (
                "/source/kafka/bootstrapServers",
                json!([]),
                "at least one host:port",
            ),
            (
                "/source/kafka/topic",
                json!("bad topic"),
                "not a valid Kafka topic name",
            ),
            (
                "/source/kafka/topics",
                json!(["a"]),
                "exactly one of topic and topics",
            ),
            (
                "/source/kafka/consumerGroup",
                json!(""),
                "consumerGroup must not be empty",
            ),
            ("/source/kafka/allowIdleConsumers", json!(true), ""),
            (
                "/source/kafka/partitionGrowth",
                json!({"maxPartitions": 0}),
                "maxPartitions (0)",
            ),
            (
                "/source/kafka/partitionGrowth",
                json!({"maxPartitions": 8, "cooldown": "10s"}),
                "partitionGrowth.cooldown",
            ),
            (
                "/source/kafka/deadLetter",
                json!({"topic": "orders"}),
                "must not be a source topic",
            ),
            (
                "/source/kafka/deadLetter",
                json!({"topic": "dlq", "redrive": {"requestId": "r1", "targetTopic": "dlq"}}),
                "must differ from the dead-letter topic",
            ),
        ];
        for (ptr, value, want) in cases {
            let v = with(kafka_base(), ptr, value.clone());
            let res = validate(&spec(v));
            if want.is_empty() {
                assert!(res.is_ok(), "{ptr} {value}: {res:?}");
                continue;
            }
            let p = res.expect_err("invalid").problems.join("; ");
            assert!(p.contains(want), "{ptr} {value}: {p}");
        }
        let mut v = with(
            kafka_base(),
            "/source/kafka/allowIdleConsumers",
            json!(true),
        );
        v["source"]["kafka"]["limitToPartitionsWithLag"] = json!(true);
        let p = one_problem(v);
        assert!(p.contains("exclude each other"), "{p}");
        let mut v = kafka_base();
        v["source"]["kafka"]["topic"] = Value::Null;
        v["source"]["kafka"]["topics"] = json!(["a", "b"]);
        v["source"]["kafka"]["deadLetter"] =
            json!({"topic": "dlq", "redrive": {"requestId": "r1"}});
        let p = one_problem(v);
        assert!(
            p.contains("targetTopic is required with several topics"),
            "{p}"
        );
    }

    #[test]
    fn zero_backlog_per_replica() {
        let v = with(base(), "/objective/backlogPerReplica", json!(0));
        assert_eq!(
            one_problem(v),
            "spec.objective.backlogPerReplica (0) must be at least 1"
        );
    }

    #[test]
    fn malformed_durations_are_named() {
        for bad in ["5x", "", "-1s", "1 m", "5", "1.s", "s", "1m 30s", "1sec"] {
            let v = with(base(), "/behavior/pollInterval", json!(bad));
            let p = one_problem(v);
            assert!(
                p.starts_with(&format!(
                    "spec.behavior.pollInterval ({bad:?}) is not a valid duration"
                )),
                "{bad:?}: {p}"
            );
        }
        let v = with(base(), "/objective/maxDrainTime", json!("2 m"));
        assert!(one_problem(v).starts_with("spec.objective.maxDrainTime (\"2 m\")"));
        let v = with(
            base(),
            "/behavior/scaleDown/stabilizationWindow",
            json!("5min"),
        );
        assert!(one_problem(v).starts_with("spec.behavior.scaleDown.stabilizationWindow"));
        let v = with(base(), "/behavior/scaleToZeroCooldown", json!("-5m"));
        assert!(one_problem(v).starts_with("spec.behavior.scaleToZeroCooldown"));
    }

    #[test]
    fn durations_out_of_range() {
        let cases = [
            (
                "/behavior/pollInterval",
                "999ms",
                "spec.behavior.pollInterval (\"999ms\") must be between 1s and 1h",
            ),
            (
                "/behavior/pollInterval",
                "1h1s",
                "spec.behavior.pollInterval (\"1h1s\") must be between 1s and 1h",
            ),
            (
                "/behavior/scaleUp/stabilizationWindow",
                "61m",
                "spec.behavior.scaleUp.stabilizationWindow (\"61m\") must be at most 1h",
            ),
            (
                "/behavior/scaleDown/stabilizationWindow",
                "2h",
                "spec.behavior.scaleDown.stabilizationWindow (\"2h\") must be at most 1h",
            ),
            (
                "/objective/maxDrainTime",
                "500ms",
                "spec.objective.maxDrainTime (\"500ms\") must be at least 1s",
            ),
        ];
        for (ptr, value, want) in cases {
            assert_eq!(one_problem(with(base(), ptr, json!(value))), want);
        }
        // The edges are allowed.
        for (ptr, value) in [
            ("/behavior/pollInterval", "1s"),
            ("/behavior/pollInterval", "1h"),
            ("/behavior/pollInterval", "59m60s"),
            ("/behavior/scaleDown/stabilizationWindow", "0s"),
            ("/behavior/scaleDown/stabilizationWindow", "1h"),
            ("/objective/maxDrainTime", "1s"),
            ("/behavior/scaleToZeroCooldown", "0s"),
        ] {
            validate(&spec(with(base(), ptr, json!(value))))
                .unwrap_or_else(|e| panic!("{ptr}={value}: {e}"));
        }
    }

    #[test]
    fn steps_and_activation() {
        let v = with(base(), "/behavior/scaleUp/maxStep", json!(0));
        assert_eq!(
            one_problem(v),
            "spec.behavior.scaleUp.maxStep (0) must be at least 1"
        );
        let v = with(base(), "/behavior/scaleDown/maxStep", json!(-2));
        assert_eq!(
            one_problem(v),
            "spec.behavior.scaleDown.maxStep (-2) must be at least 1"
        );
        let v = with(base(), "/behavior/activationBacklog", json!(-1));
        assert_eq!(
            one_problem(v),
            "spec.behavior.activationBacklog (-1) must be at least 0"
        );
    }

    #[test]
    fn credentials_in_url_are_refused_and_not_echoed() {
        for url in [
            "http://guest:s3cr3t@rabbitmq:15672",
            "https://admin@rabbitmq:15671",
            "http://:s3cr3t@rabbitmq",
        ] {
            let v = with(base(), "/source/rabbitmq/managementUrl", json!(url));
            let p = one_problem(v);
            assert!(
                p.starts_with("spec.source.rabbitmq.managementUrl must not contain credentials"),
                "{p}"
            );
            assert!(p.contains("use credentialsSecretRef"), "{p}");
            assert!(
                !p.contains("s3cr3t") && !p.contains("guest") && !p.contains("admin"),
                "{p}"
            );
        }
    }

    #[test]
    fn bad_urls() {
        for (url, want) in [
            ("ftp://rabbitmq", "must be an http:// or https:// URL"),
            ("rabbitmq:15672", "must be an http:// or https:// URL"),
            ("HTTP://rabbitmq", "must be an http:// or https:// URL"),
            ("", "must not be empty"),
            ("http://", "is not a valid URL"),
            ("http://rabbit mq:15672", "is not a valid URL"),
        ] {
            let v = with(base(), "/source/rabbitmq/managementUrl", json!(url));
            let p = one_problem(v);
            assert!(
                p.starts_with(&format!("spec.source.rabbitmq.managementUrl {want}")),
                "{url:?}: {p}"
            );
        }
        for ok in [
            "http://10.0.0.1:15672",
            "https://rmq.example/prefix/",
            "http://[::1]:15672",
        ] {
            validate(&spec(with(
                base(),
                "/source/rabbitmq/managementUrl",
                json!(ok),
            )))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    fn amqp_base() -> Value {
        let mut v = base();
        if let Some(r) = v["source"]["rabbitmq"].as_object_mut() {
            r.remove("managementUrl");
            r.insert("amqpUrl".into(), json!("amqp://rabbitmq.default.svc:5672"));
        }
        v
    }

    #[test]
    fn amqp_url_is_carried_over() {
        let v = validate(&spec(amqp_base())).expect("an AMQP-only source is valid");
        let ValidSource::RabbitMq { access, queue, .. } = v.source else {
            panic!("a RabbitMQ source")
        };
        assert_eq!(
            access,
            RabbitMqAccess::Amqp("amqp://rabbitmq.default.svc:5672".into())
        );
        assert!(!access.is_management());
        assert_eq!(queue, "orders");
    }

    #[test]
    fn exactly_one_of_management_and_amqp_url() {
        let both = with(
            base(),
            "/source/rabbitmq/amqpUrl",
            json!("amqp://rabbitmq:5672"),
        );
        let p = one_problem(both);
        assert!(
            p.starts_with(
                "spec.source.rabbitmq: set exactly one of managementUrl and amqpUrl, not both"
            ),
            "{p}"
        );
        let mut neither = base();
        if let Some(r) = neither["source"]["rabbitmq"].as_object_mut() {
            r.remove("managementUrl");
        }
        let p = one_problem(neither);
        assert!(
            p.starts_with(
                "spec.source.rabbitmq: set exactly one of managementUrl (the management HTTP API) \
                 and amqpUrl (AMQP alone"
            ),
            "{p}"
        );
    }

    #[test]
    fn amqp_url_refuses_what_amqp_cannot_see() {
        let v = with(
            amqp_base(),
            "/source/rabbitmq/prefetch",
            json!({"mode": "Recommend"}),
        );
        let p = one_problem(v);
        assert!(
            p.starts_with("spec.source.rabbitmq.prefetch needs managementUrl"),
            "{p}"
        );
        assert!(
            p.contains("no unacknowledged messages and no ack rate"),
            "{p}"
        );
        let v = with(
            amqp_base(),
            "/source/rabbitmq/deadLetter",
            json!({"redrive": {"requestId": "r1"}}),
        );
        let p = one_problem(v);
        assert!(
            p.starts_with("spec.source.rabbitmq.deadLetter needs managementUrl"),
            "{p}"
        );
        assert!(p.contains("redrive"), "{p}");
        let v = with(amqp_base(), "/source/rabbitmq/deadLetter", json!({}));
        let v = with(v, "/source/rabbitmq/prefetch", json!({"mode": "Off"}));
        assert_eq!(problems(v).len(), 2);
        // The same sections with managementUrl are fine.
        let v = with(base(), "/source/rabbitmq/deadLetter", json!({}));
        let v = with(v, "/source/rabbitmq/prefetch", json!({"mode": "Recommend"}));
        validate(&spec(v)).expect("management source with prefetch and deadLetter");
    }

    #[test]
    fn bad_amqp_urls() {
        for (url, want) in [
            (
                "http://rabbitmq:15672",
                "must be an amqp:// or amqps:// URL",
            ),
            ("AMQP://rabbitmq", "must be an amqp:// or amqps:// URL"),
            ("rabbitmq:5672", "must be an amqp:// or amqps:// URL"),
            ("", "must not be empty"),
            (
                "amqp://guest:s3cr3t@rabbitmq",
                "must not contain credentials (user info before the host): use credentialsSecretRef",
            ),
            ("amqp://rabbitmq/%2f", "must not name a vhost in its path"),
            ("amqp://rabbitmq?heartbeat=5", "must not have a query"),
            ("amqp://", "has no host"),
        ] {
            let v = with(amqp_base(), "/source/rabbitmq/amqpUrl", json!(url));
            let p = one_problem(v);
            assert!(
                p.starts_with(&format!("spec.source.rabbitmq.amqpUrl {want}")),
                "{url:?}: {p}"
            );
            assert!(!p.contains("s3cr3t"), "{p}");
        }
        for ok in [
            "amqps://rmq.example",
            "amqp://10.0.0.1:5672/",
            "amqp://[::1]:5672",
        ] {
            validate(&spec(with(
                amqp_base(),
                "/source/rabbitmq/amqpUrl",
                json!(ok),
            )))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn empty_rabbitmq_fields() {
        let v = with(base(), "/source/rabbitmq/vhost", json!(""));
        let v = with(v, "/source/rabbitmq/queue", json!(""));
        let v = with(v, "/source/rabbitmq/credentialsSecretRef/name", json!(""));
        let v = with(
            v,
            "/source/rabbitmq/credentialsSecretRef/usernameKey",
            json!(""),
        );
        let v = with(
            v,
            "/source/rabbitmq/credentialsSecretRef/passwordKey",
            json!(""),
        );
        assert_eq!(
            problems(v),
            [
                "spec.source.rabbitmq.vhost must not be empty",
                "spec.source.rabbitmq.queue must not be empty",
                "spec.source.rabbitmq.credentialsSecretRef.name must not be empty",
                "spec.source.rabbitmq.credentialsSecretRef.usernameKey must not be empty",
                "spec.source.rabbitmq.credentialsSecretRef.passwordKey must not be empty",
            ]
        );
        let v = with(base(), "/source/rabbitmq/queue", json!("q".repeat(256)));
        assert!(one_problem(v).starts_with("spec.source.rabbitmq.queue is 256 characters long"));
    }

    #[test]
    fn empty_target() {
        let v = with(base(), "/scaleTargetRef/name", json!(""));
        assert_eq!(one_problem(v), "spec.scaleTargetRef.name must not be empty");
    }

    #[test]
    fn fallback_rules() {
        let v = with(base(), "/fallback", json!({"mode": "Fixed"}));
        assert_eq!(
            one_problem(v),
            "spec.fallback.replicas is required when spec.fallback.mode is Fixed"
        );
        let v = with(
            base(),
            "/fallback",
            json!({"mode": "Fixed", "replicas": 11}),
        );
        assert_eq!(
            one_problem(v),
            "spec.fallback.replicas (11) must lie within [spec.minReplicas, spec.maxReplicas] ([1, 10])"
        );
        let v = with(base(), "/fallback", json!({"mode": "Fixed", "replicas": 0}));
        assert!(one_problem(v).starts_with("spec.fallback.replicas (0) must lie within"));
        let v = with(
            base(),
            "/fallback",
            json!({"mode": "Fixed", "replicas": 4, "afterFailures": 0}),
        );
        assert_eq!(
            one_problem(v),
            "spec.fallback.afterFailures (0) must be at least 1"
        );
        let v = with(
            base(),
            "/fallback",
            json!({"mode": "Fixed", "replicas": 4, "afterFailures": 1}),
        );
        assert_eq!(
            validate(&spec(v)).expect("valid").policy.fallback,
            Fallback::Fixed {
                replicas: 4,
                after_failures: 1
            }
        );
        let v = with(base(), "/fallback", json!({}));
        assert_eq!(
            validate(&spec(v)).expect("valid").policy.fallback,
            Fallback::Hold
        );
    }

    #[test]
    fn all_problems_are_collected() {
        let v = with(base(), "/minReplicas", json!(5));
        let v = with(v, "/maxReplicas", json!(3));
        let v = with(v, "/source", json!({}));
        let v = with(v, "/objective/backlogPerReplica", json!(0));
        let v = with(v, "/behavior/pollInterval", json!("5x"));
        let v = with(v, "/fallback", json!({"mode": "Fixed"}));
        let p = problems(v);
        assert_eq!(p.len(), 5, "{p:?}");
        let err = validate(&spec(with(base(), "/minReplicas", json!(-1)))).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid spec: spec.minReplicas (-1) must be at least 0"
        );
    }

    #[test]
    fn dead_letter_defaults_follow_the_queue() {
        let v = with(
            base(),
            "/source/rabbitmq/deadLetter",
            json!({"maxDeliveries": 3}),
        );
        let ValidSource::RabbitMq { dead_letter, .. } = validate(&spec(v)).expect("valid").source
        else {
            panic!("a RabbitMQ source")
        };
        let dl = dead_letter.expect("deadLetter");
        assert_eq!(dl.queue, "orders.dlq");
        assert_eq!(dl.exchange, "orders.dlx");
        assert_eq!(dl.routing_key, "orders.dlq");
        assert_eq!(dl.max_deliveries, Some(3));
        assert_eq!(dl.redrive_request, None);
    }

    #[test]
    fn dead_letter_problems() {
        let v = with(
            base(),
            "/source/rabbitmq/deadLetter",
            json!({
                "queue": "orders", "exchange": "amq.direct", "maxDeliveries": 0,
                "redrive": {"requestId": "-bad id", "maxInFlight": 0, "maxMessagesPerSecond": 0}
            }),
        );
        let p = problems(v).join("\n");
        for field in [
            "deadLetter.queue",
            "deadLetter.exchange",
            "maxDeliveries",
            "requestId",
            "maxInFlight",
            "maxMessagesPerSecond (0) must be between 1 and 100000",
        ] {
            assert!(p.contains(field), "{field} missing in {p}");
        }
    }

    #[test]
    fn redrive_request_ids_follow_one_rule_on_every_broker() {
        let sqs = with(
            base(),
            "/source",
            json!({"sqs": {
                "queueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
                "region": "eu-west-1",
                "deadLetter": {"queue": "orders-dlq", "maxReceiveCount": 5}
            }}),
        );
        let cases = [
            (
                base(),
                "/source/rabbitmq/deadLetter/redrive",
                "spec.source.rabbitmq.deadLetter",
            ),
            (
                sqs,
                "/source/sqs/deadLetter/redrive",
                "spec.source.sqs.deadLetter",
            ),
            (
                with(
                    kafka_base(),
                    "/source/kafka/deadLetter",
                    json!({"topic": "dlq"}),
                ),
                "/source/kafka/deadLetter/redrive",
                "spec.source.kafka.deadLetter",
            ),
        ];
        for (v, ptr, field) in cases {
            for bad in ["-r1", "has space", &"x".repeat(64)] {
                let p = one_problem(with(v.clone(), ptr, json!({"requestId": bad})));
                assert!(
                    p.starts_with(&format!("{field}.redrive.requestId (")) && p.contains("1-63"),
                    "{field} {bad}: {p}"
                );
            }
            for ok in ["r1", "2024-06-01.retry_2", &"x".repeat(63)] {
                let v = with(v.clone(), ptr, json!({"requestId": ok, "cancel": true}));
                validate(&spec(v)).unwrap_or_else(|e| panic!("{field} {ok}: {e}"));
            }
        }
        // RabbitMQ carries `cancel` through.
        let v = with(
            base(),
            "/source/rabbitmq/deadLetter/redrive",
            json!({"requestId": "r1", "cancel": true}),
        );
        let ValidSource::RabbitMq { dead_letter, .. } = validate(&spec(v)).expect("valid").source
        else {
            panic!("a RabbitMQ source")
        };
        let dl = dead_letter.expect("deadLetter");
        assert_eq!(
            (dl.redrive_request.as_deref(), dl.redrive_cancel),
            (Some("r1"), true)
        );
        // Kafka's rate has the common name and its own range.
        let v = with(
            kafka_base(),
            "/source/kafka/deadLetter",
            json!({"topic": "dlq", "redrive": {"requestId": "r1", "maxMessagesPerSecond": 0}}),
        );
        assert!(one_problem(v).contains("maxMessagesPerSecond (0) must be between 1 and 1000000"));
    }

    #[test]
    fn prefetch_apply_needs_a_target_and_sane_bounds() {
        let v = with(
            base(),
            "/source/rabbitmq/prefetch",
            json!({"mode": "Apply", "min": 10, "max": 5}),
        );
        let p = problems(v).join("\n");
        assert!(p.contains("deliverTo is required"), "{p}");
        assert!(p.contains("min (10) must not exceed"), "{p}");
        let v = with(
            base(),
            "/source/rabbitmq/prefetch",
            json!({
                "mode": "Apply", "deliverTo": {"env": {"container": "c", "name": "P"}}, "minInterval": "30s"
            }),
        );
        let ValidSource::RabbitMq { prefetch, .. } = validate(&spec(v)).expect("valid").source
        else {
            panic!("a RabbitMQ source")
        };
        let pf = prefetch.expect("prefetch");
        assert!(pf.apply);
        assert_eq!((pf.min, pf.max, pf.min_change_percent), (1, 1000, 25));
        assert_eq!(pf.min_interval, Duration::from_secs(30));
        // Off means no prefetch handling at all.
        let v = with(base(), "/source/rabbitmq/prefetch", json!({"mode": "Off"}));
        let ValidSource::RabbitMq { prefetch, .. } = validate(&spec(v)).expect("valid").source
        else {
            panic!("a RabbitMQ source")
        };
        assert!(prefetch.is_none());
    }
}
