//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica runs the controller: all of them watch and observe, only the leader writes
//! (`/scale`, status, Events). Every write goes through [`crate::kubeio::KubeIo`], which asks
//! [`Leadership::is_leader`] first (background jobs carry a [`Guard`](crate::core::leadership::Guard) of their term).
//!
//! The rules, chosen so that two replicas never act at once:
//! - The holder renews the Lease every `retry_period`. Its right to act lasts
//!   `renew_deadline` from the moment it *sent* its last successful read, so a holder that
//!   cannot reach the API server stops acting on its own, before anyone else may take over.
//! - A candidate never trusts the holder's clock. It notes, on its own clock, when it sent
//!   the first read that showed the current record; the Lease expires `leaseDurationSeconds`
//!   after that. The holder wrote the record before that read was answered, after its own
//!   read was sent, so its right to act ends within `renew_deadline` plus one read's latency
//!   of that moment: earlier, as `renew_deadline + 2·retry_period ≤ lease_duration` is
//!   enforced and reads time out. (Counting from the read *before* the change would be
//!   unsafe for a candidate that was itself stalled between two reads: it would see a fresh
//!   renewal as long expired.)
//! - Writes carry the `resourceVersion` read: of two candidates, the API server lets one
//!   win and answers 409 to the other.
//! - A replica that stops gracefully clears the holder, so another takes over within one
//!   retry period instead of waiting for the Lease to expire.
//!
//! A leader that is killed is replaced within the lease duration plus one retry period (and
//! one API call).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::core::leadership::Leadership;
use crate::reconcile::metrics::Metrics;

/// Leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease (the operator's own namespace).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a Lease that is not renewed stays valid (whole seconds).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the Lease is read and renewed.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Defaults for a deployment: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Check the settings keep two leaders from acting at once.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return Err("lease name, namespace and identity must not be empty".into());
        }
        let secs = self.lease_duration.as_secs();
        if secs == 0 || self.lease_duration.subsec_nanos() != 0 || secs > i32::MAX as u64 {
            return Err("the lease duration must be a whole number of seconds, at least 1s".into());
        }
        if self.retry_period.is_zero() || self.renew_deadline.is_zero() {
            return Err("the renew deadline and the retry period must be positive".into());
        }
        if self.renew_deadline + self.retry_period * 2 > self.lease_duration {
            return Err(format!(
                "renew deadline ({:?}) + 2 × retry period ({:?}) must not exceed the lease duration ({:?})",
                self.renew_deadline, self.retry_period, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// What a candidate has seen of the Lease, on its own clock.
#[derive(Debug, Default)]
struct Observed {
    /// resourceVersion of the record last read.
    version: Option<String>,
    /// When the record last read stops being valid.
    expires: Option<Instant>,
}

impl Observed {
    /// Note a read sent at `sent` that returned a record with `version` and `duration`.
    fn saw(&mut self, version: Option<&str>, duration: Duration, sent: Instant) {
        if self.version.as_deref() != version || self.expires.is_none() {
            // A record not seen before: it was written before this read was answered, so its
            // lifetime counts from this read (never from an earlier one: this replica may
            // have been stalled for long between the two).
            self.expires = Some(sent + duration);
            self.version = version.map(str::to_string);
        }
    }
}

/// What to do after reading the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// We hold it: renew.
    Renew,
    /// Free, released or expired: take it.
    Acquire,
    /// Someone else holds it until then.
    Follow { expires: Instant },
}

fn next_step(holder: Option<&str>, me: &str, expires: Instant, now: Instant) -> Step {
    match holder {
        Some(h) if h == me => Step::Renew,
        None => Step::Acquire,
        Some(_) if now >= expires => Step::Acquire,
        Some(_) => Step::Follow { expires },
    }
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn duration_of(lease: &Lease, fallback: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(fallback)
}

/// Run the election until `shutdown` completes, then release the Lease if held. The
/// controller must have stopped writing before `shutdown` completes.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut elector = Elector {
        api,
        settings,
        leadership,
        metrics,
        observed: Observed::default(),
        leading: false,
    };
    tokio::pin!(shutdown);
    loop {
        let wake = elector.round().await;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    elector.release().await;
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leadership: Leadership,
    metrics: Arc<Metrics>,
    observed: Observed,
    leading: bool,
}

impl Elector {
    /// One read and, when due, one write. Returns when to try again.
    async fn round(&mut self) -> Instant {
        let s = &self.settings;
        let sent = Instant::now();
        let retry = sent + s.retry_period;
        let read = tokio::time::timeout(s.renew_deadline, self.api.get_opt(&s.name)).await;
        let lease = match read {
            Ok(Ok(Some(lease))) => lease,
            Ok(Ok(None)) => {
                self.create(sent).await;
                return retry;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %s.name, error = %e, "cannot read the leader Lease");
                self.update_state();
                return retry;
            }
            Err(_) => {
                tracing::warn!(lease = %s.name, "reading the leader Lease timed out");
                self.update_state();
                return retry;
            }
        };
        let duration = duration_of(&lease, s.lease_duration);
        self.observed
            .saw(lease.resource_version().as_deref(), duration, sent);
        let expires = self.observed.expires.unwrap_or(sent + duration);
        match next_step(holder_of(&lease), &s.identity, expires, Instant::now()) {
            Step::Renew | Step::Acquire => {
                self.write(lease, sent).await;
                retry
            }
            Step::Follow { expires } => {
                if self.leading {
                    tracing::warn!(holder = ?holder_of(&lease), "another replica holds the leader Lease");
                }
                self.leadership.revoke();
                self.update_state();
                // Look again when it would expire, if that is sooner than the next round.
                retry.min(expires)
            }
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let me = &self.settings.identity;
        let held_by_me = previous
            .and_then(|p| p.holder_identity.as_deref())
            .is_some_and(|h| h == me);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if held_by_me {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if held_by_me || previous.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..LeaseSpec::default()
        }
    }

    async fn create(&mut self, sent: Instant) {
        let mut lease = Lease::default();
        lease.metadata.name = Some(self.settings.name.clone());
        lease.metadata.namespace = Some(self.settings.namespace.clone());
        lease.spec = Some(self.spec(None));
        let res = tokio::time::timeout(
            self.settings.renew_deadline,
            self.api.create(&PostParams::default(), &lease),
        )
        .await;
        match res {
            Ok(Ok(_)) => self.won(sent),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                tracing::debug!("another replica created the leader Lease first");
                self.update_state();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot create the leader Lease");
                self.update_state();
            }
            Err(_) => self.update_state(),
        }
    }

    /// Renew or take over, guarded by the resourceVersion just read.
    async fn write(&mut self, mut lease: Lease, sent: Instant) {
        lease.spec = Some(self.spec(lease.spec.as_ref()));
        let name = self.settings.name.clone();
        let res = tokio::time::timeout(
            self.settings.renew_deadline,
            self.api.replace(&name, &PostParams::default(), &lease),
        )
        .await;
        match res {
            Ok(Ok(_)) => self.won(sent),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                // Someone else wrote it since our read: never act on a stale view.
                tracing::debug!("the leader Lease changed under us");
                self.leadership.revoke();
                self.update_state();
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew the leader Lease");
                self.update_state();
            }
            Err(_) => {
                tracing::warn!("renewing the leader Lease timed out");
                self.update_state();
            }
        }
    }

    /// Our write landed: we may act until `sent + renew_deadline`.
    fn won(&mut self, sent: Instant) {
        self.leadership.grant(sent + self.settings.renew_deadline);
        self.update_state();
    }

    /// Log and count transitions; the grant itself lapses on its own.
    fn update_state(&mut self) {
        let now_leading = self.leadership.is_leader();
        if now_leading && !self.leading {
            tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "became leader");
            self.metrics.became_leader();
        } else if !now_leading && self.leading {
            tracing::warn!(identity = %self.settings.identity, "no longer leader: not acting until the Lease is held again");
        }
        self.leading = now_leading;
        self.metrics.set_leader(now_leading);
    }

    /// Give the Lease up so another replica takes over at its next read.
    async fn release(&mut self) {
        let held = self.leadership.is_leader();
        self.leadership.revoke();
        self.update_state();
        if !held {
            return;
        }
        let name = self.settings.name.clone();
        let res = tokio::time::timeout(self.settings.retry_period, async {
            let mut lease = self.api.get(&name).await?;
            if holder_of(&lease) != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(Timestamp::now()));
            }
            self.api
                .replace(&name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        })
        .await;
        match res {
            Ok(Ok(())) => tracing::info!(lease = %name, "released the leader Lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the leader Lease"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_must_leave_room_for_hand_over() {
        let mut s = LeaseSettings::new("nerite", "nerite-system", "a");
        assert_eq!(s.check(), Ok(()));
        s.renew_deadline = Duration::from_secs(14);
        assert!(s.check().is_err());
        s = LeaseSettings::new("nerite", "nerite-system", "a");
        s.lease_duration = Duration::from_millis(1500);
        assert!(s.check().is_err());
        s = LeaseSettings::new("nerite", "nerite-system", "");
        assert!(s.check().is_err());
    }

    #[test]
    fn steps() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert_eq!(next_step(Some("a"), "a", later, now), Step::Renew);
        assert_eq!(next_step(None, "a", later, now), Step::Acquire);
        assert_eq!(
            next_step(Some("b"), "a", later, now),
            Step::Follow { expires: later }
        );
        assert_eq!(next_step(Some("b"), "a", now, later), Step::Acquire);
    }

    #[test]
    fn expiry_counts_from_the_first_read_that_saw_the_record() {
        let t0 = Instant::now();
        let d = Duration::from_secs(3);
        let mut o = Observed::default();
        o.saw(Some("1"), d, t0);
        assert_eq!(o.expires, Some(t0 + d));
        // Same record later: expiry unchanged.
        let t1 = t0 + Duration::from_millis(500);
        o.saw(Some("1"), d, t1);
        assert_eq!(o.expires, Some(t0 + d));
        // Renewed between t1 and t2: counts from t2, the first read that showed it.
        let t2 = t1 + Duration::from_millis(500);
        o.saw(Some("2"), d, t2);
        assert_eq!(o.expires, Some(t2 + d));
        // A candidate stalled for a minute between two reads (SIGSTOP, a VM pause) sees a
        // renewal made just before its next read as fresh, not as a minute old.
        let t3 = t2 + Duration::from_secs(60);
        o.saw(Some("3"), d, t3);
        assert_eq!(o.expires, Some(t3 + d));
        assert_eq!(
            next_step(Some("other"), "me", t3 + d, t3),
            Step::Follow { expires: t3 + d }
        );
    }
}
