//! The `deadLetter` section, applied every tick after the depth read:
//!
//! 1. resolve the DLQ (name or ARN; create it when asked, FIFO when the source is FIFO);
//! 2. refuse a FIFO/standard mismatch with a clear condition;
//! 3. keep the DLQ's `RedriveAllowPolicy` at `byQueue` including the source;
//! 4. keep the source's `RedrivePolicy` as specified: set it, and restore it when someone
//!    changes it (the depth read already returned it, so checking costs no request);
//! 5. when the section is removed, remove the policy nerite set.
//!
//! Then the redrive, if one is requested (`deadLetter.redrive`, the `nerite.dev/redrive-request`
//! annotation) or still running, is supervised ([`super::redrive`]), and the `Redrive`
//! condition shows the recorded one ([`crate::spec::redrive`]).
//!
//! Problems never stop scaling: they become the `DeadLetterReady` (or `Redrive`) condition
//! and a Warning Event when they first appear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use jiff::Timestamp;
use kube::ResourceExt;

use super::model::{self, AllowPolicy, PolicyPlan, QueueArn, QueueUrl, RedrivePolicy};
use super::{Conn, SqsApi, SqsReading, SqsTarget, send};
use crate::core::conditions::{self as status, CondUpdate};
use crate::core::error::SourceError;
use crate::kubeio::KubeIo;
use crate::spec::api::{ScaledConsumer, SqsDeadLetter, SqsDeadLetterStatus, SqsRedrive, SqsStatus};
use crate::spec::redrive::{self as vocab, DEAD_LETTER_READY, REDRIVE};
use crate::spec::validate::ValidSqs;

/// How long a resolved DLQ (URL, ARN, type, allow policy) is trusted before it is read again.
const DLQ_RECHECK: Duration = Duration::from_secs(60);

/// Resolved DLQs, per ScaledConsumer.
#[derive(Default)]
pub(crate) struct DeadLetterCache {
    inner: Mutex<HashMap<String, Resolved>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The spec's `deadLetter.queue` this was resolved from.
    spec_queue: String,
    pub url: String,
    pub arn: String,
    pub fifo: bool,
    allow_policy: String,
    checked: Instant,
    /// nerite set the allow policy but the endpoint does not report it back.
    allow_unreported: bool,
}

/// What the SQS step adds to a tick's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SqsTickOutcome {
    /// `status.sqs` without `redrive` (the redrive writes its own progress).
    pub status: Option<SqsStatus>,
    pub conditions: Vec<CondUpdate>,
}

/// A dead-letter problem: condition reason and message.
#[derive(Clone, Debug, PartialEq)]
struct Problem {
    reason: &'static str,
    message: String,
}

impl From<SourceError> for Problem {
    fn from(e: SourceError) -> Self {
        Problem {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

/// `status.sqs` as the tick applies it: everything but the redrive progress.
pub fn status_for_apply(s: SqsStatus) -> SqsStatus {
    SqsStatus { redrive: None, ..s }
}

impl SqsApi {
    /// The SQS step of a tick, after the depth read. `target`: `None` when this tick's read
    /// failed (then nothing is changed on SQS and the last status is kept).
    pub async fn after_observe(
        &self,
        sc: &ScaledConsumer,
        key: &str,
        spec: &ValidSqs,
        target: Option<&SqsTarget>,
        kube: &Arc<KubeIo>,
    ) -> SqsTickOutcome {
        let prev = sc
            .status
            .as_ref()
            .and_then(|s| s.sqs.clone())
            .unwrap_or_default();
        let prev_of = |t: &str| {
            sc.status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
                .cloned()
        };
        let prev_cond = prev_of(DEAD_LETTER_READY);
        let prev_redrive_cond = prev_of(REDRIVE);
        let Some((target, reading)) =
            target.and_then(|t| Some((t, self.last_reading(t, Duration::from_secs(30))?)))
        else {
            // The read failed: change nothing, report what was known.
            return SqsTickOutcome {
                status: Some(status_for_apply(prev)),
                conditions: Vec::new(),
            };
        };
        let mut status = SqsStatus {
            visible: Some(reading.depth.visible),
            in_flight: Some(reading.depth.in_flight),
            delayed: Some(reading.depth.delayed),
            queue_arn: reading.queue_arn.clone(),
            dead_letter: None,
            redrive: None,
        };
        let mut conditions = Vec::new();
        let conn = match self.conn(target).await {
            Ok(c) => c,
            Err(e) => {
                status.dead_letter = prev.dead_letter;
                return SqsTickOutcome {
                    status: Some(status),
                    conditions: vec![CondUpdate::new(
                        DEAD_LETTER_READY,
                        false,
                        e.reason(),
                        e.to_string(),
                    )],
                };
            }
        };
        let events = Events { sc, kube };
        let spec_redrive = spec.dead_letter.as_ref().and_then(|d| d.redrive.as_ref());
        let requested = vocab::requested(
            spec_redrive.map(|r| (r.request_id.as_str(), r.cancel)),
            sc.annotations(),
            prev.redrive
                .as_ref()
                .map(|r| (r.progress.request_id.as_str(), r.progress.phase)),
        );

        match &spec.dead_letter {
            Some(dl) => {
                let outcome = self
                    .ensure(
                        &conn,
                        key,
                        dl,
                        target,
                        &reading,
                        prev.dead_letter.as_ref(),
                        &events,
                    )
                    .await;
                match outcome {
                    Ok((dls, resolved)) => {
                        status.dead_letter = Some(dls);
                        conditions.push(CondUpdate::new(
                            DEAD_LETTER_READY,
                            true,
                            "PolicyInSync",
                            format!(
                                "messages received {} times move to {}",
                                dl.max_receive_count, resolved.arn
                            ),
                        ));
                        if let Some(r) = &requested.request {
                            // Mode and rate come with the spec's request; an annotation (or
                            // a recorded run) uses the defaults.
                            let request = SqsRedrive {
                                request_id: r.request_id.clone(),
                                mode: spec_redrive.and_then(|s| s.mode),
                                max_messages_per_second: spec_redrive
                                    .and_then(|s| s.max_messages_per_second),
                                cancel: r.cancel,
                            };
                            super::redrive::supervise(
                                &self.redrives,
                                super::redrive::Supervise {
                                    sc,
                                    key,
                                    kube,
                                    conn: &conn,
                                    request: &request,
                                    endpoint: spec.endpoint.as_deref(),
                                    source_url: &target.queue_url,
                                    source_arn: reading.queue_arn.as_deref().unwrap_or_default(),
                                    dlq: &resolved,
                                    prev: prev.redrive.as_ref(),
                                },
                            );
                        }
                    }
                    Err(p) => {
                        status.dead_letter = prev.dead_letter;
                        if prev_cond
                            .as_ref()
                            .is_none_or(|c| c.status == "True" || c.reason != p.reason)
                        {
                            events.warn(p.reason, &p.message).await;
                        }
                        conditions.push(CondUpdate::new(
                            DEAD_LETTER_READY,
                            false,
                            p.reason,
                            p.message,
                        ));
                    }
                }
            }
            None => {
                self.dead_letters.forget(key);
                if let Some(managed) = prev.dead_letter {
                    match remove(&conn, target, &reading, &managed).await {
                        Ok(()) => {
                            events
                                .normal(
                                    "DeadLetterPolicyRemoved",
                                    &format!(
                                        "deadLetter removed from the spec: removed the redrive \
                                         policy to {} from {}",
                                        managed.queue_arn,
                                        QueueUrl::parse(&target.queue_url)
                                            .map(|u| u.name)
                                            .unwrap_or_default()
                                    ),
                                )
                                .await;
                            conditions.push(not_configured());
                        }
                        Err(p) => {
                            status.dead_letter = Some(managed);
                            if prev_cond.as_ref().is_none_or(|c| c.reason != p.reason) {
                                events.warn(p.reason, &p.message).await;
                            }
                            conditions.push(CondUpdate::new(
                                DEAD_LETTER_READY,
                                false,
                                p.reason,
                                format!("removing the redrive policy nerite set: {}", p.message),
                            ));
                        }
                    }
                } else if prev_cond.is_some() {
                    conditions.push(not_configured());
                }
            }
        }

        // The Redrive condition: a refusal, else the recorded redrive (its run writes it).
        let refused =
            requested.invalid.is_some() || (requested.triggered() && spec.dead_letter.is_none());
        if let Some(c) = vocab::tick_condition(
            &requested,
            spec.dead_letter.is_some(),
            "spec.source.sqs.deadLetter",
            prev.redrive.as_ref().map(|r| &r.progress),
            prev_redrive_cond.as_ref(),
        ) {
            if refused && vocab::is_new_problem(prev_redrive_cond.as_ref(), &c) {
                kube.event(sc, true, &c.reason, vocab::EVENT_ACTION, c.message.clone())
                    .await;
            }
            conditions.push(c);
        }
        SqsTickOutcome {
            status: Some(status),
            conditions,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn ensure(
        &self,
        conn: &Conn,
        key: &str,
        dl: &SqsDeadLetter,
        target: &SqsTarget,
        reading: &SqsReading,
        managed: Option<&SqsDeadLetterStatus>,
        events: &Events<'_>,
    ) -> Result<(SqsDeadLetterStatus, Resolved), Problem> {
        let source = QueueUrl::parse(&target.queue_url).map_err(|why| Problem {
            reason: "InvalidSourceConfig",
            message: format!("the queue URL {why}"),
        })?;
        let source_arn = reading.queue_arn.clone().ok_or_else(|| Problem {
            reason: "ProtocolError",
            message: format!("SQS did not report the ARN of {}", source.name),
        })?;
        let resolved = self
            .resolve(conn, key, dl, &source, &source_arn, events)
            .await?;

        let wanted = RedrivePolicy {
            dead_letter_target_arn: resolved.arn.clone(),
            max_receive_count: i64::from(dl.max_receive_count),
        };
        let managed_here = managed.filter(|m| m.queue_arn == resolved.arn);
        let mut dls = SqsDeadLetterStatus {
            queue_url: resolved.url.clone(),
            queue_arn: resolved.arn.clone(),
            redrive_policy: reading.redrive_policy.clone(),
            redrive_allow_policy: Some(resolved.allow_policy.clone()),
            drift_repairs: managed.map(|m| m.drift_repairs).unwrap_or(0),
            last_repair_time: managed.and_then(|m| m.last_repair_time.clone()),
        };
        let plan = model::plan_policy(
            reading.redrive_policy.as_deref(),
            &wanted,
            managed_here.is_some(),
        );
        if plan == PolicyPlan::Keep {
            return Ok((dls, resolved));
        }
        set_attribute(
            conn,
            &target.queue_url,
            &source.name,
            QueueAttributeName::RedrivePolicy,
            wanted.to_json(),
        )
        .await?;
        dls.redrive_policy = Some(wanted.to_json());
        match plan {
            PolicyPlan::Restore { found } => {
                // A spec change (the policy found is the one nerite last wrote) is no drift.
                let recorded = managed_here
                    .and_then(|m| m.redrive_policy.as_deref())
                    .and_then(RedrivePolicy::parse);
                if found.is_some() && found == recorded {
                    events
                        .normal(
                            "RedrivePolicyUpdated",
                            &format!(
                                "{}: messages received {} times now move to {}",
                                source.name, dl.max_receive_count, resolved.arn
                            ),
                        )
                        .await;
                } else {
                    dls.drift_repairs += 1;
                    dls.last_repair_time = Some(status::rfc3339(Timestamp::now()));
                    let was = match &found {
                        Some(p) => format!(
                            "maxReceiveCount {} to {}",
                            p.max_receive_count, p.dead_letter_target_arn
                        ),
                        None => "no policy".to_string(),
                    };
                    events
                        .warn(
                            "RedrivePolicyRestored",
                            &format!(
                                "the redrive policy of {} was changed outside nerite (found {was}); \
                                 restored maxReceiveCount {} to {}",
                                source.name, dl.max_receive_count, resolved.arn
                            ),
                        )
                        .await;
                }
            }
            _ => {
                events
                    .normal(
                        "RedrivePolicySet",
                        &format!(
                            "{}: messages received {} times move to {}",
                            source.name, dl.max_receive_count, resolved.arn
                        ),
                    )
                    .await;
            }
        }
        Ok((dls, resolved))
    }

    /// Find (or create) the DLQ, check its type, keep its allow policy.
    async fn resolve(
        &self,
        conn: &Conn,
        key: &str,
        dl: &SqsDeadLetter,
        source: &QueueUrl,
        source_arn: &str,
        events: &Events<'_>,
    ) -> Result<Resolved, Problem> {
        let cached = self.dead_letters.get(key);
        if let Some(r) = &cached
            && r.spec_queue == dl.queue
            && r.checked.elapsed() < DLQ_RECHECK
        {
            return Ok(r.clone());
        }
        let (name, owner) = if dl.queue.starts_with("arn:") {
            let arn = QueueArn::parse(&dl.queue).map_err(|why| Problem {
                reason: "InvalidSpec",
                message: format!("deadLetter.queue is not a valid SQS ARN: {why}"),
            })?;
            (arn.name, Some(arn.account))
        } else {
            (dl.queue.clone(), None)
        };
        let source_fifo = source.fifo();
        let mismatch = |dlq_fifo: bool| Problem {
            reason: "DeadLetterTypeMismatch",
            message: format!(
                "source {} is {} but dead-letter queue {name} is {}: SQS needs both of the same \
                 type (FIFO queue names end in .fifo)",
                source.name,
                kind(source_fifo),
                kind(dlq_fifo)
            ),
        };
        let url = match send!(
            conn,
            conn.client
                .get_queue_url()
                .queue_name(&name)
                .set_queue_owner_aws_account_id(owner.clone())
        ) {
            Ok(out) => out.queue_url().unwrap_or_default().to_string(),
            Err(e) => match conn.error(e, &name) {
                SourceError::SqsQueueNotFound { .. } if dl.create => {
                    if model::is_fifo_name(&name) != source_fifo {
                        return Err(mismatch(model::is_fifo_name(&name)));
                    }
                    let mut req = conn.client.create_queue().queue_name(&name);
                    if source_fifo {
                        req = req.attributes(QueueAttributeName::FifoQueue, "true");
                    }
                    let out = send!(conn, req).map_err(|e| Problem::from(conn.error(e, &name)))?;
                    events
                        .normal(
                            "DeadLetterQueueCreated",
                            &format!("created {} dead-letter queue {name}", kind(source_fifo)),
                        )
                        .await;
                    out.queue_url().unwrap_or_default().to_string()
                }
                SourceError::SqsQueueNotFound { region, .. } => {
                    return Err(Problem {
                        reason: "DeadLetterQueueNotFound",
                        message: format!(
                            "dead-letter queue {name} does not exist in region {region} at {} \
                             (set deadLetter.create: true to have nerite create it)",
                            conn.endpoint
                        ),
                    });
                }
                other => return Err(other.into()),
            },
        };
        let attrs = dlq_attributes(conn, &url, &name).await?;
        let arn = attrs
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .ok_or_else(|| Problem {
                reason: "ProtocolError",
                message: format!("SQS did not report the ARN of {name}"),
            })?;
        let dlq_fifo = attrs
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|v| v == "true")
            || model::is_fifo_name(&name);
        if dlq_fifo != source_fifo {
            return Err(mismatch(dlq_fifo));
        }
        let current = attrs
            .get(&QueueAttributeName::RedriveAllowPolicy)
            .and_then(|p| AllowPolicy::parse(p));
        let wanted = AllowPolicy::with_source(current.as_ref(), source_arn);
        let unreported_before = cached
            .as_ref()
            .is_some_and(|c| c.allow_unreported && c.spec_queue == dl.queue);
        let mut allow_unreported = unreported_before;
        if current.as_ref() != Some(&wanted) && !(current.is_none() && unreported_before) {
            set_attribute(
                conn,
                &url,
                &name,
                QueueAttributeName::RedriveAllowPolicy,
                wanted.to_json(),
            )
            .await?;
            if current.is_some() && cached.is_some() {
                events
                    .warn(
                        "RedriveAllowPolicyRestored",
                        &format!(
                            "the redrive allow policy of {name} no longer allowed {}; restored",
                            source.name
                        ),
                    )
                    .await;
            }
            allow_unreported = current.is_none();
        }
        let resolved = Resolved {
            spec_queue: dl.queue.clone(),
            url,
            arn,
            fifo: dlq_fifo,
            allow_policy: wanted.to_json(),
            checked: Instant::now(),
            allow_unreported,
        };
        self.dead_letters.put(key, resolved.clone());
        Ok(resolved)
    }
}

/// ARN, type and allow policy of a DLQ. Endpoints that do not know `RedriveAllowPolicy`
/// (they refuse the attribute name) are asked again without it.
async fn dlq_attributes(
    conn: &Conn,
    url: &str,
    name: &str,
) -> Result<HashMap<QueueAttributeName, String>, Problem> {
    let mut with_allow = true;
    loop {
        let mut req = conn
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .attribute_names(QueueAttributeName::FifoQueue);
        if with_allow {
            req = req.attribute_names(QueueAttributeName::RedriveAllowPolicy);
        }
        match send!(conn, req) {
            Ok(out) => return Ok(out.attributes().cloned().unwrap_or_default()),
            Err(e) => {
                let unknown_attribute = e
                    .as_service_error()
                    .and_then(|se| aws_sdk_sqs::error::ProvideErrorMetadata::code(se))
                    == Some("InvalidAttributeName");
                if with_allow && unknown_attribute {
                    with_allow = false;
                    continue;
                }
                return Err(conn.error(e, name).into());
            }
        }
    }
}

/// Remove the policy nerite set (the spec no longer has `deadLetter`).
async fn remove(
    conn: &Conn,
    target: &SqsTarget,
    reading: &SqsReading,
    managed: &SqsDeadLetterStatus,
) -> Result<(), Problem> {
    let name = QueueUrl::parse(&target.queue_url)
        .map(|u| u.name)
        .unwrap_or_default();
    if model::should_remove_policy(reading.redrive_policy.as_deref(), &managed.queue_arn) {
        set_attribute(
            conn,
            &target.queue_url,
            &name,
            QueueAttributeName::RedrivePolicy,
            String::new(),
        )
        .await?;
    }
    let Some(source_arn) = reading.queue_arn.as_deref() else {
        return Ok(());
    };
    let dlq_name = managed.queue_arn.rsplit(':').next().unwrap_or_default();
    let current = match dlq_attributes(conn, &managed.queue_url, dlq_name).await {
        Ok(attrs) => attrs
            .get(&QueueAttributeName::RedriveAllowPolicy)
            .and_then(|p| AllowPolicy::parse(p)),
        // The DLQ is gone: nothing left to undo there.
        Err(p) if p.reason == "QueueNotFound" => return Ok(()),
        Err(p) => return Err(p),
    };
    if let Some(next) = AllowPolicy::without_source(current.as_ref(), source_arn) {
        set_attribute(
            conn,
            &managed.queue_url,
            dlq_name,
            QueueAttributeName::RedriveAllowPolicy,
            next.to_json(),
        )
        .await?;
    }
    Ok(())
}

async fn set_attribute(
    conn: &Conn,
    url: &str,
    name: &str,
    attribute: QueueAttributeName,
    value: String,
) -> Result<(), Problem> {
    send!(
        conn,
        conn.client
            .set_queue_attributes()
            .queue_url(url)
            .attributes(attribute, value)
    )
    .map(drop)
    .map_err(|e| {
        let e = conn.error(e, name);
        Problem {
            reason: if e.reason() == "ProtocolError" {
                "PolicyUpdateFailed"
            } else {
                e.reason()
            },
            message: format!("cannot update {name}: {e}"),
        }
    })
}

fn kind(fifo: bool) -> &'static str {
    if fifo { "FIFO" } else { "standard" }
}

fn not_configured() -> CondUpdate {
    CondUpdate::new(
        DEAD_LETTER_READY,
        true,
        "NotConfigured",
        "no deadLetter section; nerite manages no redrive policy",
    )
}

impl DeadLetterCache {
    fn get(&self, key: &str) -> Option<Resolved> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn put(&self, key: &str, r: Resolved) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), r);
    }

    fn forget(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Events about one ScaledConsumer.
pub(crate) struct Events<'a> {
    pub sc: &'a ScaledConsumer,
    pub kube: &'a Arc<KubeIo>,
}

impl Events<'_> {
    pub async fn warn(&self, reason: &str, note: &str) {
        self.kube
            .event(self.sc, true, reason, "DeadLetter", note.to_string())
            .await;
    }

    pub async fn normal(&self, reason: &str, note: &str) {
        self.kube
            .event(self.sc, false, reason, "DeadLetter", note.to_string())
            .await;
    }
}
