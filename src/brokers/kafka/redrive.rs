//! Copying a dead-letter topic back to the source topic, once per `redrive.requestId`.
//!
//! A redrive copies the records the dead-letter topic holds when the request starts (its
//! end offsets then are the *stop offsets*), partition by partition, in batches:
//!
//! 1. fetch a batch from the dead-letter partition (committed records only);
//! 2. journal it in the status: the batch's offsets and, for each target partition it will
//!    touch, that partition's end offset now;
//! 3. produce it with an idempotent producer (`acks=all`; a retried batch keeps its sequence,
//!    so the broker never stores it twice), keeping key, value and headers and adding
//!    `nerite-redrive-request` and `nerite-redrive-origin: <topic>/<partition>/<offset>`;
//!    keyed records go to `murmur2(key) mod partitions` like the Java client's;
//! 4. commit the batch's end in the consumer group `nerite-redrive.<namespace>.<name>.<id>`,
//!    which nerite owns: that group *is* the progress.
//!
//! Nothing is ever deleted from the dead-letter topic, so no interruption can lose a record.
//! After a restart the committed offset says where to go on; a journaled batch beyond it may
//! or may not have reached the target, so nerite reads the target partitions from the
//! journaled end offsets, finds the records already copied by their origin header, and
//! copies only the rest (`skippedAlreadyCopied`); a journaled batch the commit already covers
//! (stopped between the commit and the status write that counts it) is counted by its copies
//! found on the target. Only when that check is impossible (the
//! target's retention already removed the journaled range) are records copied again and
//! counted in `duplicates`. Records the target refuses (too large, invalid) are counted in
//! `failed` with their offsets and stay in the dead-letter topic.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::model::partition_for_key;
use super::records::{self, Outgoing, Produced, Producer};
use super::wire::Cluster;
use super::{find_coordinators, list_offsets, metadata, offset_fetch};
use crate::brokers::jobs::{self, CancelFlag, FINISHED, INTERRUPTED, Jobs};
use crate::core::conditions as status;
use crate::core::error::SourceError;
use crate::core::leadership::Guard;
use crate::kubeio::KubeIo;
use crate::spec::api::{
    KafkaRedriveJournal, KafkaRedriveStatus, RedrivePhase, RedriveProgress, ScaledConsumer,
};
use crate::spec::redrive as vocab;

/// Field manager of the redrive's status writes.
pub const FIELD_MANAGER: &str = "nerite-redrive";
/// Records per batch (one journal entry, one commit).
pub const BATCH: usize = 500;
/// Header naming the request that copied a record.
pub const REQUEST_HEADER: &str = "nerite-redrive-request";
/// Header naming where a copied record came from: `<topic>/<partition>/<offset>`.
pub const ORIGIN_HEADER: &str = "nerite-redrive-origin";
/// Header keeping the record's original timestamp (the copy gets the time of the copy, so
/// the target's time-based retention does not remove it at once).
pub const TIMESTAMP_HEADER: &str = "nerite-redrive-original-timestamp";
/// Refused record offsets kept in the status.
const MAX_FAILED: usize = 100;
/// Transient failures in a row before a run is interrupted (a later tick resumes it).
const MAX_RETRIES: u32 = 5;
/// Bytes per fetch.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;

/// The consumer group holding a redrive's progress.
pub fn group_name(namespace: &str, name: &str, request_id: &str) -> String {
    format!("nerite-redrive.{namespace}.{name}.{request_id}")
}

/// Redrives running in this process.
pub type Redrives = Jobs;

/// What a redrive needs from the tick.
pub struct Request<'a> {
    pub sc: &'a ScaledConsumer,
    pub key: &'a str,
    pub kube: &'a Arc<KubeIo>,
    /// Settings of the cluster (a private client is built from them).
    pub settings: &'a super::wire::Settings,
    pub dead_letter_topic: &'a str,
    pub target_topic: &'a str,
    pub request_id: &'a str,
    pub rate: Option<u32>,
    pub cancel: bool,
}

/// Start, resume or leave the requested redrive.
pub fn supervise(jobs: &Jobs, r: Request<'_>) -> jobs::Step {
    let prev =
        r.sc.status
            .as_ref()
            .and_then(|s| s.kafka.as_ref())
            .and_then(|k| k.redrive.clone());
    let recorded = prev
        .as_ref()
        .map(|p| (p.progress.request_id.as_str(), p.progress.phase.is_active()));
    let namespace = r.sc.metadata.namespace.clone().unwrap_or_default();
    let name = r.sc.metadata.name.clone().unwrap_or_default();
    let run_of = |resume: bool, cancel: CancelFlag, guard: Guard| {
        let progress = match (resume, prev.clone()) {
            (true, Some(p)) => p,
            (_, earlier) => KafkaRedriveStatus {
                progress: RedriveProgress::pending(
                    r.request_id,
                    &status::rfc3339(Timestamp::now()),
                ),
                target_topic: r.target_topic.to_string(),
                group: group_name(&namespace, &name, r.request_id),
                // What earlier requests copied is not copied again.
                start_offsets: earlier.map(|e| e.stop_offsets).unwrap_or_default(),
                ..KafkaRedriveStatus::default()
            },
        };
        let run = Run {
            sc: r.sc.clone(),
            kube: r.kube.clone(),
            cluster: Cluster::new(r.settings.clone()),
            dlq: r.dead_letter_topic.to_string(),
            rate: r.rate,
            cancel,
            guard,
            progress,
            producer: None,
            leaders: HashMap::new(),
            target_partitions: 0,
            written: 0,
            began: Instant::now(),
            last_refusal: None,
        };
        run.run(resume)
    };
    jobs.supervise(
        r.key,
        r.request_id,
        r.cancel,
        recorded,
        &r.kube.guard(),
        run_of,
    )
}

/// Why a run stopped before its end.
#[derive(Debug)]
enum Stop {
    /// Terminal: recorded as `Failed` with this reason and message.
    Fail(&'static str, String),
    /// Transient: the status stays `Running` and a later tick resumes.
    Interrupted(String),
    /// This replica no longer leads in the term the run started in: stop at once, write
    /// nothing; the leader resumes from the recorded progress.
    LostLeadership,
}

impl From<SourceError> for Stop {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::KafkaTopicNotFound { .. }
            | SourceError::Forbidden { .. }
            | SourceError::Unauthorized { .. }
            | SourceError::InvalidConfig(_) => Stop::Fail(e.reason(), e.to_string()),
            other => Stop::Interrupted(other.to_string()),
        }
    }
}

struct Run {
    sc: ScaledConsumer,
    kube: Arc<KubeIo>,
    cluster: Cluster,
    dlq: String,
    rate: Option<u32>,
    cancel: CancelFlag,
    /// The right to act this run started with; checked before every produce, commit and
    /// write.
    guard: Guard,
    progress: KafkaRedriveStatus,
    producer: Option<Producer>,
    /// (topic, partition) → leader.
    leaders: HashMap<(String, i32), i32>,
    target_partitions: i32,
    /// Records written by this run, and when it began (for the rate limit).
    written: u64,
    began: Instant,
    /// Why the target last refused a record in this run.
    last_refusal: Option<String>,
}

impl Run {
    async fn run(mut self, mut resumed: bool) -> u8 {
        // The watch cache this run was planned from may be behind (a new leader's cache
        // lags; a replica that was stalled has an old one): decide on the record as the API
        // server has it, so progress another leader recorded is never reset or overwritten.
        let recorded = match self.kube.current(&self.sc).await {
            Ok(sc) => sc.status.and_then(|s| s.kafka).and_then(|k| k.redrive),
            Err(e) => {
                tracing::warn!(error = %e, "redrive: cannot read the recorded progress; will retry");
                return INTERRUPTED;
            }
        };
        let id = self.progress.progress.request_id.clone();
        match recorded {
            Some(r) if r.progress.request_id == id && r.progress.phase.is_active() => {
                self.progress = r;
                resumed = true;
            }
            Some(r) if r.progress.request_id == id => return FINISHED,
            _ if resumed => return INTERRUPTED,
            // Another request still runs: one at a time.
            Some(r) if r.progress.phase.is_active() => return INTERRUPTED,
            // What the previous request copied is not copied again.
            Some(r) => self.progress.start_offsets = r.stop_offsets,
            None => {}
        }
        let result = self.run_inner(resumed).await;
        match result {
            Ok(()) => {}
            Err(Stop::LostLeadership) => {
                tracing::info!(request = %self.progress.progress.request_id, "redrive stopped: this replica no longer leads; the leader resumes it from the recorded progress");
                return INTERRUPTED;
            }
            Err(Stop::Interrupted(why)) => {
                tracing::warn!(request = %self.progress.progress.request_id, reason = %why, "redrive interrupted; a later tick resumes it");
                // Resumable: the phase stays (Running), with why.
                self.progress.progress.message = Some(format!("interrupted, resuming: {why}"));
                let _ = self.checkpoint().await;
                return INTERRUPTED;
            }
            Err(Stop::Fail(reason, why)) => {
                self.progress.progress.phase = RedrivePhase::Failed;
                self.progress.progress.reason = Some(reason.to_string());
                self.progress.progress.message = Some(why);
            }
        }
        self.progress.progress.finished_at = Some(status::rfc3339(Timestamp::now()));
        self.progress.journal = None;
        if let Err(e) = self.checkpoint().await {
            tracing::warn!(error = %e, "redrive: cannot record the end; will retry");
            return INTERRUPTED;
        }
        let p = &self.progress;
        let note = format!(
            "{} of {} to {}; {} failed, {} duplicates{}",
            vocab::describe(&p.progress),
            p.to_copy,
            p.target_topic,
            p.failed,
            p.duplicates,
            if p.skipped_already_copied > 0 {
                format!(
                    ", {} found already copied after an interruption",
                    p.skipped_already_copied
                )
            } else {
                String::new()
            },
        );
        if let Some((reason, warning)) = vocab::outcome_event(p.progress.phase) {
            self.event(warning || p.failed > 0, reason, note).await;
        }
        FINISHED
    }

    async fn checkpoint(&self) -> crate::kubeio::error::Result<()> {
        self.kube
            .merge_status(
                &self.guard,
                &self.sc,
                FIELD_MANAGER,
                redrive_patch(&self.progress),
            )
            .await
    }

    async fn checkpoint_or_stop(&self) -> Result<(), Stop> {
        match self.checkpoint().await {
            Ok(()) => Ok(()),
            Err(crate::kubeio::error::Error::NotLeader) => Err(Stop::LostLeadership),
            Err(e) => Err(Stop::Interrupted(format!("cannot record progress: {e}"))),
        }
    }

    async fn event(&self, warning: bool, reason: &str, note: String) {
        self.kube
            .job_event(
                &self.guard,
                &self.sc,
                warning,
                reason,
                vocab::EVENT_ACTION,
                note,
            )
            .await;
    }

    /// Go on only while this run's right to act holds.
    fn fence(&self) -> Result<(), Stop> {
        if self.guard.holds() {
            Ok(())
        } else {
            Err(Stop::LostLeadership)
        }
    }

    /// Partitions and leaders of the dead-letter and target topics.
    async fn refresh(&mut self) -> Result<BTreeMap<i32, i32>, Stop> {
        let topics: BTreeSet<String> = [self.dlq.clone(), self.progress.target_topic.clone()]
            .into_iter()
            .collect();
        let meta = metadata(&self.cluster, &topics).await?;
        let mut dlq_parts = BTreeMap::new();
        for (topic, parts) in meta.topics {
            let parts = parts.map_err(|e| match e {
                SourceError::KafkaTopicNotFound { .. } => Stop::Fail(e.reason(), e.to_string()),
                other => Stop::Interrupted(other.to_string()),
            })?;
            if topic == self.progress.target_topic {
                self.target_partitions = i32::try_from(parts.len()).unwrap_or(i32::MAX);
            }
            for (p, leader) in parts {
                self.leaders.insert((topic.clone(), p), leader);
                if topic == self.dlq {
                    dlq_parts.insert(p, leader);
                }
            }
        }
        Ok(dlq_parts)
    }

    fn leader(&self, topic: &str, partition: i32) -> Result<i32, Stop> {
        self.leaders
            .get(&(topic.to_string(), partition))
            .copied()
            .ok_or_else(|| Stop::Interrupted(format!("no leader known for {topic}/{partition}")))
    }

    async fn run_inner(&mut self, resumed: bool) -> Result<(), Stop> {
        let dlq_parts = self.refresh().await?;
        let group = self.progress.group.clone();
        let coordinator = find_coordinators(&self.cluster, std::slice::from_ref(&group))
            .await?
            .into_iter()
            .map(|(_, n)| n)
            .next()
            .ok_or_else(|| Stop::Interrupted("no coordinator for the redrive group".into()))?;
        let by_leader = |parts: &BTreeMap<i32, i32>| {
            let mut m: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
            for (p, l) in parts {
                m.entry(*l).or_default().push((self.dlq.clone(), *p));
            }
            m
        };
        // Log starts of the dead-letter partitions (and, on a first run, the stop offsets).
        let mut starts = BTreeMap::new();
        let mut ends = BTreeMap::new();
        for (leader, parts) in by_leader(&dlq_parts) {
            for ((_, p), o) in list_offsets(&self.cluster, leader, &parts, -2).await? {
                starts.insert(p, o.unwrap_or(0));
            }
            if self.progress.stop_offsets.is_empty() {
                for ((_, p), o) in list_offsets(&self.cluster, leader, &parts, -1).await? {
                    ends.insert(p, o.unwrap_or(0));
                }
            }
        }
        // Where this request begins: after what earlier requests copied, never before the
        // log start.
        let begin = |p: i32, starts: &BTreeMap<i32, i64>, after: &BTreeMap<String, i64>| {
            let log_start = starts.get(&p).copied().unwrap_or(0);
            after
                .get(&p.to_string())
                .copied()
                .map_or(log_start, |a| a.max(log_start))
        };
        if !resumed || self.progress.stop_offsets.is_empty() {
            self.progress.stop_offsets = ends.iter().map(|(p, o)| (p.to_string(), *o)).collect();
            let after = self.progress.start_offsets.clone();
            self.progress.start_offsets = ends
                .keys()
                .map(|p| (p.to_string(), begin(*p, &starts, &after)))
                .collect();
            self.progress.to_copy = ends
                .iter()
                .map(|(p, e)| (e - begin(*p, &starts, &self.progress.start_offsets)).max(0))
                .sum();
            self.checkpoint_or_stop().await?;
            self.event(
                false,
                vocab::EVENT_STARTED,
                format!(
                    "redrive {}: copying {} records from {} to {} (progress in group {group})",
                    self.progress.progress.request_id,
                    self.progress.to_copy,
                    self.dlq,
                    self.progress.target_topic
                ),
            )
            .await;
        } else {
            self.event(
                false,
                vocab::EVENT_RESUMED,
                format!(
                    "resuming redrive {} ({} of {} copied so far)",
                    self.progress.progress.request_id,
                    self.progress.progress.moved,
                    self.progress.to_copy
                ),
            )
            .await;
        }
        let parts: BTreeMap<String, Vec<i32>> =
            [(self.dlq.clone(), dlq_parts.keys().copied().collect())].into();
        let gp = (group.clone(), parts);
        let committed: HashMap<i32, i64> = offset_fetch(&self.cluster, coordinator, &[&gp])
            .await?
            .into_iter()
            .find(|(g, _)| *g == group)
            .map(|(_, r)| r)
            .unwrap_or_else(|| Ok(HashMap::new()))
            .or_else(|e| match e {
                SourceError::KafkaGroupHasNoOffsets { .. } => Ok(HashMap::new()),
                other => Err(other),
            })?
            .into_iter()
            .filter(|(_, o)| *o >= 0)
            .map(|((_, p), o)| (p, o))
            .collect();

        let stops: Vec<(i32, i64)> = self
            .progress
            .stop_offsets
            .iter()
            .filter_map(|(p, o)| Some((p.parse::<i32>().ok()?, *o)))
            .collect();
        let mut expired = 0i64;
        // Under a rate limit a batch holds about a second of records.
        let batch_size = self.rate.map_or(BATCH, |r| (r as usize).clamp(1, BATCH));
        for (p, stop) in stops {
            let log_start = starts.get(&p).copied().unwrap_or(0);
            let first = begin(p, &starts, &self.progress.start_offsets);
            let done = committed.get(&p).copied();
            if let Some(c) = done
                && c < log_start
            {
                // Retention removed records before they were copied.
                expired += log_start - c;
            }
            let mut pos = done.unwrap_or(first).max(first);
            // A journaled batch is never counted in the recorded progress yet (the write that
            // counts it clears the journal). Committed already: the operator stopped between
            // the commit and that write; its copies are on the target, count them now.
            if let Some(j) = self.progress.journal.clone()
                && j.partition == p
                && j.to <= pos
            {
                let (found, _) = self.already_copied(&j).await?;
                let n = i64::try_from(found.len()).unwrap_or(i64::MAX);
                self.progress.progress.moved += n;
                self.progress.skipped_already_copied += n;
                self.progress.journal = None;
            }
            // A batch journaled beyond the commit may already be on the target.
            let mut already: HashSet<i64> = HashSet::new();
            let mut unverifiable: HashSet<i64> = HashSet::new();
            let mut journal_to = pos;
            if let Some(j) = self.progress.journal.clone()
                && j.partition == p
                && j.to > pos
            {
                journal_to = j.to;
                let (found, unknown) = self.already_copied(&j).await?;
                already = found;
                unverifiable = (j.from..j.to)
                    .filter(|o| unknown && !already.contains(o))
                    .collect();
            }
            while pos < stop {
                self.fence()?;
                if self.cancel.load(Ordering::SeqCst) {
                    self.progress.progress.phase = RedrivePhase::Cancelled;
                    return Ok(());
                }
                let leader = self.leader(&self.dlq, p)?;
                let fetched = self.fetch_retrying(leader, p, pos).await?;
                let mut batch: Vec<records::Rec> = fetched
                    .records
                    .into_iter()
                    .filter(|r| r.offset >= pos && r.offset < stop)
                    .take(batch_size)
                    .collect();
                let to = match batch.last() {
                    Some(last) if batch.len() == batch_size => last.offset + 1,
                    _ => fetched
                        .next
                        .min(stop)
                        .max(batch.last().map_or(pos, |l| l.offset + 1)),
                };
                if to <= pos {
                    return Err(Stop::Interrupted(format!(
                        "no progress reading {}/{p} at offset {pos} (end {stop})",
                        self.dlq
                    )));
                }
                let skipped = batch.len();
                batch.retain(|r| !already.contains(&r.offset));
                let skipped = skipped - batch.len();
                let resent_unknown = batch
                    .iter()
                    .filter(|r| unverifiable.contains(&r.offset))
                    .count();
                let failed = self.copy(p, pos, to, &batch).await?;
                self.progress.skipped_already_copied += skipped as i64;
                self.progress.duplicates += resent_unknown as i64;
                self.progress.progress.moved += (skipped + batch.len() - failed.len()) as i64;
                self.progress.failed += failed.len() as i64;
                for o in &failed {
                    if self.progress.failed_offsets.len() < MAX_FAILED {
                        self.progress.failed_offsets.push(format!("{p}:{o}"));
                    }
                }
                self.fence()?;
                records::commit(
                    &self.cluster,
                    coordinator,
                    &group,
                    &self.dlq,
                    &[(p, to)].into(),
                )
                .await?;
                self.progress.journal = None;
                self.checkpoint_or_stop().await?;
                pos = to;
                if pos >= journal_to {
                    already.clear();
                    unverifiable.clear();
                }
            }
        }
        self.progress.progress.phase = RedrivePhase::Succeeded;
        if expired > 0 {
            self.progress.progress.message = Some(format!(
                "{expired} records were removed by the dead-letter topic's retention before they could be copied"
            ));
        } else if self.progress.failed > 0 {
            // (Replaces a note an interruption may have left.)
            self.progress.progress.message = Some(match self.last_refusal.take() {
                Some(why) => format!("last refusal: {why}"),
                None => format!(
                    "{} records refused by the target stay in the dead-letter topic",
                    self.progress.failed
                ),
            });
        } else {
            // A note left by an interruption no longer applies.
            self.progress.progress.message = None;
        }
        Ok(())
    }

    async fn fetch_retrying(
        &mut self,
        leader: i32,
        p: i32,
        pos: i64,
    ) -> Result<records::Fetched, Stop> {
        let mut failures = 0;
        let mut leader = leader;
        loop {
            match records::fetch(&self.cluster, leader, &self.dlq, p, pos, FETCH_BYTES).await {
                Ok(f) => return Ok(f),
                Err(e) => {
                    failures += 1;
                    let stop = Stop::from(e);
                    match stop {
                        Stop::Interrupted(_) if failures < MAX_RETRIES => {
                            backoff(failures).await;
                            self.refresh().await?;
                            leader = self.leader(&self.dlq, p)?;
                        }
                        other => return Err(other),
                    }
                }
            }
        }
    }

    /// Which records of a journaled batch are already on the target (by origin header), and
    /// whether some could not be checked.
    async fn already_copied(
        &mut self,
        j: &KafkaRedriveJournal,
    ) -> Result<(HashSet<i64>, bool), Stop> {
        let mut found = HashSet::new();
        let mut unknown = false;
        let target = self.progress.target_topic.clone();
        let prefix = format!("{}/{}/", self.dlq, j.partition);
        for (tp, from) in &j.target_ends {
            let Ok(tp) = tp.parse::<i32>() else { continue };
            let leader = self.leader(&target, tp)?;
            let mut pos = *from;
            loop {
                let f =
                    records::fetch(&self.cluster, leader, &target, tp, pos, FETCH_BYTES).await?;
                if f.log_start > *from {
                    unknown = true;
                }
                for r in &f.records {
                    let ours = header(r, REQUEST_HEADER)
                        == Some(self.progress.progress.request_id.as_str());
                    if let (true, Some(origin)) = (ours, header(r, ORIGIN_HEADER))
                        && let Some(o) = origin.strip_prefix(&prefix)
                        && let Ok(o) = o.parse::<i64>()
                    {
                        found.insert(o);
                    }
                }
                let end = if f.last_stable >= 0 {
                    f.last_stable
                } else {
                    f.high_watermark
                };
                if f.next <= pos || f.next >= end {
                    break;
                }
                pos = f.next;
            }
        }
        Ok((found, unknown))
    }

    /// Journal, then produce one batch. Returns the offsets the target refused.
    async fn copy(
        &mut self,
        p: i32,
        from: i64,
        to: i64,
        batch: &[records::Rec],
    ) -> Result<Vec<i64>, Stop> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let target = self.progress.target_topic.clone();
        let n = self.target_partitions.max(1);
        // Target partition of each record: by key like the Java client, else spread by offset.
        let mut by_target: BTreeMap<i32, Vec<&records::Rec>> = BTreeMap::new();
        for r in batch {
            let tp = match &r.key {
                Some(k) => partition_for_key(k, n),
                None => (r.offset.rem_euclid(i64::from(n))) as i32,
            };
            by_target.entry(tp).or_default().push(r);
        }
        // Journal: target end offsets before the batch.
        let mut target_ends = BTreeMap::new();
        let mut per_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
        for tp in by_target.keys() {
            per_leader
                .entry(self.leader(&target, *tp)?)
                .or_default()
                .push((target.clone(), *tp));
        }
        for (leader, parts) in per_leader {
            for ((_, tp), o) in list_offsets(&self.cluster, leader, &parts, -1).await? {
                let o = o.map_err(|code| {
                    Stop::Interrupted(format!(
                        "end offset of {target}/{tp}: {}",
                        super::code_name(code)
                    ))
                })?;
                target_ends.insert(tp.to_string(), o);
            }
        }
        self.progress.journal = Some(KafkaRedriveJournal {
            partition: p,
            from,
            to,
            target_ends,
        });
        self.progress.progress.phase = RedrivePhase::Running;
        self.checkpoint_or_stop().await?;

        if self.producer.is_none() {
            self.producer = Some(Producer::init(&self.cluster).await?);
        }
        let now_ms = Timestamp::now().as_millisecond();
        let mut refused = Vec::new();
        for (tp, recs) in by_target {
            let outgoing: Outgoing = recs
                .iter()
                .map(|r| {
                    let mut h = r.headers.clone();
                    h.insert(
                        records_str(REQUEST_HEADER),
                        Some(Bytes::from(self.progress.progress.request_id.clone())),
                    );
                    h.insert(
                        records_str(ORIGIN_HEADER),
                        Some(Bytes::from(format!("{}/{p}/{}", self.dlq, r.offset))),
                    );
                    h.insert(
                        records_str(TIMESTAMP_HEADER),
                        Some(Bytes::from(r.timestamp.to_string())),
                    );
                    (r.key.clone(), r.value.clone(), h, now_ms)
                })
                .collect();
            match self.produce_retrying(&target, tp, &outgoing).await? {
                Produced::Ok => self.pace(outgoing.len()).await,
                Produced::Refused(why) => {
                    // Find the records the target refuses, one by one.
                    tracing::info!(partition = tp, reason = %why, "redrive: the target refused a batch; copying it record by record");
                    for (i, one) in outgoing.iter().enumerate() {
                        match self
                            .produce_retrying(&target, tp, &vec![one.clone()])
                            .await?
                        {
                            Produced::Ok => self.pace(1).await,
                            Produced::Refused(why) => {
                                refused.push(recs[i].offset);
                                self.progress.progress.message =
                                    Some(format!("last refusal: {why}"));
                                self.last_refusal = Some(why);
                            }
                            Produced::Retry(why) => return Err(Stop::Interrupted(why)),
                        }
                    }
                }
                Produced::Retry(why) => return Err(Stop::Interrupted(why)),
            }
        }
        Ok(refused)
    }

    /// Hold the copy to `maxRecordsPerSecond` (the wait falls inside a journaled batch).
    async fn pace(&mut self, written: usize) {
        self.written += written as u64;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.written as f64 / f64::from(rate.max(1)));
            if let Some(wait) = due.checked_sub(self.began.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    async fn produce_retrying(
        &mut self,
        topic: &str,
        tp: i32,
        out: &Outgoing,
    ) -> Result<Produced, Stop> {
        let mut failures = 0;
        loop {
            self.fence()?;
            let leader = self.leader(topic, tp)?;
            let Some(producer) = self.producer.as_mut() else {
                return Err(Stop::Interrupted("no producer".into()));
            };
            let res = records::produce(&self.cluster, producer, leader, topic, tp, out).await;
            let why = match res {
                Ok(Produced::Retry(why)) => why,
                Ok(done) => return Ok(done),
                Err(e) => e.to_string(),
            };
            failures += 1;
            if failures >= MAX_RETRIES {
                return Ok(Produced::Retry(why));
            }
            backoff(failures).await;
            self.refresh().await?;
        }
    }
}

fn records_str(s: &str) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.to_string())
}

fn header<'a>(r: &'a records::Rec, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .and_then(|(_, v)| v.as_ref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

async fn backoff(failures: u32) {
    let ms = 200u64.saturating_mul(1 << failures.min(5));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The merge patch that writes `status.kafka.redrive` (cleared fields become null).
pub fn redrive_patch(p: &KafkaRedriveStatus) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        // `state`: the phase's name before v1alpha1's vocabulary change; cleared.
        for key in [
            "startedAt",
            "finishedAt",
            "message",
            "reason",
            "journal",
            "state",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
        map.entry("failedOffsets").or_insert(json!([]));
    }
    json!({ "kafka": { "redrive": v } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_clears_finished_fields() {
        let p = KafkaRedriveStatus {
            progress: RedriveProgress {
                request_id: "r1".into(),
                phase: RedrivePhase::Succeeded,
                ..RedriveProgress::default()
            },
            ..KafkaRedriveStatus::default()
        };
        let v = redrive_patch(&p);
        let r = &v["kafka"]["redrive"];
        assert_eq!(r["journal"], Value::Null);
        assert_eq!(r["message"], Value::Null);
        assert_eq!(r["failedOffsets"], json!([]));
        assert_eq!(r["phase"], "Succeeded");
        // The pre-vocabulary `state` is cleared, never written.
        assert!(r["state"].is_null() && r.get("state").is_some());
    }

    #[test]
    fn group_names_are_per_request() {
        assert_eq!(
            group_name("shop", "orders", "r1"),
            "nerite-redrive.shop.orders.r1"
        );
    }

    #[test]
    fn source_errors_split_into_fail_and_interrupt() {
        assert!(matches!(
            Stop::from(SourceError::KafkaTopicNotFound {
                endpoint: "k".into(),
                topic: "t".into()
            }),
            Stop::Fail(..)
        ));
        assert!(matches!(
            Stop::from(SourceError::Timeout {
                endpoint: "k".into(),
                after: Duration::from_secs(1)
            }),
            Stop::Interrupted(_)
        ));
    }
}
