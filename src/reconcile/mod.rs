//! The reconcile loop: validate → observe → decide → act → status.
//!
//! Each ScaledConsumer is re-observed every poll interval. The decision itself is
//! [`crate::core::policy::decide`]; this module only gathers its inputs and carries out its output.
//! Status writes wake the controller again, so a reconcile that finds the object's generation
//! unchanged and its next poll not yet due returns at once without any I/O.

pub mod metrics;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;

use crate::brokers::Source;
use crate::brokers::kafka::reconcile::{self as kafka_reconcile, TickOutcome as KafkaTickOutcome};
use crate::brokers::kafka::{KafkaApi, KafkaReading, KafkaTarget};
use crate::brokers::rabbitmq::amqp::{AmqpReader, AmqpTarget};
use crate::brokers::rabbitmq::poller::SharedPoller;
use crate::brokers::rabbitmq::reconcile::{
    self as rabbitmq_reconcile, Extras as RabbitMqExtras, Inputs as RabbitMqInputs,
};
use crate::brokers::rabbitmq::{ManagementApi, RabbitMqTarget};
use crate::brokers::sqs::deadletter::{self, SqsTickOutcome};
use crate::brokers::sqs::{SqsApi, SqsTarget};
use crate::core::conditions::{self, CondUpdate, READY, SCALING_LIMITED, SOURCE_REACHABLE};
use crate::core::leadership::Leadership;
use crate::core::observation::Observation;
use crate::core::policy::{self, Decision, History, Input, Limit};
use crate::kubeio::error::{Error, Result};
use crate::kubeio::{KubeIo, TargetScale};
use crate::spec::api::{ScaledConsumer, ScaledConsumerStatus};
use crate::spec::validate::{self, RabbitMqAccess, ValidSource, ValidSpec, ValidSqs};
use metrics::Metrics;

/// What the controller remembers about one ScaledConsumer between ticks.
#[derive(Default)]
struct ObjectState {
    history: Option<History>,
    generation: Option<i64>,
    next_poll: Option<Instant>,
    /// `reason: message` of the last error reported by Event, to report each new one once.
    last_error: Option<String>,
    api_failures: u32,
    /// The workload's counts from the last `/scale` read or write.
    scale: Option<KnownScale>,
    /// What this replica last wrote to the status.
    written: Option<Written>,
}

/// A workload's counts as last read from (or written to) its `/scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct KnownScale {
    scale: TargetScale,
    at: Instant,
    /// The ScaledConsumer generation it was read for (a spec change may name another
    /// workload).
    generation: Option<i64>,
}

impl KnownScale {
    /// Good enough to decide on without asking again: read for this spec less than
    /// `refresh` ago, and the workload runs what it is asked to (not converging).
    fn usable(&self, generation: Option<i64>, refresh: Duration, now: Instant) -> bool {
        self.generation == generation
            && now.saturating_duration_since(self.at) < refresh
            && self.scale.desired == self.scale.running
    }
}

/// The last status this replica wrote, reduced to what a user reads.
#[derive(Clone, Debug, PartialEq)]
struct Written {
    digest: ScaledConsumerStatus,
    at: Instant,
    /// The leadership term it was written in (another leader may have written since).
    term: u64,
}

/// The status without what moves on every poll although nothing a user acts on changed:
/// the observation's time, rates and utilisation, the measured throughput, Kafka's rates.
/// Counts, conditions, reasons and job progress stay.
fn digest(status: &ScaledConsumerStatus) -> ScaledConsumerStatus {
    let mut d = status.clone();
    if let Some(o) = d.last_observation.as_mut() {
        o.observed_at.clear();
        o.publish_rate = None;
        o.deliver_rate = None;
        o.ack_rate = None;
        o.consumer_utilisation = None;
    }
    d.per_replica_throughput = None;
    if let Some(k) = d.kafka.as_mut() {
        k.produce_rate = None;
        k.consume_rate = None;
        k.estimated_time_lag_seconds = None;
    }
    d
}

/// Whether a status must be written: first time in this term, something a user reads
/// changed, or the heartbeat is due (a zero heartbeat writes every time).
fn write_due(
    last: Option<&Written>,
    digest: &ScaledConsumerStatus,
    term: u64,
    now: Instant,
    heartbeat: Duration,
) -> bool {
    match last {
        None => true,
        Some(w) => {
            w.term != term
                || w.digest != *digest
                || now.saturating_duration_since(w.at) >= heartbeat
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    kube: Arc<KubeIo>,
    /// One management-API listing per endpoint and vhost serves every object there.
    rabbitmq: SharedPoller,
    /// RabbitMQ sources read through AMQP alone: one connection per endpoint, vhost and login.
    rabbitmq_amqp: AmqpReader,
    /// Prefetch, dead-lettering and redrive of RabbitMQ sources.
    rabbitmq_extras: RabbitMqExtras,
    /// One SDK client per region and endpoint.
    sqs: SqsApi,
    /// One protocol client per Kafka cluster and login.
    kafka: KafkaApi,
    settings: Settings,
    state: Mutex<HashMap<String, ObjectState>>,
    /// The controller's cache of ScaledConsumers, to forget deleted ones.
    store: Store<ScaledConsumer>,
    reconciles: AtomicU64,
    metrics: Arc<Metrics>,
    /// Only the leader writes `/scale`, status and Events.
    leadership: Leadership,
}

/// What the reconcile needs of the operator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Deadline for one broker read.
    pub source_timeout: Duration,
    /// Longest delay between retries after failures.
    pub max_backoff: Duration,
    /// How long a `/scale` read is reused (see `--scale-refresh`).
    pub scale_refresh: Duration,
    /// How often an unchanged status is rewritten (see `--status-heartbeat`).
    pub status_heartbeat: Duration,
}

impl Context {
    /// Everything a reconcile shares: the one writer, the brokers' shared clients, the
    /// watch cache (to forget deleted objects), metrics and the leadership.
    pub fn new(
        kube: Arc<KubeIo>,
        settings: Settings,
        store: Store<ScaledConsumer>,
        metrics: Arc<Metrics>,
        leadership: Leadership,
    ) -> Self {
        let timeout = settings.source_timeout;
        Self {
            kube,
            rabbitmq: SharedPoller::new(Arc::new(ManagementApi::new(timeout))),
            rabbitmq_amqp: AmqpReader::new(timeout),
            rabbitmq_extras: RabbitMqExtras::new(),
            sqs: SqsApi::new(timeout),
            kafka: KafkaApi::new(timeout),
            settings,
            state: Mutex::default(),
            store,
            reconciles: AtomicU64::new(0),
            metrics,
            leadership,
        }
    }
}

/// Every this many reconciles, state of deleted ScaledConsumers is dropped.
const PRUNE_EVERY: u64 = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key_of(sc: &ScaledConsumer) -> String {
    format!(
        "{}/{}",
        sc.metadata.namespace.as_deref().unwrap_or_default(),
        sc.name_any()
    )
}

/// Drop what the controller remembers about ScaledConsumers that no longer exist. Deleting a
/// ScaledConsumer leaves its workload as it is.
fn prune_deleted(ctx: &Context) {
    let live: std::collections::HashSet<String> =
        ctx.store.state().iter().map(|sc| key_of(sc)).collect();
    lock(&ctx.state).retain(|k, _| {
        let keep = live.contains(k);
        if !keep && let Some((ns, name)) = k.split_once('/') {
            ctx.metrics.forget(ns, name);
        }
        keep
    });
    ctx.rabbitmq_extras.retain(|k| live.contains(k));
    ctx.kafka.retain(|k| live.contains(k));
}

/// One reconcile of one ScaledConsumer (the controller's reconcile function).
pub async fn reconcile(sc: Arc<ScaledConsumer>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconcile();
    if ctx.reconciles.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
        prune_deleted(&ctx);
    }
    let namespace = sc
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let key = key_of(&sc);
    let generation = sc.metadata.generation;

    let valid = match validate::validate(&sc.spec) {
        Ok(v) => v,
        Err(e) => {
            let err = Error::InvalidSpec(e);
            report_blocked(&sc, &ctx, &key, &err).await?;
            lock(&ctx.state).entry(key).or_default().generation = generation;
            return Ok(Action::await_change());
        }
    };

    // Throttle: status writes and target changes wake us; poll only when due.
    {
        let mut states = lock(&ctx.state);
        let st = states.entry(key.clone()).or_default();
        let now = Instant::now();
        if st.generation == generation
            && let Some(next) = st.next_poll
            && now < next
        {
            return Ok(Action::requeue(next - now));
        }
    }

    let delay = match tick(&sc, &valid, &namespace, &key, &ctx).await {
        Ok(d) => d,
        // Leadership lapsed during the tick: nothing was written; poll as a follower does.
        Err(Error::NotLeader) => valid.policy.poll_interval,
        Err(e) => return Err(e),
    };
    let mut states = lock(&ctx.state);
    let st = states.entry(key).or_default();
    st.generation = generation;
    st.next_poll = Some(Instant::now() + delay);
    st.api_failures = 0;
    Ok(Action::requeue(delay))
}

/// What to do after a failed reconcile (the controller's error policy).
pub fn error_policy(sc: Arc<ScaledConsumer>, err: &Error, ctx: Arc<Context>) -> Action {
    let (failures, delay) = {
        let mut states = lock(&ctx.state);
        let st = states.entry(key_of(&sc)).or_default();
        st.api_failures = st.api_failures.saturating_add(1);
        st.next_poll = None;
        let delay = backoff(
            Duration::from_secs(1),
            st.api_failures,
            ctx.settings.max_backoff,
        );
        (st.api_failures, delay)
    };
    ctx.metrics.error(err);
    tracing::warn!(object = %key_of(&sc), error = %err, retry_in = ?delay, "reconcile failed");
    // The first failure of a run gets a Warning Event (errors never carry credentials);
    // retries of the same run stay in the log and the metrics.
    if failures == 1 && ctx.leadership.is_leader() {
        let note = format!("{err}; retrying with backoff");
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.kube
                .event(&sc, true, "ReconcileFailed", "Reconcile", note)
                .await;
        });
    }
    Action::requeue(delay)
}

/// `base · 2^(n-1)`, capped.
fn backoff(base: Duration, failures: u32, cap: Duration) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(cap).max(base)
}

/// One observation and decision. Returns when the next one is due.
async fn tick(
    sc: &ScaledConsumer,
    valid: &ValidSpec,
    namespace: &str,
    key: &str,
    ctx: &Context,
) -> Result<Duration> {
    let cfg = &valid.policy;
    let poll = cfg.poll_interval;

    // The target first: without its current count there is nothing to decide.
    let target = match ctx.kube.target(namespace, &valid.target).await {
        Ok(t) => t,
        Err(e) => return target_problem(sc, ctx, key, e, poll).await,
    };
    let generation = sc.metadata.generation;
    let known = lock(&ctx.state)
        .get(key)
        .and_then(|st| st.scale)
        .filter(|k| k.usable(generation, ctx.settings.scale_refresh, Instant::now()));
    let (mut scale, mut fresh) = match known {
        Some(k) => (k.scale, false),
        None => match read_scale(ctx, key, &target, generation).await {
            Ok(s) => (s, true),
            Err(e) => return target_problem(sc, ctx, key, e, poll).await,
        },
    };

    let started = Instant::now();
    let Observed {
        result: observed,
        rabbitmq: rabbit_target,
        kafka: kafka_read,
    } = observe(valid, namespace, ctx).await;
    ctx.metrics.poll(
        source_kind(&valid.source),
        observed.is_ok(),
        started.elapsed(),
    );
    match &observed {
        Ok(obs) => ctx.metrics.observed(namespace, &sc.name_any(), obs),
        Err(e) => ctx.metrics.error(e),
    }
    let now = Timestamp::now();
    let input = match &observed {
        Ok(obs) => Input::Observed(obs),
        Err(_) => Input::Unavailable,
    };

    // The history is taken out while the count may be confirmed (one reconcile per object
    // runs at a time, so nothing else uses it meanwhile).
    let mut history = {
        let mut states = lock(&ctx.state);
        let st = states.entry(key.to_string()).or_default();
        st.history
            .take()
            .unwrap_or_else(|| seeded_history(sc, scale.desired, now))
    };
    if let ValidSource::RabbitMq {
        access: RabbitMqAccess::Amqp(_),
        ..
    } = &valid.source
    {
        // AMQP gives no rates: a throughput measured before a switch from the management
        // API could never be refreshed, so the backlog objective decides.
        history.per_replica_throughput = None;
    }
    let mut decision = policy::decide(input, cfg, &history, scale.desired, now);
    if decision.desired != scale.desired && !fresh {
        // A change is due: decide again on the workload's count as it is now (someone may
        // have scaled it by hand since the last read).
        match read_scale(ctx, key, &target, generation).await {
            Ok(s) => {
                scale = s;
                fresh = true;
                decision = policy::decide(input, cfg, &history, scale.desired, now);
            }
            Err(e) => {
                lock(&ctx.state).entry(key.to_string()).or_default().history = Some(history);
                return target_problem(sc, ctx, key, e, poll).await;
            }
        }
    }
    debug_assert!(fresh || decision.desired == scale.desired);
    let current = scale.desired;
    history.record(input, &decision, cfg, current, now);
    let (failures, throughput) = (history.consecutive_failures, history.per_replica_throughput);
    lock(&ctx.state).entry(key.to_string()).or_default().history = Some(history);

    ctx.metrics.decision(
        namespace,
        &sc.name_any(),
        current,
        decision.desired,
        decision.limit.map(limit_reason),
    );
    let next = match &observed {
        Ok(_) => poll,
        Err(_) => backoff(poll, failures, ctx.settings.max_backoff.max(poll)),
    };
    // Every replica observes and decides; only the leader writes.
    if !ctx.leadership.is_leader() {
        return Ok(next);
    }

    let mut scaled = false;
    if decision.desired != current {
        // Forget the count first: if the write fails, the next poll reads it again.
        lock(&ctx.state).entry(key.to_string()).or_default().scale = None;
        let written = ctx.kube.set_replicas(&target, decision.desired).await?;
        remember_scale(ctx, key, written, generation);
        scale.running = written.running;
        ctx.metrics
            .scaled(namespace, &sc.name_any(), current, decision.desired);
        scaled = true;
        tracing::info!(
            object = key,
            from = current,
            to = decision.desired,
            reason = %decision.reason,
            "scaled"
        );
        ctx.kube
            .event(
                sc,
                false,
                "Scaled",
                // Events are folded into a series by (type, reason, action): naming the
                // transition keeps each distinct change its own Event with its own note.
                &format!("Scale{current}To{}", decision.desired),
                format!(
                    "{} {}: {} → {} replicas ({})",
                    target.kind, target.name, current, decision.desired, decision.reason
                ),
            )
            .await;
    }

    let source_error = observed.as_ref().err();
    report_source_error(sc, ctx, key, source_error).await;

    // RabbitMQ prefetch, dead-lettering and redrive (management API only).
    let rabbitmq = match (&valid.source, &rabbit_target) {
        (
            ValidSource::RabbitMq {
                access: RabbitMqAccess::Amqp(_),
                ..
            },
            _,
        ) if has_rabbitmq_extras(sc) => Some(rabbitmq_reconcile::amqp_only(sc)),
        (
            ValidSource::RabbitMq {
                prefetch,
                dead_letter,
                ..
            },
            Some(rt),
        ) if prefetch.is_some() || dead_letter.is_some() || has_rabbitmq_extras(sc) => {
            let inputs = RabbitMqInputs {
                sc,
                key,
                target: rt,
                prefetch: prefetch.as_ref(),
                dead_letter: dead_letter.as_ref(),
                observation: observed.as_ref().ok(),
                workload: &target,
                workload_ref: &valid.target,
                poll,
            };
            Some(
                ctx.rabbitmq_extras
                    .reconcile(&ctx.rabbitmq, &ctx.kube, inputs)
                    .await,
            )
        }
        _ => None,
    };

    // SQS: the dead-letter policy and redrives (logic in brokers::sqs).
    let sqs = match &valid.source {
        ValidSource::Sqs(q) => Some(sqs_step(sc, key, q, namespace, observed.is_ok(), ctx).await),
        _ => None,
    };

    // Kafka: status details, partition growth, the dead-letter topic (brokers::kafka).
    let kafka = match &valid.source {
        ValidSource::Kafka(k) => Some(
            ctx.kafka
                .after_decide(kafka_reconcile::After {
                    sc,
                    key,
                    spec: k,
                    target: kafka_read.as_ref().map(|(t, _)| t),
                    reading: kafka_read.as_ref().and_then(|(_, r)| r.as_ref()),
                    decision: &decision,
                    current,
                    policy: cfg,
                    kube: &ctx.kube,
                })
                .await,
        ),
        _ => None,
    };

    let status = build_status(
        sc,
        valid,
        StatusInputs {
            scale,
            observation: observed.as_ref().ok(),
            error: source_error,
            decision: &decision,
            scaled,
            failures,
            throughput,
            sqs,
            kafka,
        },
    );
    let status = match rabbitmq {
        Some(extras) => with_rabbitmq(sc, status, extras),
        None => status,
    };
    write_status(sc, ctx, key, &status).await?;
    Ok(next)
}

/// Read the workload's `/scale` and remember it (a failed read forgets what was known).
async fn read_scale(
    ctx: &Context,
    key: &str,
    target: &crate::kubeio::Target,
    generation: Option<i64>,
) -> Result<TargetScale> {
    match ctx.kube.scale(target).await {
        Ok(s) => {
            remember_scale(ctx, key, s, generation);
            Ok(s)
        }
        Err(e) => {
            lock(&ctx.state).entry(key.to_string()).or_default().scale = None;
            Err(e)
        }
    }
}

fn remember_scale(ctx: &Context, key: &str, scale: TargetScale, generation: Option<i64>) {
    lock(&ctx.state).entry(key.to_string()).or_default().scale = Some(KnownScale {
        scale,
        at: Instant::now(),
        generation,
    });
}

/// Write the status unless it would change nothing a user reads since this replica last
/// wrote it (see [`write_due`]).
async fn write_status(
    sc: &ScaledConsumer,
    ctx: &Context,
    key: &str,
    status: &ScaledConsumerStatus,
) -> Result<()> {
    let d = digest(status);
    let term = ctx.leadership.term();
    let now = Instant::now();
    let due = write_due(
        lock(&ctx.state).get(key).and_then(|st| st.written.as_ref()),
        &d,
        term,
        now,
        ctx.settings.status_heartbeat,
    );
    ctx.metrics.status_write(due);
    if !due {
        return Ok(());
    }
    // A failed write forgets what was written, so the next poll tries again.
    lock(&ctx.state).entry(key.to_string()).or_default().written = None;
    ctx.kube.apply_status(sc, status).await?;
    lock(&ctx.state).entry(key.to_string()).or_default().written = Some(Written {
        digest: d,
        at: now,
        term,
    });
    Ok(())
}

/// History for an object the controller has not seen since it started. The last scale time
/// survives restarts through the status.
fn seeded_history(sc: &ScaledConsumer, current: i32, now: Timestamp) -> History {
    let mut h = History::seeded(current, now);
    h.last_scale = sc
        .status
        .as_ref()
        .and_then(|s| s.last_scale_time.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok());
    h.per_replica_throughput = sc
        .status
        .as_ref()
        .and_then(|s| s.per_replica_throughput)
        .filter(|v| v.is_finite() && *v > 0.0);
    h
}

/// The source's name, for metrics labels.
fn source_kind(source: &ValidSource) -> &'static str {
    match source {
        ValidSource::RabbitMq { .. } => "rabbitmq",
        ValidSource::Sqs(_) => "sqs",
        ValidSource::Kafka(_) => "kafka",
    }
}

/// What one read gave: the observation, and what the source-specific steps need.
struct Observed {
    result: Result<Observation>,
    rabbitmq: Option<RabbitMqTarget>,
    /// The Kafka target (also when the read failed) and the reading.
    kafka: Option<(KafkaTarget, Option<KafkaReading>)>,
}

impl Observed {
    fn plain(result: Result<Observation>) -> Self {
        Self {
            result,
            rabbitmq: None,
            kafka: None,
        }
    }
}

/// Credentials, then the broker (through the shared readers: a reading at most half a poll
/// interval old).
async fn observe(valid: &ValidSpec, namespace: &str, ctx: &Context) -> Observed {
    match &valid.source {
        ValidSource::RabbitMq {
            access,
            vhost,
            queue,
            include_unacked,
            credentials,
            ..
        } => {
            let creds = match ctx.kube.credentials(namespace, credentials).await {
                Ok(c) => c,
                Err(e) => return Observed::plain(Err(e)),
            };
            let max_age = valid.policy.poll_interval / 2;
            let (res, target) = match access {
                RabbitMqAccess::Management(management_url) => {
                    let target = RabbitMqTarget {
                        management_url: management_url.clone(),
                        vhost: vhost.clone(),
                        queue: queue.clone(),
                        include_unacked: *include_unacked,
                        credentials: creds,
                    };
                    (ctx.rabbitmq.observe(&target, max_age).await, Some(target))
                }
                RabbitMqAccess::Amqp(amqp_url) => {
                    let target = AmqpTarget {
                        amqp_url: amqp_url.clone(),
                        vhost: vhost.clone(),
                        queue: queue.clone(),
                        credentials: creds,
                    };
                    (ctx.rabbitmq_amqp.observe(&target, max_age).await, None)
                }
            };
            if let Err(crate::core::error::SourceError::Unauthorized { .. }) = &res {
                ctx.kube.forget_secret(namespace, &credentials.name);
            }
            Observed {
                result: res.map_err(Error::from),
                rabbitmq: target,
                kafka: None,
            }
        }
        ValidSource::Sqs(q) => {
            let target = match sqs_target(q, namespace, ctx).await {
                Ok(t) => t,
                Err(e) => return Observed::plain(Err(e)),
            };
            let res = ctx.sqs.observe(&target).await;
            if let (Err(e), Some(c)) = (&res, &q.credentials)
                && e.reason() == "Unauthorized"
            {
                ctx.kube.forget_secret(namespace, &c.name);
            }
            Observed::plain(res.map_err(Error::from))
        }
        ValidSource::Kafka(k) => {
            let target =
                match kafka_reconcile::target(&ctx.kube, namespace, k, ctx.kafka.timeout()).await {
                    Ok(t) => t,
                    Err(e) => return Observed::plain(Err(e)),
                };
            match ctx
                .kafka
                .read(&target, valid.policy.poll_interval / 2)
                .await
            {
                Ok(reading) => Observed {
                    result: Ok(reading.observation(target.cap)),
                    rabbitmq: None,
                    kafka: Some((target, Some(reading))),
                },
                Err(e) => {
                    if let (SourceErrorReason::Unauthorized, Some(s)) =
                        (SourceErrorReason::of(&e), &k.sasl)
                    {
                        ctx.kube
                            .forget_secret(namespace, &s.credentials_secret_ref.name);
                    }
                    Observed {
                        result: Err(Error::from(e)),
                        rabbitmq: None,
                        kafka: Some((target, None)),
                    }
                }
            }
        }
    }
}

/// Whether a source error is about credentials (a rotated Secret is then read again).
enum SourceErrorReason {
    Unauthorized,
    Other,
}

impl SourceErrorReason {
    fn of(e: &crate::core::error::SourceError) -> Self {
        if e.reason() == "Unauthorized" {
            Self::Unauthorized
        } else {
            Self::Other
        }
    }
}

/// True when the status still shows RabbitMQ extras (a removed section is cleaned up).
fn has_rabbitmq_extras(sc: &ScaledConsumer) -> bool {
    sc.status.as_ref().is_some_and(|s| s.rabbitmq.is_some())
        || sc
            .annotations()
            .contains_key(crate::spec::api::REDRIVE_ANNOTATION)
}

/// Merge the RabbitMQ extras into a built status.
fn with_rabbitmq(
    sc: &ScaledConsumer,
    mut status: ScaledConsumerStatus,
    extras: crate::brokers::rabbitmq::reconcile::Outcome,
) -> ScaledConsumerStatus {
    let mut conditions = conditions::merge_conditions(
        &status.conditions,
        &extras.conditions,
        sc.metadata.generation,
        Timestamp::now(),
    );
    conditions.retain(|c| !extras.remove.contains(&c.type_.as_str()));
    status.conditions = conditions;
    status.rabbitmq = extras.status;
    status
}

/// The SQS queue with its credentials (a Secret, or the default AWS chain).
async fn sqs_target(q: &ValidSqs, namespace: &str, ctx: &Context) -> Result<SqsTarget> {
    let credentials = match &q.credentials {
        Some(keys) => Some(ctx.kube.credentials(namespace, keys).await?),
        None => None,
    };
    Ok(SqsTarget {
        queue_url: q.queue_url.clone(),
        region: q.region.clone(),
        endpoint: q.endpoint.clone(),
        credentials,
        include_in_flight: q.include_in_flight,
        include_delayed: q.include_delayed,
    })
}

/// After the depth read: the dead-letter policy and any redrive. Never fails the tick.
async fn sqs_step(
    sc: &ScaledConsumer,
    key: &str,
    q: &ValidSqs,
    namespace: &str,
    read_ok: bool,
    ctx: &Context,
) -> SqsTickOutcome {
    let target = match sqs_target(q, namespace, ctx).await {
        Ok(t) if read_ok => Some(t),
        _ => None,
    };
    ctx.sqs
        .after_observe(sc, key, q, target.as_ref(), &ctx.kube)
        .await
}

/// Emit a Warning Event for each new source error, and a Normal one on recovery.
async fn report_source_error(sc: &ScaledConsumer, ctx: &Context, key: &str, err: Option<&Error>) {
    let fingerprint = err.map(|e| format!("{}: {e}", e.reason()));
    let previous = {
        let mut states = lock(&ctx.state);
        let st = states.entry(key.to_string()).or_default();
        std::mem::replace(&mut st.last_error, fingerprint.clone())
    };
    if !ctx.leadership.is_leader() {
        return;
    }
    match (err, previous) {
        (Some(e), prev) if prev.as_ref() != fingerprint.as_ref() => {
            tracing::warn!(object = key, reason = e.reason(), error = %e, "source unavailable");
            ctx.kube
                .event(
                    sc,
                    true,
                    e.reason(),
                    "Observe",
                    format!("{e}; holding the replica count"),
                )
                .await;
        }
        (None, Some(_)) => {
            ctx.kube
                .event(
                    sc,
                    false,
                    "SourceRecovered",
                    "Observe",
                    "source readable again".to_string(),
                )
                .await;
        }
        _ => {}
    }
}

/// Invalid spec: set conditions and emit an Event once; nothing else happens.
async fn report_blocked(sc: &ScaledConsumer, ctx: &Context, key: &str, err: &Error) -> Result<()> {
    let fingerprint = format!("{}: {err}", err.reason());
    let is_new = {
        let mut states = lock(&ctx.state);
        let st = states.entry(key.to_string()).or_default();
        let new = st.last_error.as_deref() != Some(fingerprint.as_str());
        st.last_error = Some(fingerprint);
        new
    };
    ctx.metrics.error(err);
    if !ctx.leadership.is_leader() {
        return Ok(());
    }
    if is_new {
        tracing::warn!(object = key, reason = err.reason(), error = %err, "cannot scale");
        ctx.kube
            .event(sc, true, err.reason(), "Validate", err.to_string())
            .await;
    }
    let now = Timestamp::now();
    let prev = sc.status.clone().unwrap_or_default();
    let mut updates = vec![CondUpdate::new(READY, false, err.reason(), err.to_string())];
    if matches!(err, Error::InvalidSpec(_)) {
        updates.push(CondUpdate::new(
            SCALING_LIMITED,
            true,
            "InvalidSpec",
            "nothing is scaled until the spec is fixed",
        ));
    }
    let status = ScaledConsumerStatus {
        observed_generation: sc.metadata.generation,
        conditions: conditions::merge_conditions(
            &prev.conditions,
            &updates,
            sc.metadata.generation,
            now,
        ),
        source: Some(sc.spec.source.describe()),
        reason: Some(format!("not scaling: {err}")),
        sqs: prev.sqs.clone().map(deadletter::status_for_apply),
        kafka: prev.kafka.clone().map(kafka_reconcile::status_for_apply),
        ..prev
    };
    write_status(sc, ctx, key, &status).await
}

/// A target that cannot be resolved or read: report it and retry later (a permanent problem
/// waits for a spec change, with a slow safety retry in case the cluster changes).
async fn target_problem(
    sc: &ScaledConsumer,
    ctx: &Context,
    key: &str,
    err: Error,
    poll: Duration,
) -> Result<Duration> {
    if let Error::Kube(_) = err {
        return Err(err);
    }
    report_blocked(sc, ctx, key, &err).await?;
    Ok(if err.is_permanent() {
        ctx.settings.max_backoff.max(poll)
    } else {
        poll.max(Duration::from_secs(2))
    })
}

struct StatusInputs<'a> {
    scale: TargetScale,
    observation: Option<&'a Observation>,
    error: Option<&'a Error>,
    decision: &'a Decision,
    scaled: bool,
    failures: u32,
    throughput: Option<f64>,
    sqs: Option<SqsTickOutcome>,
    kafka: Option<KafkaTickOutcome>,
}

fn build_status(
    sc: &ScaledConsumer,
    valid: &ValidSpec,
    i: StatusInputs<'_>,
) -> ScaledConsumerStatus {
    let now = Timestamp::now();
    let prev = sc.status.clone().unwrap_or_default();
    let generation = sc.metadata.generation;
    let d = i.decision;

    let mut updates = Vec::new();
    match i.error {
        None => {
            let backlog = i.observation.map(|o| o.backlog).unwrap_or_default();
            let through = match &valid.source {
                ValidSource::RabbitMq {
                    access: RabbitMqAccess::Amqp(_),
                    ..
                } => {
                    " through AMQP (ready messages only: no unacknowledged count, no \
                     publish or ack rates)"
                }
                _ => "",
            };
            updates.push(CondUpdate::new(
                SOURCE_REACHABLE,
                true,
                "Observed",
                format!(
                    "read {}{through}: backlog {backlog}",
                    sc.spec.source.describe()
                ),
            ));
            updates.push(CondUpdate::new(
                READY,
                true,
                if i.scaled { "Scaled" } else { "Observed" },
                d.reason.clone(),
            ));
        }
        Some(e) => {
            updates.push(CondUpdate::new(
                SOURCE_REACHABLE,
                false,
                e.reason(),
                e.to_string(),
            ));
            updates.push(CondUpdate::new(
                READY,
                false,
                "SourceUnavailable",
                format!("{}: {e}", e.reason()),
            ));
        }
    }
    let sqs = i.sqs.unwrap_or_default();
    updates.extend(sqs.conditions);
    let kafka = i.kafka.unwrap_or_default();
    updates.extend(kafka.conditions);
    updates.push(match d.limit {
        Some(limit) => {
            CondUpdate::new(SCALING_LIMITED, true, limit_reason(limit), d.reason.clone())
        }
        None => CondUpdate::new(
            SCALING_LIMITED,
            false,
            "WithinBounds",
            format!(
                "within [{}, {}]",
                valid.policy.min_replicas, valid.policy.max_replicas
            ),
        ),
    });

    ScaledConsumerStatus {
        observed_generation: generation,
        conditions: conditions::merge_conditions(&prev.conditions, &updates, generation, now),
        source: Some(sc.spec.source.describe()),
        current_replicas: Some(i.scale.running),
        desired_replicas: Some(d.desired),
        last_scale_time: if i.scaled {
            Some(conditions::rfc3339(now))
        } else {
            prev.last_scale_time
        },
        last_observation: i
            .observation
            .map(self::status::observation_status)
            .or(prev.last_observation),
        reason: Some(d.reason.clone()),
        consecutive_failures: Some(i32::try_from(i.failures).unwrap_or(i32::MAX)),
        per_replica_throughput: i.throughput.map(|v| (v * 100.0).round() / 100.0),
        rabbitmq: prev.rabbitmq,
        sqs: sqs.status,
        kafka: kafka.status,
    }
}

fn limit_reason(limit: Limit) -> &'static str {
    match limit {
        Limit::Min => "AtMinReplicas",
        Limit::Max => "AtMaxReplicas",
        Limit::MaxStepUp => "MaxStepUp",
        Limit::MaxStepDown => "MaxStepDown",
        Limit::Stabilization => "Stabilizing",
        Limit::ScaleToZeroCooldown => "ScaleToZeroCooldown",
        Limit::Paused => "Paused",
        Limit::NoData => "NoData",
        Limit::ReplicaCap => "AtPartitionCount",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 0, s(60)), s(1));
        assert_eq!(backoff(s(1), 1, s(60)), s(1));
        assert_eq!(backoff(s(1), 2, s(60)), s(2));
        assert_eq!(backoff(s(1), 4, s(60)), s(8));
        assert_eq!(backoff(s(1), 40, s(60)), s(60));
        assert_eq!(backoff(s(5), 3, s(60)), s(20));
    }

    fn observed(backlog: i64, at: &str, rate: f64) -> ScaledConsumerStatus {
        ScaledConsumerStatus {
            desired_replicas: Some(1),
            last_observation: Some(crate::spec::api::ObservationStatus {
                backlog,
                ready: Some(backlog),
                unacked: Some(0),
                consumers: Some(1),
                publish_rate: Some(rate),
                deliver_rate: Some(rate),
                ack_rate: Some(rate),
                consumer_utilisation: Some(0.5),
                observed_at: at.to_string(),
            }),
            per_replica_throughput: Some(rate),
            ..ScaledConsumerStatus::default()
        }
    }

    #[test]
    fn digest_ignores_what_moves_every_poll() {
        let a = observed(0, "2026-01-01T00:00:00Z", 0.5);
        let b = observed(0, "2026-01-01T00:00:05Z", 0.7);
        assert_eq!(digest(&a), digest(&b));
        // A count a user reads is a change.
        assert_ne!(
            digest(&a),
            digest(&observed(1, "2026-01-01T00:00:05Z", 0.5))
        );
        let mut c = a.clone();
        c.desired_replicas = Some(2);
        assert_ne!(digest(&a), digest(&c));
        let mut d = a.clone();
        d.reason = Some("backlog 0".into());
        assert_ne!(digest(&a), digest(&d));
    }

    #[test]
    fn status_is_written_on_change_new_term_or_heartbeat() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let d = digest(&observed(0, "x", 0.0));
        let last = Written {
            digest: d.clone(),
            at: t0,
            term: 1,
        };
        assert!(write_due(None, &d, 1, t0, minute), "first write");
        assert!(!write_due(Some(&last), &d, 1, t0 + minute / 2, minute));
        assert!(
            write_due(Some(&last), &d, 1, t0 + minute, minute),
            "heartbeat"
        );
        assert!(write_due(Some(&last), &d, 2, t0, minute), "new term");
        let changed = digest(&observed(5, "x", 0.0));
        assert!(write_due(Some(&last), &changed, 1, t0, minute), "change");
        assert!(
            write_due(Some(&last), &d, 1, t0, Duration::ZERO),
            "every poll"
        );
    }

    #[test]
    fn a_known_count_is_reused_only_while_settled_and_fresh() {
        let t0 = Instant::now();
        let refresh = Duration::from_secs(60);
        let settled = KnownScale {
            scale: TargetScale {
                desired: 3,
                running: 3,
            },
            at: t0,
            generation: Some(2),
        };
        assert!(settled.usable(Some(2), refresh, t0 + refresh / 2));
        assert!(!settled.usable(Some(2), refresh, t0 + refresh), "too old");
        assert!(!settled.usable(Some(3), refresh, t0), "the spec changed");
        assert!(
            !settled.usable(Some(2), Duration::ZERO, t0),
            "read every poll"
        );
        let converging = KnownScale {
            scale: TargetScale {
                desired: 3,
                running: 1,
            },
            ..settled
        };
        assert!(!converging.usable(Some(2), refresh, t0));
    }
}
