//! Moving dead-lettered messages back to the source, once per `redrive.requestId`.
//!
//! A redrive runs in the background; its progress is written to `status.sqs.redrive` as it
//! goes (merge patches under the field manager [`FIELD_MANAGER`]), so a restarted nerite
//! resumes it and the tick's own status writes never touch it.
//!
//! **`Aws` mode**: `StartMessageMoveTask` (DLQ → source, optional rate), followed through
//! `ListMessageMoveTasks`, cancelled with `CancelMessageMoveTask`. When the endpoint refuses
//! or does not implement move tasks, the redrive falls back to `Client` mode with an Event.
//!
//! **`Client` mode**, batch by batch:
//! 1. receive up to 10 messages from the DLQ (hidden for [`VISIBILITY`] seconds, extended
//!    while the batch is worked on);
//! 2. journal their ids as `Sending`;
//! 3. `SendMessageBatch` to the source with body, message attributes, the trace header and,
//!    for FIFO, the group id and a deduplication id derived from the request and the DLQ
//!    message (a batch the endpoint refuses as a whole is sent message by message, so one
//!    bad message does not hold back the others);
//! 4. journal the ids that were sent as `Sent`, with the new counts;
//! 5. `DeleteMessageBatch` **only for the entries that were sent**.
//!
//! Nothing is deleted before it was sent, so an interruption at any point loses nothing.
//! After a restart, messages journaled `Sent` that show up again are deleted without being
//! sent again; messages journaled `Sending` are sent again and counted in `duplicates` (the
//! first send may or may not have gone through: an upper bound). Messages the source refuses
//! (too large, invalid attributes) stay in the DLQ and are counted in `failed`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends,
    MessageSystemAttributeValue, SendMessageBatchRequestEntry,
};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::deadletter::Resolved;
use super::model;
use super::{Conn, send};
use crate::brokers::jobs::{self, CancelFlag, FINISHED, INTERRUPTED, Jobs, Step};
use crate::core::conditions as status;
use crate::core::error::SourceError;
use crate::core::leadership::Guard;
use crate::kubeio::KubeIo;
use crate::spec::api::{
    RedrivePhase, RedriveProgress, ScaledConsumer, SqsRedrive, SqsRedriveJournal, SqsRedriveMode,
    SqsRedriveStatus,
};
use crate::spec::redrive as vocab;

/// Field manager of the redrive's status writes.
pub const FIELD_MANAGER: &str = "nerite-redrive";
/// Seconds a received DLQ message stays hidden while nerite works on it.
pub const VISIBILITY: i32 = 15;
/// Extend the visibility of messages held longer than this.
const EXTEND_AFTER: Duration = Duration::from_secs(5);
/// `Client` mode's default rate.
const DEFAULT_CLIENT_RATE: i32 = 500;
/// Failed DLQ message ids kept in the status.
const MAX_FAILED_IDS: usize = 100;
/// Transient failures in a row before a run is interrupted (and resumed by a later tick).
const MAX_RETRIES: u32 = 5;

/// Redrives running in this process, per ScaledConsumer. Dropping it stops them.
pub(crate) type Redrives = Jobs;

/// What the tick knows when it checks on the redrive.
pub(crate) struct Supervise<'a> {
    pub sc: &'a ScaledConsumer,
    pub key: &'a str,
    pub kube: &'a Arc<KubeIo>,
    pub conn: &'a Conn,
    /// The request in force (from the spec, the annotations or the recorded status).
    pub request: &'a SqsRedrive,
    pub endpoint: Option<&'a str>,
    pub source_url: &'a str,
    pub source_arn: &'a str,
    pub dlq: &'a Resolved,
    /// `status.sqs.redrive` as last read.
    pub prev: Option<&'a SqsRedriveStatus>,
}

/// Pure decision ([`jobs::step`]): `running` is the request id of this process's redrive
/// and its job state, `prev` the status as last read.
pub fn step(
    request: &SqsRedrive,
    running: Option<(&str, u8)>,
    prev: Option<&SqsRedriveStatus>,
) -> Step {
    jobs::step(
        &request.request_id,
        request.cancel,
        running,
        prev.map(|p| (p.progress.request_id.as_str(), p.progress.phase.is_active())),
    )
}

/// Start, resume or leave the requested redrive.
pub(crate) fn supervise(jobs: &Redrives, s: Supervise<'_>) {
    let recorded = s
        .prev
        .map(|p| (p.progress.request_id.as_str(), p.progress.phase.is_active()));
    let start = |resumed: bool, cancel: CancelFlag, guard: Guard| {
        let resume = if resumed { s.prev.cloned() } else { None };
        let mode = match (&resume, s.request.mode) {
            (Some(p), _) if p.mode == "Client" => SqsRedriveMode::Client,
            (Some(_), _) => SqsRedriveMode::Aws,
            (None, Some(m)) => m,
            (None, None) if model::is_aws_endpoint(s.endpoint) => SqsRedriveMode::Aws,
            (None, None) => SqsRedriveMode::Client,
        };
        let dlq_name = s.dlq.arn.rsplit(':').next().unwrap_or_default().to_string();
        let run = Run {
            sc: s.sc.clone(),
            kube: s.kube.clone(),
            conn: s.conn.clone(),
            request_id: s.request.request_id.clone(),
            rate: s.request.max_messages_per_second,
            source_url: s.source_url.to_string(),
            source_arn: s.source_arn.to_string(),
            dlq_url: s.dlq.url.clone(),
            dlq_arn: s.dlq.arn.clone(),
            dlq_name,
            fifo: s.dlq.fifo,
            cancel,
            guard,
            progress: resume.clone().unwrap_or_else(|| SqsRedriveStatus {
                progress: RedriveProgress::pending(
                    &s.request.request_id,
                    &status::rfc3339(Timestamp::now()),
                ),
                mode: mode_name(mode).to_string(),
                ..SqsRedriveStatus::default()
            }),
        };
        let resumed = resume.is_some();
        run.run(mode, resumed)
    };
    jobs.supervise(
        s.key,
        &s.request.request_id,
        s.request.cancel,
        recorded,
        &s.kube.guard(),
        start,
    );
}

fn mode_name(m: SqsRedriveMode) -> &'static str {
    match m {
        SqsRedriveMode::Aws => "Aws",
        SqsRedriveMode::Client => "Client",
    }
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

/// One redrive run.
struct Run {
    sc: ScaledConsumer,
    kube: Arc<KubeIo>,
    conn: Conn,
    request_id: String,
    rate: Option<i32>,
    source_url: String,
    source_arn: String,
    dlq_url: String,
    dlq_arn: String,
    dlq_name: String,
    fifo: bool,
    cancel: CancelFlag,
    /// The right to act this run started with; checked before every SQS call and write.
    guard: Guard,
    progress: SqsRedriveStatus,
}

/// A received DLQ message, as nerite needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Msg {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    pub attributes: HashMap<String, MessageAttributeValue>,
    pub group_id: Option<String>,
    pub trace_header: Option<String>,
    pub received: Instant,
}

impl Msg {
    fn from_sdk(m: &Message, received: Instant) -> Option<Msg> {
        let system = m.attributes();
        Some(Msg {
            message_id: m.message_id()?.to_string(),
            receipt: m.receipt_handle()?.to_string(),
            body: m.body().unwrap_or_default().to_string(),
            attributes: m.message_attributes().cloned().unwrap_or_default(),
            group_id: system
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned(),
            trace_header: system
                .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                .cloned(),
            received,
        })
    }
}

/// One entry of a send, before it becomes an SDK type.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Batch entry id (`m0`..`m9`).
    pub id: String,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
}

/// FIFO: keep the group, use a deduplication id of this request and DLQ message.
pub fn plan(msgs: &[Msg], fifo: bool, request_id: &str) -> Vec<Planned> {
    msgs.iter()
        .enumerate()
        .map(|(i, m)| Planned {
            id: format!("m{i}"),
            group_id: fifo.then(|| {
                m.group_id
                    .clone()
                    .unwrap_or_else(|| "nerite-redrive".to_string())
            }),
            dedup_id: fifo.then(|| model::dedup_id(request_id, &m.message_id)),
        })
        .collect()
}

/// The outcome of one message's send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    Ok,
    /// The source refused it (sender fault): it stays in the DLQ.
    Refused(String),
    /// Not sent for a reason that may pass: it is tried again.
    Retry(String),
}

/// Map a `SendMessageBatch` answer onto the batch: an entry counts as sent only when the
/// answer lists it as successful. Entries the answer does not mention are retried.
pub fn settle(
    planned: &[Planned],
    successful: &[String],
    failed: &[(String, bool, String)],
) -> Vec<Sent> {
    planned
        .iter()
        .map(|p| {
            if successful.iter().any(|s| s == &p.id) {
                Sent::Ok
            } else if let Some((_, sender_fault, why)) = failed.iter().find(|f| f.0 == p.id) {
                if *sender_fault {
                    Sent::Refused(why.clone())
                } else {
                    Sent::Retry(why.clone())
                }
            } else {
                Sent::Retry("not in the answer".to_string())
            }
        })
        .collect()
}

/// A move task's state as the redrive reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Completed,
    Cancelled,
    Failed(String),
}

/// `ListMessageMoveTasks`' `Status` (`RUNNING`, `COMPLETED`, `CANCELLING`, `CANCELLED`,
/// `FAILED`).
pub fn task_state(status: &str, failure: Option<&str>) -> TaskState {
    match status {
        "COMPLETED" => TaskState::Completed,
        "CANCELLED" => TaskState::Cancelled,
        "FAILED" => TaskState::Failed(failure.unwrap_or("the move task failed").to_string()),
        _ => TaskState::Running,
    }
}

impl Run {
    /// Returns the final job state (FINISHED or INTERRUPTED).
    async fn run(mut self, mut mode: SqsRedriveMode, mut resumed: bool) -> u8 {
        // The watch cache this run was planned from may be behind (a new leader's cache
        // lags; a replica that was stalled has an old one): decide on the record as the API
        // server has it, so progress another leader recorded is never reset or overwritten.
        let recorded = match self.kube.current(&self.sc).await {
            Ok(sc) => sc.status.and_then(|s| s.sqs).and_then(|s| s.redrive),
            Err(e) => {
                tracing::warn!(error = %e, "redrive: cannot read the recorded progress; will retry");
                return INTERRUPTED;
            }
        };
        match recorded {
            Some(r) if r.progress.request_id == self.request_id && r.progress.phase.is_active() => {
                mode = if r.mode == "Client" {
                    SqsRedriveMode::Client
                } else {
                    SqsRedriveMode::Aws
                };
                self.progress = r;
                resumed = true;
            }
            // Already ended: nothing to do.
            Some(r) if r.progress.request_id == self.request_id => return FINISHED,
            // Planned as a resume, but the record no longer shows this run: a later tick
            // decides again.
            _ if resumed => return INTERRUPTED,
            _ => {}
        }
        if resumed {
            self.event(
                false,
                vocab::EVENT_RESUMED,
                format!(
                    "resuming redrive {} ({} moved so far)",
                    self.request_id, self.progress.progress.moved
                ),
            )
            .await;
        } else {
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(error = %e, "redrive: cannot record the start; will retry");
                return INTERRUPTED;
            }
            self.event(
                false,
                vocab::EVENT_STARTED,
                format!(
                    "redrive {} from {} to {} ({} mode)",
                    self.request_id,
                    self.dlq_name,
                    self.source_name(),
                    self.progress.mode
                ),
            )
            .await;
        }
        let result = match mode {
            SqsRedriveMode::Aws => self.run_aws().await,
            SqsRedriveMode::Client => self.run_client().await,
        };
        match result {
            Ok(()) => {}
            Err(Stop::LostLeadership) => {
                tracing::info!(request = %self.request_id, "redrive stopped: this replica no longer leads; the leader resumes it from the recorded progress");
                return INTERRUPTED;
            }
            Err(Stop::Interrupted(why)) => {
                tracing::warn!(request = %self.request_id, reason = %why, "redrive interrupted; a later tick resumes it");
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
            "{}; {} failed, {} possible duplicates",
            vocab::describe(&p.progress),
            p.failed,
            p.duplicates,
        );
        if let Some((reason, warning)) = vocab::outcome_event(p.progress.phase) {
            self.event(warning || p.failed > 0, reason, note).await;
        }
        FINISHED
    }

    fn source_name(&self) -> String {
        self.source_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
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

    /// Write the progress to `status.sqs.redrive`.
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

    /// Go on only while this run's right to act holds (checked before every SQS call).
    fn fence(&self) -> Result<(), Stop> {
        if self.guard.holds() {
            Ok(())
        } else {
            Err(Stop::LostLeadership)
        }
    }

    // ------------------------------------------------------------------ Aws mode

    async fn run_aws(&mut self) -> Result<(), Stop> {
        let handle = match self.progress.task_handle.clone() {
            Some(h) => h,
            None => {
                self.fence()?;
                let mut req = self
                    .conn
                    .client
                    .start_message_move_task()
                    .source_arn(&self.dlq_arn)
                    .destination_arn(&self.source_arn);
                if let Some(rate) = self.rate {
                    req = req.max_number_of_messages_per_second(rate);
                }
                match send!(self.conn, req) {
                    Ok(out) => {
                        let h = out.task_handle().unwrap_or_default().to_string();
                        self.progress.task_handle = Some(h.clone());
                        self.progress.progress.phase = RedrivePhase::Running;
                        self.checkpoint_or_stop().await?;
                        h
                    }
                    Err(e) => {
                        let why = describe(&e);
                        self.progress.mode = "Client".into();
                        self.progress.progress.message = Some(format!(
                            "StartMessageMoveTask refused or not implemented ({why}); moved by nerite instead"
                        ));
                        self.checkpoint_or_stop().await?;
                        self.event(
                            true,
                            "RedriveFallback",
                            format!(
                                "{} did not start a move task ({why}); nerite moves the messages itself (client mode)",
                                self.conn.endpoint
                            ),
                        )
                        .await;
                        return self.run_client().await;
                    }
                }
            }
        };
        let mut cancel_sent = false;
        let mut failures = 0;
        loop {
            self.fence()?;
            if self.cancel.load(Ordering::SeqCst) && !cancel_sent {
                match send!(
                    self.conn,
                    self.conn
                        .client
                        .cancel_message_move_task()
                        .task_handle(&handle)
                ) {
                    Ok(_) => cancel_sent = true,
                    Err(e) => {
                        self.progress.progress.message = Some(format!("cancel: {}", describe(&e)))
                    }
                }
            }
            match send!(
                self.conn,
                self.conn
                    .client
                    .list_message_move_tasks()
                    .source_arn(&self.dlq_arn)
                    .max_results(10)
            ) {
                Ok(out) => {
                    failures = 0;
                    let tasks = out.results();
                    let task = tasks
                        .iter()
                        .find(|t| t.task_handle() == Some(handle.as_str()))
                        .or_else(|| tasks.first());
                    let Some(task) = task else {
                        return Err(Stop::Fail(
                            "MoveTaskNotListed",
                            "the move task is not listed".into(),
                        ));
                    };
                    let moved = task.approximate_number_of_messages_moved();
                    let changed = moved != self.progress.progress.moved;
                    self.progress.progress.moved = moved;
                    match task_state(task.status().unwrap_or_default(), task.failure_reason()) {
                        TaskState::Running => {
                            if changed {
                                self.checkpoint_or_stop().await?;
                            }
                        }
                        TaskState::Completed => {
                            self.progress.progress.phase = RedrivePhase::Succeeded;
                            return Ok(());
                        }
                        TaskState::Cancelled => {
                            self.progress.progress.phase = RedrivePhase::Cancelled;
                            return Ok(());
                        }
                        TaskState::Failed(why) => return Err(Stop::Fail("MoveTaskFailed", why)),
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_RETRIES {
                        return Err(Stop::Interrupted(describe(&e)));
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    // --------------------------------------------------------------- Client mode

    async fn run_client(&mut self) -> Result<(), Stop> {
        let journal = self.progress.journal.take();
        let (mut already_sent, maybe_sent): (HashSet<String>, HashSet<String>) = match journal {
            Some(j) if j.phase == "Sent" => (j.message_ids.into_iter().collect(), HashSet::new()),
            Some(j) => (HashSet::new(), j.message_ids.into_iter().collect()),
            None => (HashSet::new(), HashSet::new()),
        };
        let mut known_failed: HashSet<String> =
            self.progress.failed_message_ids.iter().cloned().collect();
        let mut held: Vec<Msg> = Vec::new();
        let rate = f64::from(self.rate.unwrap_or(DEFAULT_CLIENT_RATE).max(1));
        let started = Instant::now();
        let mut moved_here: u64 = 0;
        let mut empty_rounds = 0;
        let mut last_progress = Instant::now();
        let patience = Duration::from_secs(2 * VISIBILITY.unsigned_abs() as u64 + 10);

        loop {
            if self.cancel.load(Ordering::SeqCst) {
                self.release(&held).await;
                self.progress.progress.phase = RedrivePhase::Cancelled;
                return Ok(());
            }
            self.keep_hidden(&mut held).await;
            let msgs = self.receive().await?;
            if msgs.is_empty() {
                empty_rounds += 1;
                if empty_rounds >= 2 {
                    let (visible, in_flight) = self.dlq_depth().await?;
                    let held_n = i64::try_from(held.len()).unwrap_or(i64::MAX);
                    // Done when nothing is in flight but what nerite holds, and nothing is
                    // visible (messages hidden by an interrupted run may just have come back),
                    // or, on FIFO queues, the visible ones wait behind a held message.
                    let blocked = self.fifo && held_n > 0;
                    if in_flight <= held_n && (visible == 0 || blocked) {
                        self.release(&held).await;
                        self.progress.progress.phase = RedrivePhase::Succeeded;
                        let left = visible + held_n;
                        let refusal = self.progress.progress.message.take().unwrap_or_default();
                        self.progress.progress.message = (left > 0).then(|| {
                            let mut m = format!("{left} messages left in the dead-letter queue");
                            if !refusal.is_empty() {
                                m.push_str("; ");
                                m.push_str(&refusal);
                            }
                            m
                        });
                        return Ok(());
                    }
                    if last_progress.elapsed() > patience {
                        self.release(&held).await;
                        self.progress.progress.phase = RedrivePhase::Succeeded;
                        self.progress.progress.message = Some(format!(
                            "{} messages stayed in flight and {visible} visible but not \
                             receivable in the dead-letter queue (another consumer?) and were \
                             left there",
                            (in_flight - held_n).max(0)
                        ));
                        return Ok(());
                    }
                }
                continue;
            }
            empty_rounds = 0;
            last_progress = Instant::now();

            let mut batch = Vec::new();
            let mut delete_only = Vec::new();
            for m in msgs {
                if already_sent.contains(&m.message_id) {
                    delete_only.push(m);
                } else if known_failed.contains(&m.message_id) {
                    held.push(m);
                } else {
                    batch.push(m);
                }
            }
            if !delete_only.is_empty() {
                // Sent before an interruption: delete, never send twice.
                self.delete(&delete_only).await?;
            }
            if batch.is_empty() {
                continue;
            }

            self.progress.journal = Some(SqsRedriveJournal {
                phase: "Sending".into(),
                message_ids: batch.iter().map(|m| m.message_id.clone()).collect(),
            });
            self.progress.progress.phase = RedrivePhase::Running;
            self.checkpoint_or_stop().await?;

            let results = self.send(&batch).await?;
            let mut sent = Vec::new();
            let mut retry = Vec::new();
            for (m, r) in batch.into_iter().zip(results) {
                match r {
                    Sent::Ok => {
                        if maybe_sent.contains(&m.message_id) {
                            self.progress.duplicates += 1;
                        }
                        sent.push(m);
                    }
                    Sent::Refused(why) => {
                        tracing::info!(message_id = %m.message_id, reason = %why, "redrive: the source refused a message; it stays in the DLQ");
                        self.progress.failed += 1;
                        if self.progress.failed_message_ids.len() < MAX_FAILED_IDS {
                            self.progress.failed_message_ids.push(m.message_id.clone());
                        }
                        self.progress.progress.message = Some(format!("last refusal: {why}"));
                        known_failed.insert(m.message_id.clone());
                        held.push(m);
                    }
                    Sent::Retry(_) => retry.push(m),
                }
            }
            self.progress.progress.moved += i64::try_from(sent.len()).unwrap_or(0);
            self.progress.journal = Some(SqsRedriveJournal {
                phase: "Sent".into(),
                message_ids: sent.iter().map(|m| m.message_id.clone()).collect(),
            });
            self.checkpoint_or_stop().await?;
            if !sent.is_empty() {
                self.keep_hidden(&mut sent).await;
                self.delete(&sent).await?;
                already_sent.extend(sent.iter().map(|m| m.message_id.clone()));
            }
            if !retry.is_empty() {
                self.release(&retry).await;
            }

            moved_here += sent.len() as u64;
            let due = Duration::from_secs_f64(moved_here as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    fn sqs_error<E>(&self, e: SdkError<E, HttpResponse>, queue: &str) -> Stop
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let e = self.conn.error(e, queue);
        match e {
            SourceError::SqsQueueNotFound { .. }
            | SourceError::Forbidden { .. }
            | SourceError::AwsCredentials { .. } => Stop::Fail(e.reason(), e.to_string()),
            _ => Stop::Interrupted(e.to_string()),
        }
    }

    async fn receive(&self) -> Result<Vec<Msg>, Stop> {
        let mut failures = 0;
        loop {
            self.fence()?;
            let res = send!(
                self.conn,
                self.conn
                    .client
                    .receive_message()
                    .queue_url(&self.dlq_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .visibility_timeout(VISIBILITY)
                    .message_attribute_names("All")
                    .message_system_attribute_names(MessageSystemAttributeName::All)
            );
            match res {
                Ok(out) => {
                    let now = Instant::now();
                    return Ok(out
                        .messages()
                        .iter()
                        .filter_map(|m| Msg::from_sdk(m, now))
                        .collect());
                }
                Err(e) => {
                    failures += 1;
                    match self.sqs_error(e, &self.dlq_name) {
                        Stop::Interrupted(_) if failures < MAX_RETRIES => backoff(failures).await,
                        stop => return Err(stop),
                    }
                }
            }
        }
    }

    async fn dlq_depth(&self) -> Result<(i64, i64), Stop> {
        self.fence()?;
        let reading = self
            .conn
            .read(&self.dlq_url, &self.dlq_name)
            .await
            .map_err(|e| Stop::Interrupted(e.to_string()))?;
        Ok((reading.depth.visible, reading.depth.in_flight))
    }

    /// Send a batch to the source; one outcome per message, in order.
    async fn send(&self, batch: &[Msg]) -> Result<Vec<Sent>, Stop> {
        let planned = plan(batch, self.fifo, &self.request_id);
        let source = self.source_name();
        let mut failures = 0;
        loop {
            self.fence()?;
            let entries: Vec<SendMessageBatchRequestEntry> = batch
                .iter()
                .zip(&planned)
                .filter_map(|(m, p)| entry(m, p))
                .collect();
            let res = send!(
                self.conn,
                self.conn
                    .client
                    .send_message_batch()
                    .queue_url(&self.source_url)
                    .set_entries(Some(entries))
            );
            match res {
                Ok(out) => {
                    let ok: Vec<String> = out
                        .successful()
                        .iter()
                        .map(|s| s.id().to_string())
                        .collect();
                    let failed: Vec<(String, bool, String)> = out
                        .failed()
                        .iter()
                        .map(|f| {
                            (
                                f.id().to_string(),
                                f.sender_fault(),
                                format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                            )
                        })
                        .collect();
                    return Ok(settle(&planned, &ok, &failed));
                }
                Err(e) if client_fault(&e) => {
                    // The batch as a whole was refused: find the bad messages one by one.
                    let mut out = Vec::with_capacity(batch.len());
                    for (m, p) in batch.iter().zip(&planned) {
                        out.push(self.send_one(m, p, &source).await);
                    }
                    return Ok(out);
                }
                Err(e) => {
                    failures += 1;
                    match self.sqs_error(e, &source) {
                        Stop::Interrupted(_) if failures < MAX_RETRIES => backoff(failures).await,
                        stop => return Err(stop),
                    }
                }
            }
        }
    }

    async fn send_one(&self, m: &Msg, p: &Planned, source: &str) -> Sent {
        if !self.guard.holds() {
            return Sent::Retry("this replica no longer leads".to_string());
        }
        let mut req = self
            .conn
            .client
            .send_message()
            .queue_url(&self.source_url)
            .message_body(&m.body)
            .set_message_attributes((!m.attributes.is_empty()).then(|| m.attributes.clone()))
            .set_message_group_id(p.group_id.clone())
            .set_message_deduplication_id(p.dedup_id.clone());
        if let Some(trace) = trace_attribute(m) {
            req = req.message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                trace,
            );
        }
        match send!(self.conn, req) {
            Ok(_) => Sent::Ok,
            Err(e) if client_fault(&e) => Sent::Refused(describe(&e)),
            Err(e) => Sent::Retry(self.conn.error(e, source).to_string()),
        }
    }

    async fn delete(&self, msgs: &[Msg]) -> Result<(), Stop> {
        let entries: Vec<DeleteMessageBatchRequestEntry> = msgs
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(format!("d{i}"))
                    .receipt_handle(&m.receipt)
                    .build()
                    .ok()
            })
            .collect();
        let mut failures = 0;
        loop {
            self.fence()?;
            let res = send!(
                self.conn,
                self.conn
                    .client
                    .delete_message_batch()
                    .queue_url(&self.dlq_url)
                    .set_entries(Some(entries.clone()))
            );
            match res {
                // Entries that failed (an expired receipt) come back to the DLQ and are then
                // recognised as sent and deleted.
                Ok(_) => return Ok(()),
                Err(e) => {
                    failures += 1;
                    match self.sqs_error(e, &self.dlq_name) {
                        Stop::Interrupted(_) if failures < MAX_RETRIES => backoff(failures).await,
                        stop => return Err(stop),
                    }
                }
            }
        }
    }

    /// Extend the visibility of messages held longer than [`EXTEND_AFTER`].
    async fn keep_hidden(&self, msgs: &mut [Msg]) {
        let stale: Vec<usize> = msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| m.received.elapsed() >= EXTEND_AFTER)
            .map(|(i, _)| i)
            .collect();
        for chunk in stale.chunks(10) {
            let ok = self
                .change_visibility(chunk.iter().map(|i| &msgs[*i]), VISIBILITY)
                .await;
            if ok {
                let now = Instant::now();
                for i in chunk {
                    msgs[*i].received = now;
                }
            }
        }
    }

    /// Make messages visible in the DLQ again at once.
    async fn release(&self, msgs: &[Msg]) {
        for chunk in msgs.chunks(10) {
            self.change_visibility(chunk.iter(), 0).await;
        }
    }

    async fn change_visibility<'m>(
        &self,
        msgs: impl Iterator<Item = &'m Msg>,
        seconds: i32,
    ) -> bool {
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = msgs
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(format!("v{i}"))
                    .receipt_handle(&m.receipt)
                    .visibility_timeout(seconds)
                    .build()
                    .ok()
            })
            .collect();
        if entries.is_empty() {
            return true;
        }
        if !self.guard.holds() {
            return false;
        }
        send!(
            self.conn,
            self.conn
                .client
                .change_message_visibility_batch()
                .queue_url(&self.dlq_url)
                .set_entries(Some(entries))
        )
        .is_ok()
    }
}

fn entry(m: &Msg, p: &Planned) -> Option<SendMessageBatchRequestEntry> {
    let mut b = SendMessageBatchRequestEntry::builder()
        .id(&p.id)
        .message_body(&m.body)
        .set_message_attributes((!m.attributes.is_empty()).then(|| m.attributes.clone()))
        .set_message_group_id(p.group_id.clone())
        .set_message_deduplication_id(p.dedup_id.clone());
    if let Some(trace) = trace_attribute(m) {
        b = b.message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, trace);
    }
    b.build().ok()
}

fn trace_attribute(m: &Msg) -> Option<MessageSystemAttributeValue> {
    let t = m.trace_header.as_ref()?;
    MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(t)
        .build()
        .ok()
}

/// A request the service refused as the caller's fault (HTTP 4xx other than throttling,
/// authentication or a missing queue).
fn client_fault<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or_default();
            (400..500).contains(&status)
                && !code.contains("Throttl")
                && !matches!(
                    code,
                    "AccessDenied"
                        | "InvalidClientTokenId"
                        | "SignatureDoesNotMatch"
                        | "AWS.SimpleQueueService.NonExistentQueue"
                        | "QueueDoesNotExist"
                )
        }
        _ => false,
    }
}

/// A short description of an SDK error (code and message; never a credential).
fn describe<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> String {
    match e {
        SdkError::ServiceError(ctx) => {
            let err = ctx.err();
            let status = ctx.raw().status().as_u16();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {}", m.chars().take(200).collect::<String>()),
                (Some(c), None) => c.to_string(),
                _ => format!("HTTP {status} without an SQS error"),
            }
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "connection failed".into(),
        _ => "unexpected answer".into(),
    }
}

async fn backoff(failures: u32) {
    let ms = 200u64.saturating_mul(1 << failures.min(5));
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The merge patch that writes `status.sqs.redrive` in full (cleared fields as `null`).
pub fn redrive_patch(p: &SqsRedriveStatus) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        // `state`: the phase's name before v1alpha1's vocabulary change; cleared.
        for key in [
            "startedAt",
            "finishedAt",
            "message",
            "reason",
            "taskHandle",
            "journal",
            "state",
        ] {
            map.entry(key).or_insert(Value::Null);
        }
        map.entry("failedMessageIds").or_insert(json!([]));
    }
    json!({ "sqs": { "redrive": v } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::jobs::RUNNING;

    fn msg(id: &str, group: Option<&str>) -> Msg {
        Msg {
            message_id: id.into(),
            receipt: format!("r-{id}"),
            body: format!("body {id}"),
            attributes: HashMap::new(),
            group_id: group.map(str::to_string),
            trace_header: None,
            received: Instant::now(),
        }
    }

    fn req(id: &str, cancel: bool) -> SqsRedrive {
        SqsRedrive {
            request_id: id.into(),
            mode: None,
            max_messages_per_second: None,
            cancel,
        }
    }

    fn status(id: &str, phase: &str) -> SqsRedriveStatus {
        SqsRedriveStatus {
            progress: RedriveProgress {
                request_id: id.into(),
                phase: RedrivePhase::from_recorded(phase),
                ..RedriveProgress::default()
            },
            mode: "Client".into(),
            ..SqsRedriveStatus::default()
        }
    }

    #[test]
    fn one_redrive_per_request_id() {
        let r1 = req("r1", false);
        assert_eq!(step(&r1, None, None), Step::Start);
        assert_eq!(step(&r1, Some(("r1", RUNNING)), None), Step::Nothing);
        assert_eq!(step(&r1, Some(("r1", FINISHED)), None), Step::Nothing);
        // Done before a restart: the status says so.
        assert_eq!(
            step(&r1, None, Some(&status("r1", "Succeeded"))),
            Step::Nothing
        );
        assert_eq!(
            step(&r1, None, Some(&status("r1", "Cancelled"))),
            Step::Nothing
        );
        assert_eq!(
            step(&r1, None, Some(&status("r1", "Failed"))),
            Step::Nothing
        );
        // Pending or Running before a restart, or interrupted here: resume.
        assert_eq!(
            step(&r1, None, Some(&status("r1", "Running"))),
            Step::Resume
        );
        assert_eq!(
            step(&r1, None, Some(&status("r1", "Pending"))),
            Step::Resume
        );
        assert_eq!(
            step(
                &r1,
                Some(("r1", INTERRUPTED)),
                Some(&status("r1", "Running"))
            ),
            Step::Resume
        );
        // A new id after the old one finished.
        assert_eq!(
            step(
                &req("r2", false),
                Some(("r1", FINISHED)),
                Some(&status("r1", "Succeeded"))
            ),
            Step::Start
        );
        // A new id waits for the running one.
        assert_eq!(
            step(&req("r2", false), Some(("r1", RUNNING)), None),
            Step::Nothing
        );
        assert_eq!(
            step(&req("r1", true), Some(("r1", RUNNING)), None),
            Step::Cancel
        );
    }

    #[test]
    fn fifo_entries_keep_group_and_get_a_new_dedup_id() {
        let msgs = [msg("a", Some("g1")), msg("b", Some("g2"))];
        let p = plan(&msgs, true, "req");
        assert_eq!(p[0].id, "m0");
        assert_eq!(p[0].group_id.as_deref(), Some("g1"));
        assert_eq!(p[1].group_id.as_deref(), Some("g2"));
        assert_eq!(p[0].dedup_id, Some(model::dedup_id("req", "a")));
        let standard = plan(&msgs, false, "req");
        assert_eq!(standard[0].group_id, None);
        assert_eq!(standard[0].dedup_id, None);
    }

    #[test]
    fn only_entries_reported_successful_are_deleted() {
        let msgs: Vec<Msg> = (0..5).map(|i| msg(&format!("id{i}"), None)).collect();
        let p = plan(&msgs, false, "r");
        let ok = vec!["m0".to_string(), "m3".to_string()];
        let failed = vec![
            (
                "m1".to_string(),
                true,
                "InvalidParameterValue: too big".to_string(),
            ),
            ("m2".to_string(), false, "InternalError".to_string()),
        ];
        let s = settle(&p, &ok, &failed);
        assert_eq!(
            s,
            vec![
                Sent::Ok,
                Sent::Refused("InvalidParameterValue: too big".into()),
                Sent::Retry("InternalError".into()),
                Sent::Ok,
                // m4 is in neither list: never deleted.
                Sent::Retry("not in the answer".into()),
            ]
        );
    }

    #[test]
    fn move_task_states() {
        assert_eq!(task_state("RUNNING", None), TaskState::Running);
        assert_eq!(task_state("CANCELLING", None), TaskState::Running);
        assert_eq!(task_state("COMPLETED", None), TaskState::Completed);
        assert_eq!(task_state("CANCELLED", None), TaskState::Cancelled);
        assert_eq!(
            task_state("FAILED", Some("AccessDenied")),
            TaskState::Failed("AccessDenied".into())
        );
    }

    #[test]
    fn patch_clears_finished_fields() {
        let v = redrive_patch(&status("r1", "Running"));
        let r = &v["sqs"]["redrive"];
        assert_eq!(r["requestId"], "r1");
        assert!(r["journal"].is_null() && r.get("journal").is_some());
        assert_eq!(r["failedMessageIds"], json!([]));
        assert_eq!(r["phase"], "Running");
        // The pre-vocabulary `state` is cleared, never written.
        assert!(r["state"].is_null() && r.get("state").is_some());
    }
}
