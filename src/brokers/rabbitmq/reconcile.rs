//! RabbitMQ extras of one ScaledConsumer, once per tick: prefetch, dead-lettering, redrive.
//!
//! The controller calls [`Extras::reconcile`] after it has read the queue and decided the
//! replica count; the outcome is the `status.rabbitmq` object and the conditions
//! `DeadLetterReady`, `Redrive` and `Prefetch` (the names every broker uses:
//! [`crate::spec::redrive`]). Decisions are made by the pure modules ([`super::prefetch`],
//! [`super::deadletter`], [`super::redrive`]); broker writes go through [`super::manage`],
//! Kubernetes writes through [`crate::kubeio`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::ResourceExt;

use super::RabbitMqTarget;
use super::deadletter::{self, PlanError};
use super::manage::{ManageError, ShovelState, Vhost};
use super::poller::SharedPoller;
use super::prefetch::{self, Measurements};
use super::redrive::{self, Cancelling, Pace, Paced, Seen, Step};
use crate::core::conditions::{self as status, CondUpdate};
use crate::core::observation::Observation;
use crate::kubeio::{KubeIo, Target, TemplateEnv};
use crate::spec::api::{
    DeadLetterStatus, PrefetchStatus, REDRIVE_ANNOTATION, RabbitMqStatus, RedrivePhase,
    RedriveStatus, ScaleTargetRef, ScaledConsumer,
};
use crate::spec::redrive::{self as vocab, DEAD_LETTER_READY, LEGACY_DEAD_LETTERING, REDRIVE};
use crate::spec::validate::{Delivery, ValidDeadLetter, ValidPrefetch};

pub const PREFETCH: &str = "Prefetch";

/// Redrive statuses remembered per object ([`ObjState::written`]).
const WRITTEN_KEPT: usize = 16;

/// How often a dead-letter set-up that is in place is checked again.
const DEAD_LETTER_RECHECK: Duration = Duration::from_secs(300);
/// Shortest interval between two prefetch evaluations of one object.
const PREFETCH_EVERY: Duration = Duration::from_secs(5);

/// What one ScaledConsumer's extras need.
pub struct Inputs<'a> {
    pub sc: &'a ScaledConsumer,
    pub key: &'a str,
    pub target: &'a RabbitMqTarget,
    pub prefetch: Option<&'a ValidPrefetch>,
    pub dead_letter: Option<&'a ValidDeadLetter>,
    pub observation: Option<&'a Observation>,
    pub workload: &'a Target,
    pub workload_ref: &'a ScaleTargetRef,
    pub poll: Duration,
}

/// The status object and condition changes to merge.
#[derive(Debug, Default)]
pub struct Outcome {
    pub status: Option<RabbitMqStatus>,
    pub conditions: Vec<CondUpdate>,
    /// Condition types that no longer apply (their section was removed).
    pub remove: Vec<&'static str>,
}

#[derive(Default)]
struct ObjState {
    dl_fingerprint: Option<String>,
    dl_checked: Option<Instant>,
    dl_result: Option<Result<DeadLetterStatus, (String, String)>>,
    prefetch_checked: Option<Instant>,
    prefetch_result: Option<(PrefetchStatus, CondUpdate)>,
    /// The redrive request this process started or followed (a first look at an active one
    /// is a resume: `RedriveResumed`).
    following: Option<String>,
    /// Redrive statuses this process recorded, oldest first. A tick may read one of its own
    /// earlier writes back before the latest has arrived (the first of a tick's two writes,
    /// or the previous tick's): acting on it would count a batch twice or take a shovel that
    /// finished for one that never ran. Such a read is replaced by the latest one.
    written: VecDeque<RedriveStatus>,
    /// Area → fingerprint of the last Event, so each new problem is reported once.
    reported: HashMap<&'static str, String>,
}

/// Per-object memory of the extras, shared by every reconcile.
#[derive(Default)]
pub struct Extras {
    state: Mutex<HashMap<String, ObjState>>,
}

/// The extras of a source read through AMQP alone: there are none (prefetch, dead-lettering
/// and redrive need the management API, and validation refuses their sections). Clears what
/// a management-API source left in the status, and answers a redrive annotation with why it
/// cannot run.
pub fn amqp_only(sc: &ScaledConsumer) -> Outcome {
    let mut out = Outcome {
        status: None,
        conditions: Vec::new(),
        remove: vec![DEAD_LETTER_READY, LEGACY_DEAD_LETTERING, PREFETCH, REDRIVE],
    };
    if let Some(request) = sc
        .annotations()
        .get(REDRIVE_ANNOTATION)
        .filter(|r| !r.is_empty())
    {
        out.remove.retain(|c| *c != REDRIVE);
        out.conditions.push(CondUpdate::new(
            REDRIVE,
            false,
            "NeedsManagementApi",
            format!(
                "redrive request {request:?} not carried out: redrive moves messages with the \
                 management API's shovels, and this source reads through amqpUrl only; set \
                 managementUrl and deadLetter to redrive"
            ),
        ));
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_text() -> String {
    status::rfc3339(Timestamp::now())
}

impl Extras {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget objects that no longer exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        lock(&self.state).retain(|k, _| live(k));
    }

    /// The redrive status to act on: the stored one, unless this process has seen it before
    /// and replaced it since (a stale read of its own write), then the latest it wrote. A
    /// stored status new to this process (after a restart, or written by another leader) is
    /// acted on and remembered as such.
    fn latest_redrive(&self, key: &str, stored: Option<&RedriveStatus>) -> Option<RedriveStatus> {
        let known = lock(&self.state)
            .get(key)
            .is_some_and(|s| stored.is_some_and(|r| s.written.contains(r)));
        match stored {
            Some(_) if known => lock(&self.state)
                .get(key)
                .and_then(|s| s.written.back().cloned()),
            Some(r) => {
                self.remember(key, r);
                Some(r.clone())
            }
            None => None,
        }
    }

    /// Remember a redrive status this process recorded (or is about to).
    fn remember(&self, key: &str, r: &RedriveStatus) {
        let mut st = lock(&self.state);
        let w = &mut st.entry(key.to_owned()).or_default().written;
        if w.back() != Some(r) {
            w.push_back(r.clone());
            while w.len() > WRITTEN_KEPT {
                w.pop_front();
            }
        }
    }

    pub async fn reconcile(&self, poller: &SharedPoller, kube: &KubeIo, i: Inputs<'_>) -> Outcome {
        let mut prev =
            i.sc.status
                .as_ref()
                .and_then(|s| s.rabbitmq.clone())
                .unwrap_or_default();
        prev.redrive = self.latest_redrive(i.key, prev.redrive.as_ref());
        let mut out = Outcome {
            // Renamed to DeadLetterReady: a condition left by an earlier version goes.
            remove: vec![LEGACY_DEAD_LETTERING],
            ..Outcome::default()
        };
        let mut status = RabbitMqStatus::default();
        let vhost = match Vhost::new(poller.api(), i.target) {
            Ok(v) => v,
            // The main observation reports a bad URL already.
            Err(_) => return out,
        };

        // Dead-lettering.
        match i.dead_letter {
            Some(dl) => {
                let (st, cond) = self.dead_letter(poller, &vhost, &i, dl).await;
                status.dead_letter = st;
                self.report(kube, &i, DEAD_LETTER_READY, &cond).await;
                out.conditions.push(cond);
            }
            None => {
                out.remove.push(DEAD_LETTER_READY);
                if let Some(old) = prev.dead_letter.as_ref().and_then(|d| d.policy.clone()) {
                    if let Err(e) = vhost.delete_policy(&old).await {
                        // Keep reporting it until the policy is gone.
                        status.dead_letter = prev.dead_letter.clone();
                        let cond = CondUpdate::new(
                            DEAD_LETTER_READY,
                            false,
                            e.reason("PolicyRemovalFailed"),
                            format!("could not remove policy {old:?}: {e}"),
                        );
                        out.conditions.push(cond);
                        out.remove.pop();
                    } else {
                        kube.event(
                            i.sc,
                            false,
                            "DeadLetterPolicyRemoved",
                            "DeadLetter",
                            format!("removed policy {old:?} (the dead-letter queue and its messages stay)"),
                        )
                        .await;
                    }
                }
                let mut st = lock(&self.state);
                let s = st.entry(i.key.to_owned()).or_default();
                s.dl_fingerprint = None;
                s.dl_result = None;
            }
        }

        // Redrive (needs the dead-letter section for the queue names).
        let requested = vocab::requested(
            i.dead_letter.and_then(|d| {
                d.redrive_request
                    .as_deref()
                    .map(|id| (id, d.redrive_cancel))
            }),
            i.sc.annotations(),
            prev.redrive
                .as_ref()
                .map(|r| (r.progress.request_id.as_str(), r.progress.phase)),
        );
        match i.dead_letter {
            Some(dl) => {
                let (rd, cond) = self
                    .redrive(
                        poller,
                        kube,
                        &vhost,
                        &i,
                        dl,
                        requested.request.as_ref(),
                        prev.redrive.as_ref(),
                    )
                    .await;
                let cond = match &requested.invalid {
                    Some(problem) => Some(vocab::invalid_annotation(
                        problem,
                        rd.as_ref().map(|r| &r.progress),
                    )),
                    None => cond,
                };
                match cond {
                    Some(c) => {
                        // Phase changes have their own Events (redrive_phase_event).
                        let from_phase = rd
                            .as_ref()
                            .is_some_and(|r| vocab::condition(&r.progress) == c);
                        if !from_phase {
                            self.report(kube, &i, REDRIVE, &c).await;
                        }
                        out.conditions.push(c);
                    }
                    None => out.remove.push(REDRIVE),
                }
                if let Some(r) = &rd {
                    self.remember(i.key, r);
                }
                status.redrive = rd;
            }
            None => {
                status.redrive = prev.redrive.clone();
                let c = match (&requested.invalid, requested.request.as_ref()) {
                    (Some(problem), _) => Some(vocab::invalid_annotation(problem, None)),
                    (None, Some(r)) if requested.triggered() => Some(vocab::no_dead_letter(
                        &r.request_id,
                        "spec.source.rabbitmq.deadLetter",
                    )),
                    _ => None,
                };
                match c {
                    Some(c) => {
                        self.report(kube, &i, REDRIVE, &c).await;
                        out.conditions.push(c);
                    }
                    None => out.remove.push(REDRIVE),
                }
            }
        }

        // Prefetch.
        match i.prefetch {
            Some(pf) => {
                let (st, cond) = self
                    .prefetch(kube, &vhost, &i, pf, prev.prefetch.as_ref())
                    .await;
                status.prefetch = Some(st);
                self.report(kube, &i, PREFETCH, &cond).await;
                out.conditions.push(cond);
            }
            None => out.remove.push(PREFETCH),
        }

        if status != RabbitMqStatus::default() {
            out.status = Some(status);
        }
        out
    }

    /// An Event for a new problem (once per distinct problem) of one area.
    async fn report(&self, kube: &KubeIo, i: &Inputs<'_>, area: &'static str, c: &CondUpdate) {
        let fingerprint = format!("{}:{}:{}", c.status, c.reason, c.message);
        let new = {
            let mut st = lock(&self.state);
            let s = st.entry(i.key.to_owned()).or_default();
            let old = s.reported.insert(area, fingerprint.clone());
            old.as_deref() != Some(fingerprint.as_str())
        };
        if new && !c.status {
            tracing::warn!(object = i.key, area, reason = %c.reason, message = %c.message, "rabbitmq");
            // Event actions as on the other brokers.
            let action = match area {
                DEAD_LETTER_READY => "DeadLetter",
                REDRIVE => vocab::EVENT_ACTION,
                other => other,
            };
            kube.event(i.sc, true, &c.reason, action, c.message.clone())
                .await;
        }
    }

    async fn dead_letter(
        &self,
        poller: &SharedPoller,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        dl: &ValidDeadLetter,
    ) -> (Option<DeadLetterStatus>, CondUpdate) {
        let fingerprint = format!(
            "{:?}/{}/{}/{}/{:?}",
            i.sc.metadata.generation, dl.queue, dl.exchange, dl.routing_key, dl.max_deliveries
        );
        let due = {
            let st = lock(&self.state);
            match st.get(i.key) {
                Some(s) => {
                    s.dl_fingerprint.as_deref() != Some(fingerprint.as_str())
                        || !matches!(s.dl_result, Some(Ok(_)))
                        || s.dl_checked
                            .is_none_or(|t| t.elapsed() >= DEAD_LETTER_RECHECK)
                }
                None => true,
            }
        };
        let result = if due {
            let r = set_up_dead_letter(vhost, &i.target.queue, dl).await;
            let mut st = lock(&self.state);
            let s = st.entry(i.key.to_owned()).or_default();
            s.dl_fingerprint = Some(fingerprint);
            s.dl_checked = Some(Instant::now());
            s.dl_result = Some(r.clone());
            r
        } else {
            lock(&self.state)
                .get(i.key)
                .and_then(|s| s.dl_result.clone())
                .unwrap_or_else(|| Err(("Pending".into(), "not checked yet".into())))
        };
        match result {
            Ok(mut st) => {
                let dlq = RabbitMqTarget {
                    queue: dl.queue.clone(),
                    include_unacked: true,
                    ..i.target.clone()
                };
                st.depth = poller
                    .observe(&dlq, i.poll / 2)
                    .await
                    .ok()
                    .map(|o| o.backlog);
                let msg = format!(
                    "{} queue {:?} dead-letters to {:?} via {:?} (policy {:?}){}",
                    st.queue_type.as_deref().unwrap_or("the"),
                    i.target.queue,
                    st.queue,
                    st.exchange,
                    st.policy.as_deref().unwrap_or_default(),
                    st.message
                        .as_ref()
                        .map(|m| format!("; {m}"))
                        .unwrap_or_default()
                );
                (
                    Some(st),
                    CondUpdate::new(DEAD_LETTER_READY, true, "Configured", msg),
                )
            }
            Err((reason, message)) => (
                None,
                CondUpdate::new(DEAD_LETTER_READY, false, &reason, message),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn redrive(
        &self,
        poller: &SharedPoller,
        kube: &KubeIo,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        dl: &ValidDeadLetter,
        request: Option<&vocab::Request>,
        recorded: Option<&RedriveStatus>,
    ) -> (Option<RedriveStatus>, Option<CondUpdate>) {
        let namespace = i.sc.namespace().unwrap_or_default();
        let dlq = RabbitMqTarget {
            queue: dl.queue.clone(),
            include_unacked: true,
            ..i.target.clone()
        };
        let asked = request.map(|r| (r.request_id.as_str(), r.cancel));
        match redrive::step(asked, recorded, &namespace, &i.sc.name_any()) {
            Step::Idle => {
                let cond = recorded.map(|r| vocab::condition(&r.progress));
                (recorded.cloned(), cond)
            }
            Step::CancelBeforeStart { request_id } => {
                let depth = poller
                    .observe(&dlq, Duration::ZERO)
                    .await
                    .ok()
                    .map(|o| o.backlog);
                let done = redrive::cancelled_before_start(&request_id, depth, &now_text());
                self.follow(i, &request_id);
                redrive_phase_event(kube, i, None, &done).await;
                let c = vocab::condition(&done.progress);
                (Some(done), Some(c))
            }
            Step::Start { request_id, shovel } => {
                // Exact depth: what the shovel will move.
                let depth = poller
                    .observe(&dlq, Duration::ZERO)
                    .await
                    .ok()
                    .map(|o| o.backlog);
                let now = now_text();
                let (starting, create, count) = match (dl.max_per_second, depth) {
                    (None, _) => (
                        redrive::starting(&request_id, &shovel, depth, &now),
                        shovel.clone(),
                        None,
                    ),
                    (Some(_), None) => {
                        // A batch must not ask for more than the DLQ holds.
                        let c = CondUpdate::new(
                            REDRIVE,
                            false,
                            "RedriveWaiting",
                            format!(
                                "redrive {}: waiting for the dead-letter queue's depth to size the first batch",
                                vocab::quote(&request_id)
                            ),
                        );
                        return (recorded.cloned(), Some(c));
                    }
                    (Some(rate), Some(d)) => {
                        let size = redrive::first_batch(d, Pace::new(rate, i.poll));
                        if size == 0 {
                            let mut done = redrive::starting(&request_id, &shovel, depth, &now);
                            done.progress.phase = RedrivePhase::Succeeded;
                            done.progress.finished_at = Some(now);
                            done.progress.moved = 0;
                            done.dlq_depth_at_end = depth;
                            done.shovel = None;
                            done.creating = false;
                            done.progress.message =
                                Some("the dead-letter queue is empty: nothing to move".into());
                            self.follow(i, &request_id);
                            redrive_phase_event(kube, i, None, &done).await;
                            let c = vocab::condition(&done.progress);
                            return (Some(done), Some(c));
                        }
                        let st = redrive::starting_paced(&request_id, &shovel, d, size, &now);
                        (st, redrive::batch_shovel(&shovel, 1), Some(size))
                    }
                };
                self.follow(i, &request_id);
                let created = self
                    .record_then_create(kube, vhost, i, dl, &starting, &create, count)
                    .await;
                match created {
                    Created::Yes => {
                        kube.event(
                            i.sc,
                            false,
                            vocab::EVENT_STARTED,
                            vocab::EVENT_ACTION,
                            format!(
                                "redrive {}: shovel {create:?} moves {} messages from {:?} to {:?}{}",
                                vocab::quote(&request_id),
                                count.or(depth).map_or("the".into(), |d| d.to_string()),
                                dl.queue,
                                i.target.queue,
                                match dl.max_per_second {
                                    Some(r) => format!(
                                        " (batch 1 of a redrive at most {r} a second; {} in the queue)",
                                        depth.unwrap_or_default()
                                    ),
                                    None => String::new(),
                                }
                            ),
                        )
                        .await;
                        let running =
                            redrive::advance(&starting, &Seen::Running, depth, &now_text());
                        let c = vocab::condition(&running.progress);
                        (Some(running), Some(c))
                    }
                    Created::NotRecorded(c) => (recorded.cloned(), Some(c)),
                    Created::Refused(failed) => {
                        redrive_phase_event(kube, i, Some(&starting), &failed).await;
                        let c = vocab::condition(&failed.progress);
                        (Some(*failed), Some(c))
                    }
                    Created::Unknown(c) => (Some(starting), Some(c)),
                }
            }
            Step::Cancel => {
                let Some(rec) = recorded else {
                    return (None, None);
                };
                self.cancel(poller, kube, vhost, i, rec, &dlq).await
            }
            Step::Check { shovel, .. } => {
                let Some(rec) = recorded else {
                    return (None, None);
                };
                self.resumed(kube, i, rec).await;
                if rec.batch.is_some() {
                    return self.paced(poller, kube, vhost, i, dl, rec, &dlq).await;
                }
                let seen = match seen_shovel(vhost, &shovel, rec).await {
                    Ok(seen) => seen,
                    Err(c) => return (Some(rec.clone()), Some(c)),
                };
                let depth = poller
                    .observe(&dlq, Duration::ZERO)
                    .await
                    .ok()
                    .map(|o| o.backlog);
                let next = redrive::advance(rec, &seen, depth, &now_text());
                if let Seen::Terminated(_) = seen
                    && let Err(e) = vhost.delete_shovel(&shovel).await
                {
                    tracing::warn!(object = i.key, error = %e, "could not delete a terminated shovel");
                }
                redrive_phase_event(kube, i, Some(rec), &next).await;
                let c = vocab::condition(&next.progress);
                (Some(next), Some(c))
            }
        }
    }

    /// Remember that this process started or follows `request_id`.
    fn follow(&self, i: &Inputs<'_>, request_id: &str) {
        lock(&self.state)
            .entry(i.key.to_owned())
            .or_default()
            .following = Some(request_id.to_owned());
    }

    /// A first look at an active request this process did not start (it started before a
    /// restart or a change of leader): `RedriveResumed`.
    async fn resumed(&self, kube: &KubeIo, i: &Inputs<'_>, rec: &RedriveStatus) {
        let id = &rec.progress.request_id;
        let new = {
            let mut st = lock(&self.state);
            let s = st.entry(i.key.to_owned()).or_default();
            let new = s.following.as_deref() != Some(id.as_str());
            s.following = Some(id.clone());
            new
        };
        if new {
            kube.event(
                i.sc,
                false,
                vocab::EVENT_RESUMED,
                vocab::EVENT_ACTION,
                format!(
                    "following {} started before this operator took over{}",
                    vocab::describe(&rec.progress),
                    rec.shovel
                        .as_deref()
                        .map(|s| format!(" (shovel {s:?})"))
                        .unwrap_or_default()
                ),
            )
            .await;
        }
    }

    /// Cancel the recorded request: remove its shovel (a paced batch in progress may finish
    /// first), then record what moved.
    async fn cancel(
        &self,
        poller: &SharedPoller,
        kube: &KubeIo,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        rec: &RedriveStatus,
        dlq: &RabbitMqTarget,
    ) -> (Option<RedriveStatus>, Option<CondUpdate>) {
        let seen = match &rec.shovel {
            None => Seen::Absent,
            Some(shovel) => match seen_shovel(vhost, shovel, rec).await {
                Ok(seen) => seen,
                Err(c) => return (Some(rec.clone()), Some(c)),
            },
        };
        let shovel = match redrive::cancelling(rec, &seen, Timestamp::now()) {
            Cancelling::Wait(status) => {
                let c = vocab::condition(&status.progress);
                return (Some(*status), Some(c));
            }
            Cancelling::Remove { shovel } => shovel,
        };
        if let Some(shovel) = &shovel
            && let Err(e) = vhost.delete_shovel(shovel).await
        {
            // Still moving: try again next tick.
            return (
                Some(rec.clone()),
                Some(CondUpdate::new(
                    REDRIVE,
                    false,
                    e.reason("RedriveCancelFailed"),
                    format!(
                        "redrive {}: cannot remove shovel {shovel:?} to cancel: {e}",
                        vocab::quote(&rec.progress.request_id)
                    ),
                )),
            );
        }
        let depth = poller
            .observe(dlq, Duration::ZERO)
            .await
            .ok()
            .map(|o| o.backlog);
        let done = redrive::cancelled(rec, &seen, depth, &now_text());
        redrive_phase_event(kube, i, Some(rec), &done).await;
        let c = vocab::condition(&done.progress);
        (Some(done), Some(c))
    }

    /// Record `starting` in the status, then create `shovel` (moving `count` messages, or
    /// what the DLQ holds): the record comes first so a restart never creates it twice.
    #[allow(clippy::too_many_arguments)]
    async fn record_then_create(
        &self,
        kube: &KubeIo,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        dl: &ValidDeadLetter,
        starting: &RedriveStatus,
        shovel: &str,
        count: Option<i64>,
    ) -> Created {
        let request_id = vocab::quote(&starting.progress.request_id);
        let mut whole = i.sc.status.clone().unwrap_or_default();
        whole
            .rabbitmq
            .get_or_insert_with(RabbitMqStatus::default)
            .redrive = Some(starting.clone());
        if let Err(e) = kube.apply_status(i.sc, &whole).await {
            return Created::NotRecorded(CondUpdate::new(
                REDRIVE,
                false,
                "StatusWriteFailed",
                format!(
                    "redrive {request_id}: shovel {shovel:?} not created: cannot record it first: {e}"
                ),
            ));
        }
        self.remember(i.key, starting);
        let def = redrive::shovel_definition(
            &i.target.vhost,
            &dl.queue,
            &i.target.queue,
            dl.max_in_flight,
            count,
        );
        match vhost.put_shovel(shovel, &def).await {
            Ok(()) => Created::Yes,
            Err(e @ (ManageError::PluginMissing { .. } | ManageError::Refused { .. })) => {
                // Refused: no shovel exists, nothing moved by it.
                let mut failed = starting.clone();
                failed.progress.phase = RedrivePhase::Failed;
                failed.progress.finished_at = Some(now_text());
                failed.progress.reason = Some(e.reason("RedriveRefused").to_owned());
                failed.progress.message = Some(format!("shovel {shovel:?} not created: {e}"));
                failed.shovel = None;
                failed.creating = false;
                Created::Refused(Box::new(failed))
            }
            // Unknown whether the shovel exists: the next tick checks.
            Err(e) => Created::Unknown(CondUpdate::new(
                REDRIVE,
                false,
                e.reason("RedriveUnknown"),
                format!(
                    "redrive {request_id}: creating shovel {shovel:?} failed ({e}); checking again"
                ),
            )),
        }
    }

    /// A rate-limited redrive in progress: follow the current batch, start the next one when
    /// the rate allows.
    #[allow(clippy::too_many_arguments)]
    async fn paced(
        &self,
        poller: &SharedPoller,
        kube: &KubeIo,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        dl: &ValidDeadLetter,
        rec: &RedriveStatus,
        dlq: &RabbitMqTarget,
    ) -> (Option<RedriveStatus>, Option<CondUpdate>) {
        let seen = match &rec.shovel {
            None => Seen::Absent,
            Some(shovel) => match seen_shovel(vhost, shovel, rec).await {
                Ok(seen) => {
                    if let Seen::Terminated(_) = seen
                        && let Err(e) = vhost.delete_shovel(shovel).await
                    {
                        tracing::warn!(object = i.key, error = %e, "could not delete a terminated shovel");
                    }
                    seen
                }
                Err(c) => return (Some(rec.clone()), Some(c)),
            },
        };
        let depth = poller
            .observe(dlq, Duration::ZERO)
            .await
            .ok()
            .map(|o| o.backlog);
        // Without the limit (removed from the spec) the rest goes in one batch.
        let pace = match dl.max_per_second {
            Some(rate) => Pace::new(rate, i.poll),
            None => Pace {
                per_second: 100_000,
                batch: i64::MAX,
            },
        };
        let base = redrive::shovel_name(
            &i.sc.namespace().unwrap_or_default(),
            &i.sc.name_any(),
            &rec.progress.request_id,
        );
        match redrive::paced(rec, &base, &seen, depth, Timestamp::now(), pace) {
            Paced::Stay { status, delete } => {
                if let Some(shovel) = delete
                    && let Err(e) = vhost.delete_shovel(&shovel).await
                {
                    tracing::warn!(object = i.key, error = %e, "could not delete a waiting shovel");
                }
                redrive_phase_event(kube, i, Some(rec), &status).await;
                let c = vocab::condition(&status.progress);
                (Some(status), Some(c))
            }
            Paced::Batch {
                record,
                shovel,
                size,
            } => match self
                .record_then_create(kube, vhost, i, dl, &record, &shovel, Some(size))
                .await
            {
                Created::Yes => {
                    let running = redrive::advance(&record, &Seen::Running, depth, &now_text());
                    let c = vocab::condition(&running.progress);
                    (Some(running), Some(c))
                }
                Created::NotRecorded(c) => (Some(rec.clone()), Some(c)),
                Created::Refused(failed) => {
                    redrive_phase_event(kube, i, Some(rec), &failed).await;
                    let c = vocab::condition(&failed.progress);
                    (Some(*failed), Some(c))
                }
                Created::Unknown(c) => (Some(record), Some(c)),
            },
        }
    }

    async fn prefetch(
        &self,
        kube: &KubeIo,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        pf: &ValidPrefetch,
        prev: Option<&PrefetchStatus>,
    ) -> (PrefetchStatus, CondUpdate) {
        let every = i.poll.max(PREFETCH_EVERY);
        let cached = {
            let st = lock(&self.state);
            st.get(i.key).and_then(|s| {
                s.prefetch_checked
                    .filter(|t| t.elapsed() < every)
                    .and(s.prefetch_result.clone())
            })
        };
        if let Some(c) = cached {
            return c;
        }
        let result = self.evaluate_prefetch(kube, vhost, i, pf, prev).await;
        let mut st = lock(&self.state);
        let s = st.entry(i.key.to_owned()).or_default();
        s.prefetch_checked = Some(Instant::now());
        s.prefetch_result = Some(result.clone());
        result
    }

    async fn evaluate_prefetch(
        &self,
        kube: &KubeIo,
        vhost: &Vhost<'_>,
        i: &Inputs<'_>,
        pf: &ValidPrefetch,
        prev: Option<&PrefetchStatus>,
    ) -> (PrefetchStatus, CondUpdate) {
        let mut st = PrefetchStatus {
            applied: prev.and_then(|p| p.applied),
            last_applied_time: prev.and_then(|p| p.last_applied_time.clone()),
            ..PrefetchStatus::default()
        };
        // Apply: the value in force where nerite delivers it (and a missing container) first.
        let delivery = match (pf.apply, &pf.deliver_to) {
            (false, _) => None,
            (true, None) => {
                return (
                    st,
                    CondUpdate::new(
                        PREFETCH,
                        false,
                        "InvalidSpec",
                        "prefetch.deliverTo is required for Apply",
                    ),
                );
            }
            (true, Some(delivery)) => {
                let delivered = match delivery {
                    Delivery::Env { container, name } => {
                        match kube.template_env(i.workload, container, name).await {
                            Ok(TemplateEnv::Found(v)) => v,
                            Ok(TemplateEnv::ContainerMissing { containers }) => {
                                let msg = format!(
                                    "container {container:?} is not in the pod template of {} {} (containers: {})",
                                    i.workload.kind,
                                    i.workload.name,
                                    if containers.is_empty() {
                                        "none".to_string()
                                    } else {
                                        containers.join(", ")
                                    }
                                );
                                return (
                                    st,
                                    CondUpdate::new(PREFETCH, false, "ContainerNotFound", msg),
                                );
                            }
                            Err(e) => {
                                return (
                                    st,
                                    CondUpdate::new(PREFETCH, false, e.reason(), e.to_string()),
                                );
                            }
                        }
                    }
                    Delivery::ConfigMap { name, key } => {
                        match kube
                            .config_map_value(&i.sc.namespace().unwrap_or_default(), name, key)
                            .await
                        {
                            Ok(v) => v,
                            Err(e) => {
                                return (
                                    st,
                                    CondUpdate::new(PREFETCH, false, e.reason(), e.to_string()),
                                );
                            }
                        }
                    }
                };
                Some((delivery, delivered))
            }
        };
        let Some(obs) = i.observation else {
            st.reason = Some("no reading of the queue this tick".into());
            return (
                st,
                CondUpdate::new(PREFETCH, false, "NoMeasurements", "no reading of the queue"),
            );
        };
        let current = match vhost.consumer_prefetch(&i.target.queue).await {
            Ok(mut list) if !list.is_empty() => {
                list.sort_unstable();
                Some(list[list.len() / 2])
            }
            Ok(_) => None,
            Err(e) => {
                st.reason = Some(format!("cannot read the consumers: {e}"));
                return (
                    st,
                    CondUpdate::new(
                        PREFETCH,
                        false,
                        e.reason("ConsumersUnreadable"),
                        format!("cannot read the consumers: {e}"),
                    ),
                );
            }
        };
        st.current = current.and_then(|c| i32::try_from(c).ok());
        let m = Measurements {
            consumers: obs.consumers.unwrap_or(0),
            ready: obs.ready.unwrap_or(obs.backlog),
            unacked: obs.unacked.unwrap_or(0),
            ack_rate: obs.ack_rate,
            utilisation: obs.consumer_utilisation,
            current,
        };
        let rec = match prefetch::recommend(&m, u32::from(pf.min), u32::from(pf.max)) {
            Ok(r) => r,
            Err(why) => {
                st.reason = Some(why.clone());
                return (st, CondUpdate::new(PREFETCH, true, "NoMeasurements", why));
            }
        };
        st.recommended = i32::try_from(rec.value).ok();
        st.reason = Some(rec.reason.clone());
        let Some((delivery, delivered)) = delivery else {
            return (
                st,
                CondUpdate::new(
                    PREFETCH,
                    true,
                    "Recommended",
                    format!("recommended {}: {}", rec.value, rec.reason),
                ),
            );
        };
        let delivered_num = delivered
            .as_deref()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let since_last = st
            .last_applied_time
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t)).ok());
        match prefetch::should_apply(
            rec.value,
            delivered_num,
            pf.min_change_percent,
            since_last,
            pf.min_interval,
        ) {
            Err(hold) => {
                let msg = format!(
                    "recommended {}, delivered {}: holding ({hold})",
                    rec.value,
                    delivered.as_deref().unwrap_or("nothing")
                );
                (st, CondUpdate::new(PREFETCH, true, "Holding", msg))
            }
            Ok(()) => {
                let value = rec.value.to_string();
                let res = match delivery {
                    Delivery::Env { container, name } => {
                        kube.apply_template_env(
                            i.workload,
                            &i.workload_ref.api_version,
                            container,
                            name,
                            &value,
                        )
                        .await
                    }
                    Delivery::ConfigMap { name, key } => {
                        kube.apply_config_map_value(
                            &i.sc.namespace().unwrap_or_default(),
                            name,
                            key,
                            &value,
                        )
                        .await
                    }
                };
                match res {
                    Ok(()) => {
                        st.applied = i32::try_from(rec.value).ok();
                        st.last_applied_time = Some(now_text());
                        let where_ = describe(delivery, i);
                        kube.event(
                            i.sc,
                            false,
                            "PrefetchApplied",
                            "Prefetch",
                            format!(
                                "prefetch {} → {} in {where_}: {}",
                                delivered.as_deref().unwrap_or("unset"),
                                rec.value,
                                rec.reason
                            ),
                        )
                        .await;
                        (
                            st,
                            CondUpdate::new(
                                PREFETCH,
                                true,
                                "Applied",
                                format!("applied {} to {where_}", rec.value),
                            ),
                        )
                    }
                    Err(crate::kubeio::error::Error::Kube(kube::Error::Api(s)))
                        if s.code == 409 =>
                    {
                        (
                            st,
                            CondUpdate::new(
                                PREFETCH,
                                false,
                                "PrefetchConflict",
                                format!(
                                    "another field manager owns the value in {}; nerite does not override it: {}",
                                    describe(delivery, i),
                                    s.message
                                ),
                            ),
                        )
                    }
                    Err(e) => (
                        st,
                        CondUpdate::new(
                            PREFETCH,
                            false,
                            "KubernetesApiError",
                            format!("applying the prefetch failed: {e}"),
                        ),
                    ),
                }
            }
        }
    }
}

/// What the broker says about a redrive's shovel, or the condition when it cannot be read.
async fn seen_shovel(
    vhost: &Vhost<'_>,
    shovel: &str,
    rec: &RedriveStatus,
) -> Result<Seen, CondUpdate> {
    match vhost.shovel_state(shovel).await {
        Ok(ShovelState::Absent) => Ok(Seen::Absent),
        Ok(ShovelState::Running) => Ok(Seen::Running),
        Ok(ShovelState::Terminated(r)) => Ok(Seen::Terminated(r)),
        Err(e) => Err(CondUpdate::new(
            REDRIVE,
            false,
            e.reason("RedriveUnknown"),
            format!(
                "redrive {}: cannot read shovel {shovel:?}: {e}",
                vocab::quote(&rec.progress.request_id)
            ),
        )),
    }
}

/// How creating a redrive shovel went.
enum Created {
    Yes,
    /// The status write failed first: nothing was created.
    NotRecorded(CondUpdate),
    /// The broker refused: no shovel exists; the request is `Failed` with the reason.
    Refused(Box<RedriveStatus>),
    /// Unknown whether the shovel exists: the next tick checks.
    Unknown(CondUpdate),
}

/// The outcome Event when a redrive reaches `Succeeded`, `Failed` or `Cancelled` (names
/// shared by every broker: [`vocab::outcome_event`]).
async fn redrive_phase_event(
    kube: &KubeIo,
    i: &Inputs<'_>,
    before: Option<&RedriveStatus>,
    after: &RedriveStatus,
) {
    if before.is_some_and(|b| b.progress.phase == after.progress.phase) {
        return;
    }
    if let Some((reason, warning)) = vocab::outcome_event(after.progress.phase) {
        kube.event(
            i.sc,
            warning,
            reason,
            vocab::EVENT_ACTION,
            vocab::describe(&after.progress),
        )
        .await;
    }
}

fn describe(d: &Delivery, i: &Inputs<'_>) -> String {
    match d {
        Delivery::Env { container, name } => format!(
            "env {name} of container {container} in {} {}",
            i.workload.kind, i.workload.name
        ),
        Delivery::ConfigMap { name, key } => format!("key {key} of ConfigMap {name}"),
    }
}

/// Declare the exchange, the DLQ and the binding, and put nerite's policy on the source queue.
/// Errors come back as (condition reason, message).
async fn set_up_dead_letter(
    vhost: &Vhost<'_>,
    source: &str,
    dl: &ValidDeadLetter,
) -> Result<DeadLetterStatus, (String, String)> {
    let fail =
        |e: ManageError, conflict: &'static str| (e.reason(conflict).to_owned(), e.to_string());
    let details = match vhost.queue(source).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Err((
                "QueueNotFound".into(),
                format!("queue {source:?} does not exist: nothing to dead-letter"),
            ));
        }
        Err(e) => return Err(fail(e, "QueueUnreadable")),
    };
    let policies = vhost
        .policies()
        .await
        .map_err(|e| fail(e, "PolicyListFailed"))?;
    let own = deadletter::policy_name(source);
    let others: Vec<_> = policies
        .iter()
        .filter(|p| p.name != own)
        .filter(|p| {
            regex::Regex::new(&p.pattern)
                .map(|re| re.is_match(source))
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    let plan = deadletter::plan(
        source,
        &details.queue_type,
        &dl.exchange,
        &dl.routing_key,
        dl.max_deliveries,
        &others,
    )
    .map_err(|e| match e {
        PlanError::UnsupportedQueueType(t) => (
            "UnsupportedQueueType".to_string(),
            format!("queue {source:?} is a {t} queue: RabbitMQ cannot dead-letter from it"),
        ),
    })?;
    // The DLQ gets the source queue's type.
    vhost
        .declare_exchange(&dl.exchange)
        .await
        .map_err(|e| fail(e, "DeadLetterExchangeConflict"))?;
    vhost
        .declare_queue(&dl.queue, &details.queue_type)
        .await
        .map_err(|e| fail(e, "DeadLetterQueueConflict"))?;
    vhost
        .ensure_binding(&dl.exchange, &dl.queue, &dl.routing_key)
        .await
        .map_err(|e| fail(e, "BindingFailed"))?;
    let existing = policies.iter().find(|p| p.name == own);
    if existing.is_none_or(|p| !deadletter::same_policy(p, &plan.policy)) {
        vhost
            .put_policy(&plan.policy)
            .await
            .map_err(|e| fail(e, "PolicyRejected"))?;
    }
    let mut notes = plan.notes.clone();
    if let Some(in_force) = details
        .policy
        .as_ref()
        .filter(|p| **p != own && existing.is_some())
    {
        notes.push(format!(
            "policy {in_force:?} was in force at the last check"
        ));
    }
    Ok(DeadLetterStatus {
        queue: dl.queue.clone(),
        exchange: dl.exchange.clone(),
        routing_key: dl.routing_key.clone(),
        queue_type: Some(details.queue_type),
        policy: Some(own),
        policy_definition: serde_json::to_string(&plan.policy.definition).ok(),
        depth: None,
        message: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(annotations: serde_json::Value) -> ScaledConsumer {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "nerite.dev/v1alpha1",
            "kind": "ScaledConsumer",
            "metadata": {"name": "x", "namespace": "ns", "annotations": annotations},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
                "maxReplicas": 3,
                "source": {"rabbitmq": {"amqpUrl": "amqp://r:5672", "queue": "q",
                            "credentialsSecretRef": {"name": "s"}}},
                "objective": {"backlogPerReplica": 100}
            },
            "status": {"rabbitmq": {}}
        }))
        .expect("test object deserializes")
    }

    #[test]
    fn a_stale_read_of_an_own_write_is_replaced_by_the_latest() {
        let extras = Extras::new();
        let status = |batch: i64, creating: bool| RedriveStatus {
            progress: crate::spec::api::RedriveProgress {
                request_id: "r1".into(),
                phase: RedrivePhase::Running,
                moved: 5 * (batch - 1),
                ..Default::default()
            },
            batch: Some(batch),
            creating,
            ..RedriveStatus::default()
        };
        // Nothing written here (a restart, another leader): the stored status as it is.
        assert_eq!(
            extras.latest_redrive("ns/x", Some(&status(2, true))),
            Some(status(2, true))
        );
        // Batch 3 recorded (creating), then created: a read of either older write gives the
        // latest.
        extras.remember("ns/x", &status(2, false));
        extras.remember("ns/x", &status(3, true));
        extras.remember("ns/x", &status(3, false));
        for stale in [status(2, false), status(3, true), status(3, false)] {
            assert_eq!(
                extras.latest_redrive("ns/x", Some(&stale)),
                Some(status(3, false))
            );
        }
        // Something this process never wrote (another leader's) wins, and is itself
        // recognised when read again after this process moved on.
        assert_eq!(
            extras.latest_redrive("ns/x", Some(&status(9, false))),
            Some(status(9, false))
        );
        extras.remember("ns/x", &status(10, false));
        assert_eq!(
            extras.latest_redrive("ns/x", Some(&status(9, false))),
            Some(status(10, false))
        );
        assert_eq!(extras.latest_redrive("ns/x", None), None);
    }

    #[test]
    fn amqp_only_clears_the_extras() {
        let out = amqp_only(&object(serde_json::json!({})));
        assert_eq!(out.status, None);
        assert!(out.conditions.is_empty());
        assert_eq!(
            out.remove,
            [DEAD_LETTER_READY, LEGACY_DEAD_LETTERING, PREFETCH, REDRIVE]
        );
    }

    #[test]
    fn amqp_only_refuses_a_redrive_request() {
        let out = amqp_only(&object(serde_json::json!({REDRIVE_ANNOTATION: "r1"})));
        assert_eq!(
            out.remove,
            [DEAD_LETTER_READY, LEGACY_DEAD_LETTERING, PREFETCH]
        );
        let [c] = out.conditions.as_slice() else {
            panic!("one condition: {:?}", out.conditions)
        };
        assert_eq!(
            (c.type_, c.status, c.reason.as_str()),
            (REDRIVE, false, "NeedsManagementApi")
        );
        assert!(c.message.contains("\"r1\"") && c.message.contains("managementUrl"));
    }
}
