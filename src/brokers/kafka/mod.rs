//! Kafka: consumer-group lag, partition-aware replica caps, partition growth and redrive of
//! a dead-letter topic.
//!
//! - [`wire`]: the protocol client (connections per broker, TLS, SASL, versions, counters).
//! - [`sasl`]: PLAIN and SCRAM exchanges (pure).
//! - [`model`]: lag rules, rates, caps, the partition-growth decision (pure).
//! - this file: the shared reader. Every ScaledConsumer that points at the same cluster with
//!   the same login is served by one [`wire::Cluster`] and one *round* of requests per poll:
//!   one `Metadata` for every watched topic, two `ListOffsets` per partition leader (log
//!   start and log end of all its partitions at once), and one `OffsetFetch` per group
//!   coordinator for every watched group (batched, `OffsetFetch` v8). Requests per round do
//!   not grow with the number of ScaledConsumers or partitions, only with the brokers.
//! - [`growth`]: applying the partition-growth decision through [`growth::PartitionAdmin`].
//! - [`redrive`]: copying the dead-letter topic back to the source topic, once per request.
//!
//! nerite speaks the protocol itself (the `kafka-protocol` codec) rather than through
//! librdkafka: librdkafka's Rust binding can read a group's committed offsets only through a
//! client that *is* a member of that group (one client per group), which would defeat the
//! shared client, and every call here is async with its own deadline.

pub mod growth;
pub mod model;
pub mod reconcile;
pub mod records;
pub mod redrive;
pub mod sasl;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, GroupId, ListOffsetsRequest, MetadataRequest,
    OffsetFetchRequest, TopicName, list_offsets_request::ListOffsetsPartition,
    list_offsets_request::ListOffsetsTopic, metadata_request::MetadataRequestTopic,
    offset_fetch_request::OffsetFetchRequestGroup, offset_fetch_request::OffsetFetchRequestTopic,
    offset_fetch_request::OffsetFetchRequestTopics,
};

use self::model::{CapMode, LagSummary, OffsetReset, PartitionOffsets, Progress};
use self::wire::{Cluster, Route, Settings, WireError, sb};
use crate::brokers::Source;
use crate::core::error::SourceError;
use crate::core::observation::Observation;
use crate::core::observation::ReplicaCap;

/// A round nobody asked for a topic or group in this long drops it.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Rates need readings at least this far apart.
const MIN_RATE_GAP: Duration = Duration::from_secs(1);

/// One consumer group on one cluster, and how to count it.
#[derive(Clone)]
pub struct KafkaTarget {
    pub settings: Settings,
    pub topics: Vec<String>,
    pub group: String,
    pub offset_reset: OffsetReset,
    pub cap: CapMode,
    /// Also read this topic's depth (the dead-letter topic).
    pub dead_letter_topic: Option<String>,
}

/// Partition offsets of one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOffsets {
    /// partition → (log start, log end), every partition of the topic.
    pub partitions: BTreeMap<i32, (i64, i64)>,
}

impl TopicOffsets {
    /// Records retained (Σ end − start): the depth of a dead-letter topic.
    pub fn depth(&self) -> i64 {
        self.partitions.values().map(|(s, e)| (e - s).max(0)).sum()
    }
}

/// What one read of a group gives.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaReading {
    pub summary: LagSummary,
    pub produce_rate: Option<f64>,
    pub consume_rate: Option<f64>,
    /// Partition count of each source topic.
    pub topics: Vec<(String, i32)>,
    /// Depth of the dead-letter topic, when one is named.
    pub dead_letter: Option<Result<TopicOffsets, SourceError>>,
    pub observed_at: Timestamp,
}

impl KafkaReading {
    /// Lag ÷ consume rate, seconds.
    pub fn time_lag(&self) -> Option<f64> {
        self.consume_rate
            .filter(|r| *r > 0.0 && r.is_finite())
            .map(|r| self.summary.total as f64 / r)
    }

    pub fn observation(&self, cap: CapMode) -> Observation {
        Observation {
            backlog: self.summary.total,
            ready: Some(self.summary.total),
            unacked: None,
            consumers: None,
            publish_rate: self.produce_rate,
            deliver_rate: None,
            ack_rate: self.consume_rate,
            consumer_utilisation: None,
            observed_at: self.observed_at,
            replica_cap: model::replica_cap(cap, &self.summary)
                .map(|(max, why)| ReplicaCap { max, why }),
        }
    }
}

/// What a round reads: topics and, for groups, their topics.
#[derive(Default)]
struct Wanted {
    topics: HashMap<String, Instant>,
    groups: HashMap<String, (BTreeSet<String>, Instant)>,
}

/// One round's answers.
struct Snapshot {
    taken: Instant,
    at: Timestamp,
    topics: HashMap<String, Result<TopicOffsets, SourceError>>,
    groups: HashMap<String, GroupOffsets>,
    /// The round failed as a whole (no broker answered metadata).
    failure: Option<SourceError>,
}

impl Snapshot {
    fn covers(&self, t: &KafkaTarget) -> bool {
        self.failure.is_some()
            || (t.topics.iter().all(|x| self.topics.contains_key(x))
                && t.dead_letter_topic
                    .as_ref()
                    .is_none_or(|d| self.topics.contains_key(d))
                && self
                    .groups
                    .get(&t.group)
                    .is_some_and(|_| t.topics.iter().all(|x| self.topics.contains_key(x))))
    }
}

#[derive(Default)]
struct RoundState {
    wanted: Wanted,
    snapshot: Option<Arc<Snapshot>>,
    /// Group → coordinator node id.
    coordinators: HashMap<String, i32>,
    /// (group, topics) → the last two progress sums and the rates between them.
    progress: HashMap<(String, Vec<String>), RateState>,
}

#[derive(Clone, Copy)]
struct RateState {
    last: Progress,
    produce: Option<f64>,
    consume: Option<f64>,
}

/// One cluster with one login, shared.
pub struct Shared {
    pub cluster: Arc<Cluster>,
    state: tokio::sync::Mutex<RoundState>,
}

/// The Kafka side of nerite: shared clusters, growth state and redrives.
pub struct KafkaApi {
    timeout: Duration,
    clusters: Mutex<HashMap<Settings, Arc<Shared>>>,
    pub(crate) redrives: redrive::Redrives,
}

impl KafkaApi {
    /// `timeout` bounds each request (connection set-up included).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clusters: Mutex::default(),
            redrives: redrive::Redrives::default(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Forget redrives of ScaledConsumers that no longer exist.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.redrives.retain(keep);
    }

    /// The shared cluster for these settings.
    pub fn shared(&self, settings: &Settings) -> Arc<Shared> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        clusters
            .entry(settings.clone())
            .or_insert_with(|| {
                Arc::new(Shared {
                    cluster: Arc::new(Cluster::new(settings.clone())),
                    state: tokio::sync::Mutex::default(),
                })
            })
            .clone()
    }

    /// Clusters (distinct settings and logins) in use.
    pub fn cluster_count(&self) -> usize {
        self.clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Traffic of every cluster client so far.
    pub fn traffic(&self) -> wire::Traffic {
        let clusters: Vec<Arc<Shared>> = self
            .clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut t = wire::Traffic::default();
        for c in clusters {
            t.add(&c.cluster.traffic());
        }
        t
    }

    /// Read `target` from a round at most `max_age` old, making one if needed.
    pub async fn read(
        &self,
        target: &KafkaTarget,
        max_age: Duration,
    ) -> Result<KafkaReading, SourceError> {
        let shared = self.shared(&target.settings);
        shared.read(target, max_age).await
    }
}

/// A fresh read (one round unless another caller's is under a second old).
impl Source for KafkaApi {
    type Target = KafkaTarget;

    async fn observe(&self, target: &KafkaTarget) -> Result<Observation, SourceError> {
        Ok(self
            .read(target, Duration::from_secs(1))
            .await?
            .observation(target.cap))
    }
}

impl Shared {
    pub async fn read(
        &self,
        target: &KafkaTarget,
        max_age: Duration,
    ) -> Result<KafkaReading, SourceError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        for t in target.topics.iter().chain(target.dead_letter_topic.iter()) {
            state.wanted.topics.insert(t.clone(), now);
        }
        let entry = state
            .wanted
            .groups
            .entry(target.group.clone())
            .or_insert_with(|| (BTreeSet::new(), now));
        entry.0.extend(target.topics.iter().cloned());
        entry.1 = now;
        let fresh = state
            .snapshot
            .as_ref()
            .filter(|s| now.duration_since(s.taken) <= max_age && s.covers(target))
            .cloned();
        let snapshot = match fresh {
            Some(s) => s,
            None => {
                state
                    .wanted
                    .topics
                    .retain(|_, at| now.duration_since(*at) < FORGET_AFTER);
                state
                    .wanted
                    .groups
                    .retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
                let s = Arc::new(round(&self.cluster, &mut state).await);
                state.snapshot = Some(s.clone());
                s
            }
        };
        let endpoint = self.cluster.settings().label();
        if let Some(e) = &snapshot.failure {
            return Err(e.clone());
        }
        let mut parts = Vec::new();
        let mut topics = Vec::new();
        let none = HashMap::new();
        let committed = match snapshot.groups.get(&target.group) {
            Some(Ok(c)) => c,
            // An unknown group has no offsets: the reset policy below decides.
            Some(Err(SourceError::KafkaGroupHasNoOffsets { .. })) => &none,
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(SourceError::Protocol {
                    endpoint,
                    detail: format!("group {:?} was not read", target.group),
                });
            }
        };
        for t in &target.topics {
            let offsets = match snapshot.topics.get(t) {
                Some(Ok(o)) => o,
                Some(Err(e)) => return Err(e.clone()),
                None => {
                    return Err(SourceError::Protocol {
                        endpoint,
                        detail: format!("topic {t:?} was not read"),
                    });
                }
            };
            topics.push((
                t.clone(),
                i32::try_from(offsets.partitions.len()).unwrap_or(i32::MAX),
            ));
            for (p, (start, end)) in &offsets.partitions {
                parts.push(PartitionOffsets {
                    topic: t.clone(),
                    partition: *p,
                    log_start: *start,
                    log_end: *end,
                    committed: committed.get(&(t.clone(), *p)).copied().filter(|c| *c >= 0),
                });
            }
        }
        let summary = model::lag(&parts, target.offset_reset);
        if summary.partitions > 0
            && summary.without_commit == summary.partitions
            && target.offset_reset == OffsetReset::Latest
        {
            return Err(SourceError::KafkaGroupHasNoOffsets {
                endpoint,
                group: target.group.clone(),
                topics: target.topics.join(","),
            });
        }
        let progress = Progress::of(&parts, snapshot.at);
        let key = (target.group.clone(), target.topics.clone());
        let (produce_rate, consume_rate) = match state.progress.get(&key).copied() {
            Some(r) if r.last.at == progress.at => (r.produce, r.consume),
            Some(r) => {
                let (p, c) = model::rates(&r.last, &progress, MIN_RATE_GAP);
                if p.is_none() && c.is_none() && r.last.at.duration_since(progress.at).is_zero() {
                    (r.produce, r.consume)
                } else {
                    state.progress.insert(
                        key,
                        RateState {
                            last: progress,
                            produce: p,
                            consume: c,
                        },
                    );
                    (p, c)
                }
            }
            None => {
                state.progress.insert(
                    key,
                    RateState {
                        last: progress,
                        produce: None,
                        consume: None,
                    },
                );
                (None, None)
            }
        };
        let dead_letter = target
            .dead_letter_topic
            .as_ref()
            .and_then(|d| snapshot.topics.get(d).cloned());
        Ok(KafkaReading {
            summary,
            produce_rate,
            consume_rate,
            topics,
            dead_letter,
            observed_at: snapshot.at,
        })
    }
}

/// Map a wire failure to a source error.
pub fn source_error(e: WireError, endpoint: &str) -> SourceError {
    let endpoint = endpoint.to_string();
    match e {
        WireError::Dns { detail, .. } => SourceError::Dns { endpoint, detail },
        WireError::Connect { addr, detail } => SourceError::Unreachable {
            endpoint,
            detail: format!("{addr}: {detail}"),
        },
        WireError::NoBroker(detail) => SourceError::Unreachable { endpoint, detail },
        WireError::Timeout { after, .. } => SourceError::Timeout { endpoint, after },
        WireError::AuthFailed { .. } => SourceError::Unauthorized { endpoint },
        WireError::Config(detail) => SourceError::InvalidConfig(detail),
        WireError::Tls { detail, .. } => SourceError::Tls { endpoint, detail },
        other => SourceError::Protocol {
            endpoint,
            detail: other.to_string(),
        },
    }
}

/// Kafka error code → a source error about `what`.
fn broker_error(code: i16, endpoint: &str, what: &str) -> SourceError {
    let endpoint = endpoint.to_string();
    match code {
        29..=31 => SourceError::Forbidden {
            endpoint,
            detail: format!("{what}: {}", code_name(code)),
        },
        _ => SourceError::Protocol {
            endpoint,
            detail: format!("{what}: {}", code_name(code)),
        },
    }
}

/// `UnknownTopicOrPartition (3)`.
pub fn code_name(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => "no error".to_string(),
    }
}

/// Read every wanted topic and group once.
async fn round(cluster: &Cluster, state: &mut RoundState) -> Snapshot {
    let endpoint = cluster.settings().label();
    let at = Timestamp::now();
    let topics: BTreeSet<String> = state.wanted.topics.keys().cloned().collect();
    let mut snap = Snapshot {
        taken: Instant::now(),
        at,
        topics: HashMap::new(),
        groups: HashMap::new(),
        failure: None,
    };
    let meta = match metadata(cluster, &topics).await {
        Ok(m) => m,
        Err(e) => {
            snap.failure = Some(e);
            snap.taken = Instant::now();
            return snap;
        }
    };
    // Partitions by leader.
    let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, parts) in &meta.topics {
        match parts {
            Ok(ps) => {
                for (p, leader) in ps {
                    by_leader
                        .entry(*leader)
                        .or_default()
                        .push((topic.clone(), *p));
                }
                snap.topics.insert(
                    topic.clone(),
                    Ok(TopicOffsets {
                        partitions: BTreeMap::new(),
                    }),
                );
            }
            Err(e) => {
                snap.topics.insert(topic.clone(), Err(e.clone()));
            }
        }
    }
    let reads = by_leader.iter().map(|(leader, parts)| async move {
        let ends = list_offsets(cluster, *leader, parts, -1).await;
        let starts = match &ends {
            Ok(_) => list_offsets(cluster, *leader, parts, -2).await,
            Err(e) => Err(e.clone()),
        };
        (parts, ends, starts)
    });
    for (parts, ends, starts) in futures::future::join_all(reads).await {
        match (ends, starts) {
            (Ok(ends), Ok(starts)) => {
                for (topic, p) in parts {
                    let key = (topic.clone(), *p);
                    let r = match (ends.get(&key), starts.get(&key)) {
                        (Some(Ok(e)), Some(Ok(s))) => Ok((*s, *e)),
                        (Some(Err(code)), _) | (_, Some(Err(code))) => Err(*code),
                        _ => Err(-1),
                    };
                    if let Some(Ok(t)) = snap.topics.get_mut(topic) {
                        match r {
                            Ok(v) => {
                                t.partitions.insert(*p, v);
                            }
                            Err(code) => {
                                snap.topics.insert(
                                    topic.clone(),
                                    Err(broker_error(
                                        code,
                                        &endpoint,
                                        &format!("offsets of {topic}/{p}"),
                                    )),
                                );
                            }
                        }
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                for (topic, _) in parts {
                    snap.topics.insert(topic.clone(), Err(e.clone()));
                }
            }
        }
    }
    // Groups and their partitions.
    let groups: Vec<GroupPartitions> = state
        .wanted
        .groups
        .iter()
        .map(|(g, (ts, _))| {
            let mut parts = BTreeMap::new();
            for t in ts {
                if let Some(Ok(o)) = snap.topics.get(t) {
                    parts.insert(t.clone(), o.partitions.keys().copied().collect());
                }
            }
            (g.clone(), parts)
        })
        .collect();
    for attempt in 0..2 {
        let pending: Vec<&GroupPartitions> = groups
            .iter()
            .filter(|(g, _)| {
                attempt == 0
                    || matches!(snap.groups.get(g), Some(Err(SourceError::Protocol { .. })))
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        let names: Vec<String> = pending.iter().map(|(g, _)| g.clone()).collect();
        if let Err(e) = coordinators(cluster, state, &names).await {
            for g in &names {
                snap.groups.insert(g.clone(), Err(e.clone()));
            }
            break;
        }
        let mut by_coord: BTreeMap<i32, Vec<&GroupPartitions>> = BTreeMap::new();
        for g in pending {
            match state.coordinators.get(&g.0) {
                Some(node) => by_coord.entry(*node).or_default().push(g),
                None => {
                    snap.groups.insert(
                        g.0.clone(),
                        Err(SourceError::Protocol {
                            endpoint: endpoint.clone(),
                            detail: format!("no coordinator for group {:?}", g.0),
                        }),
                    );
                }
            }
        }
        let fetches = by_coord
            .into_iter()
            .map(|(node, gs)| async move { (gs.clone(), offset_fetch(cluster, node, &gs).await) });
        for (gs, res) in futures::future::join_all(fetches).await {
            match res {
                Ok(per_group) => {
                    for (g, r) in per_group {
                        if let Err(SourceError::Protocol { .. }) = &r {
                            // Moved coordinator: look it up again next attempt.
                            state.coordinators.remove(&g);
                        }
                        snap.groups.insert(g, r);
                    }
                }
                Err(e) => {
                    for (g, _) in gs {
                        state.coordinators.remove(g);
                        snap.groups.insert(g.clone(), Err(e.clone()));
                    }
                }
            }
        }
    }
    snap.taken = Instant::now();
    snap
}

/// Topics → partitions and their leaders.
pub struct Meta {
    pub topics: BTreeMap<String, Result<Vec<(i32, i32)>, SourceError>>,
    pub controller: Option<i32>,
}

/// One `Metadata` request for these topics; remembers the brokers.
pub async fn metadata(cluster: &Cluster, topics: &BTreeSet<String>) -> Result<Meta, SourceError> {
    let endpoint = cluster.settings().label();
    let mut req = MetadataRequest::default();
    req.topics = Some(
        topics
            .iter()
            .map(|t| {
                let mut mt = MetadataRequestTopic::default();
                mt.name = Some(TopicName(sb(t)));
                mt
            })
            .collect(),
    );
    req.allow_auto_topic_creation = false;
    let (resp, _) = cluster
        .call(Route::Any, &req)
        .await
        .map_err(|e| source_error(e, &endpoint))?;
    cluster.set_brokers(
        resp.brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))),
    );
    let mut out = BTreeMap::new();
    for t in &resp.topics {
        let Some(name) = t.name.as_ref().map(|n| n.0.as_str().to_string()) else {
            continue;
        };
        let r = match t.error_code {
            0 => {
                let mut parts = Vec::new();
                let mut problem = None;
                for p in &t.partitions {
                    if p.leader_id.0 < 0 && problem.is_none() {
                        problem = Some(SourceError::Protocol {
                            endpoint: endpoint.clone(),
                            detail: format!(
                                "partition {name}/{} has no leader ({})",
                                p.partition_index,
                                code_name(p.error_code)
                            ),
                        });
                    }
                    parts.push((p.partition_index, p.leader_id.0));
                }
                match problem {
                    Some(e) => Err(e),
                    None if parts.is_empty() => Err(SourceError::KafkaTopicNotFound {
                        endpoint: endpoint.clone(),
                        topic: name.clone(),
                    }),
                    None => Ok(parts),
                }
            }
            3 => Err(SourceError::KafkaTopicNotFound {
                endpoint: endpoint.clone(),
                topic: name.clone(),
            }),
            code => Err(broker_error(code, &endpoint, &format!("topic {name:?}"))),
        };
        out.insert(name, r);
    }
    for t in topics {
        out.entry(t.clone()).or_insert_with(|| {
            Err(SourceError::KafkaTopicNotFound {
                endpoint: endpoint.clone(),
                topic: t.clone(),
            })
        });
    }
    Ok(Meta {
        topics: out,
        controller: (resp.controller_id.0 >= 0).then_some(resp.controller_id.0),
    })
}

type OffsetsByPartition = HashMap<(String, i32), Result<i64, i16>>;

/// One `ListOffsets` to `leader` for these partitions: `-1` latest, `-2` earliest.
pub async fn list_offsets(
    cluster: &Cluster,
    leader: i32,
    parts: &[(String, i32)],
    timestamp: i64,
) -> Result<OffsetsByPartition, SourceError> {
    let endpoint = cluster.settings().label();
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = 0;
    req.topics = by_topic
        .iter()
        .map(|(t, ps)| {
            let mut lt = ListOffsetsTopic::default();
            lt.name = TopicName(sb(t));
            lt.partitions = ps
                .iter()
                .map(|p| {
                    let mut lp = ListOffsetsPartition::default();
                    lp.partition_index = *p;
                    lp.current_leader_epoch = -1;
                    lp.timestamp = timestamp;
                    lp
                })
                .collect();
            lt
        })
        .collect();
    let (resp, _) = cluster
        .call(Route::Node(leader), &req)
        .await
        .map_err(|e| source_error(e, &endpoint))?;
    let mut out = HashMap::new();
    for t in resp.topics {
        let name = t.name.0.as_str().to_string();
        for p in t.partitions {
            let v = if p.error_code == 0 {
                Ok(p.offset)
            } else {
                Err(p.error_code)
            };
            out.insert((name.clone(), p.partition_index), v);
        }
    }
    Ok(out)
}

/// Find coordinators for groups not yet known.
async fn coordinators(
    cluster: &Cluster,
    state: &mut RoundState,
    groups: &[String],
) -> Result<(), SourceError> {
    let missing: Vec<String> = groups
        .iter()
        .filter(|g| !state.coordinators.contains_key(*g))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (g, node) in find_coordinators(cluster, &missing).await? {
        state.coordinators.insert(g, node);
    }
    Ok(())
}

/// `FindCoordinator` for groups (one batched request on v4+, else one per group).
pub async fn find_coordinators(
    cluster: &Cluster,
    groups: &[String],
) -> Result<Vec<(String, i32)>, SourceError> {
    let endpoint = cluster.settings().label();
    let wire = |e| source_error(e, &endpoint);
    let v = cluster
        .version::<FindCoordinatorRequest>(Route::Any)
        .await
        .map_err(wire)?;
    let mut out = Vec::new();
    if v >= 4 {
        let mut req = FindCoordinatorRequest::default();
        req.key_type = 0;
        req.coordinator_keys = groups.iter().map(|g| sb(g)).collect();
        let (resp, _) = cluster.call(Route::Any, &req).await.map_err(wire)?;
        for c in resp.coordinators {
            if c.error_code != 0 {
                return Err(broker_error(
                    c.error_code,
                    &endpoint,
                    &format!("coordinator of group {:?}", c.key.as_str()),
                ));
            }
            cluster.set_brokers([(c.node_id.0, format!("{}:{}", c.host.as_str(), c.port))]);
            out.push((c.key.as_str().to_string(), c.node_id.0));
        }
        return Ok(out);
    }
    for g in groups {
        let mut req = FindCoordinatorRequest::default();
        req.key = sb(g);
        let (resp, _) = cluster.call(Route::Any, &req).await.map_err(wire)?;
        if resp.error_code != 0 {
            return Err(broker_error(
                resp.error_code,
                &endpoint,
                &format!("coordinator of group {g:?}"),
            ));
        }
        cluster.set_brokers([(
            resp.node_id.0,
            format!("{}:{}", resp.host.as_str(), resp.port),
        )]);
        out.push((g.clone(), resp.node_id.0));
    }
    Ok(out)
}

type GroupOffsets = Result<HashMap<(String, i32), i64>, SourceError>;
type GroupPartitions = (String, BTreeMap<String, Vec<i32>>);

/// Committed offsets of several groups held by one coordinator: one request on v8+, one
/// per group before.
pub async fn offset_fetch(
    cluster: &Cluster,
    coordinator: i32,
    groups: &[&GroupPartitions],
) -> Result<Vec<(String, GroupOffsets)>, SourceError> {
    let endpoint = cluster.settings().label();
    let wire = |e| source_error(e, &endpoint);
    let route = Route::Node(coordinator);
    let v = cluster
        .version::<OffsetFetchRequest>(route)
        .await
        .map_err(wire)?;
    let mut out = Vec::new();
    if v >= 8 {
        let mut req = OffsetFetchRequest::default();
        req.groups = groups
            .iter()
            .map(|(g, topics)| {
                let mut rg = OffsetFetchRequestGroup::default();
                rg.group_id = GroupId(sb(g));
                rg.topics = Some(
                    topics
                        .iter()
                        .map(|(t, ps)| {
                            let mut rt = OffsetFetchRequestTopics::default();
                            rt.name = TopicName(sb(t));
                            rt.partition_indexes = ps.clone();
                            rt
                        })
                        .collect(),
                );
                rg
            })
            .collect();
        let (resp, _) = cluster.call(route, &req).await.map_err(wire)?;
        for rg in resp.groups {
            let g = rg.group_id.0.as_str().to_string();
            let parts = rg.topics.iter().flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let topic = t.name.0.as_str().to_string();
                    (topic, p.partition_index, p.committed_offset, p.error_code)
                })
            });
            let r = group_offsets(rg.error_code, parts, &endpoint, &g);
            out.push((g, r));
        }
        return Ok(out);
    }
    for (g, topics) in groups.iter().map(|x| (&x.0, &x.1)) {
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(sb(g));
        req.topics = Some(
            topics
                .iter()
                .map(|(t, ps)| {
                    let mut rt = OffsetFetchRequestTopic::default();
                    rt.name = TopicName(sb(t));
                    rt.partition_indexes = ps.clone();
                    rt
                })
                .collect(),
        );
        let (resp, _) = cluster.call(route, &req).await.map_err(wire)?;
        let parts = resp.topics.iter().flat_map(|t| {
            t.partitions.iter().map(|p| {
                let topic = t.name.0.as_str().to_string();
                (topic, p.partition_index, p.committed_offset, p.error_code)
            })
        });
        out.push((
            g.clone(),
            group_offsets(resp.error_code, parts, &endpoint, g),
        ));
    }
    Ok(out)
}

/// A group's committed offsets from `(topic, partition, offset, error)` of an answer; an
/// unknown partition (3) just has none.
fn group_offsets(
    group_code: i16,
    parts: impl Iterator<Item = (String, i32, i64, i16)>,
    endpoint: &str,
    group: &str,
) -> GroupOffsets {
    let mut m = HashMap::new();
    let mut err = (group_code != 0).then_some(group_code);
    for (topic, partition, offset, code) in parts {
        if code != 0 && code != 3 {
            err.get_or_insert(code);
        }
        m.insert((topic, partition), offset);
    }
    match err {
        Some(code) => Err(group_error(code, endpoint, group)),
        None => Ok(m),
    }
}

fn group_error(code: i16, endpoint: &str, group: &str) -> SourceError {
    match code {
        // Unknown group: no offsets (reported by the caller when it matters).
        69 => SourceError::KafkaGroupHasNoOffsets {
            endpoint: endpoint.to_string(),
            group: group.to_string(),
            topics: String::new(),
        },
        30 => SourceError::Forbidden {
            endpoint: endpoint.to_string(),
            detail: format!("not authorized to read group {group:?}"),
        },
        _ => SourceError::Protocol {
            endpoint: endpoint.to_string(),
            detail: format!("offsets of group {group:?}: {}", code_name(code)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_errors_map_to_source_reasons() {
        let e = "kafka://k:9092";
        let cases = [
            (
                WireError::Dns {
                    addr: "x".into(),
                    detail: "nx".into(),
                },
                "HostNotFound",
            ),
            (
                WireError::Connect {
                    addr: "x".into(),
                    detail: "refused".into(),
                },
                "Unreachable",
            ),
            (
                WireError::Timeout {
                    addr: "x".into(),
                    after: Duration::from_secs(5),
                },
                "Timeout",
            ),
            (
                WireError::AuthFailed {
                    addr: "x".into(),
                    detail: "bad".into(),
                },
                "Unauthorized",
            ),
            (
                WireError::Closed {
                    addr: "x".into(),
                    during: String::new(),
                },
                "ProtocolError",
            ),
        ];
        for (w, reason) in cases {
            assert_eq!(source_error(w, e).reason(), reason);
        }
        assert_eq!(broker_error(29, e, "t").reason(), "Forbidden");
        assert_eq!(code_name(3), "UnknownTopicOrPartition (3)");
    }

    #[test]
    fn reading_becomes_an_observation_with_the_cap() {
        let summary = model::lag(
            &[
                PartitionOffsets {
                    topic: "t".into(),
                    partition: 0,
                    log_start: 0,
                    log_end: 3000,
                    committed: Some(0),
                },
                PartitionOffsets {
                    topic: "t".into(),
                    partition: 1,
                    log_start: 0,
                    log_end: 3000,
                    committed: Some(0),
                },
            ],
            OffsetReset::Latest,
        );
        let r = KafkaReading {
            summary,
            produce_rate: Some(10.0),
            consume_rate: Some(100.0),
            topics: vec![("t".into(), 2)],
            dead_letter: None,
            observed_at: Timestamp::UNIX_EPOCH,
        };
        let o = r.observation(CapMode::Partitions);
        assert_eq!(o.backlog, 6000);
        assert_eq!(o.replica_cap.map(|c| c.max), Some(2));
        assert_eq!(r.time_lag(), Some(60.0));
        assert!(r.observation(CapMode::None).replica_cap.is_none());
    }
}
