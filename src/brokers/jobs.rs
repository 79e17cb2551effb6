//! Background jobs keyed by ScaledConsumer (redrives), and the rule that starts each request
//! exactly once: a request id runs at most once here, a status that shows it `Running`
//! after a restart resumes it, and any other recorded outcome of that id ends it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::leadership::Guard;

/// The job runs.
pub const RUNNING: u8 = 0;
/// The job ended with an outcome recorded in the status.
pub const FINISHED: u8 = 1;
/// The job stopped early (a transient problem); a later tick resumes it.
pub const INTERRUPTED: u8 = 2;

/// What to do about a requested job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing (running, or this request id is already done).
    Nothing,
    /// Ask the running job to stop.
    Cancel,
    /// Start the request from scratch.
    Start,
    /// Continue a job the status shows as running (after a restart or an interruption).
    Resume,
}

/// Pure decision. `running`: the request id of this process's job and its state;
/// `recorded`: the request id in the status and whether it shows `Running`.
pub fn step(
    request_id: &str,
    cancel: bool,
    running: Option<(&str, u8)>,
    recorded: Option<(&str, bool)>,
) -> Step {
    match running {
        Some((id, RUNNING)) => {
            if id == request_id && cancel {
                Step::Cancel
            } else {
                // One job at a time; a new id starts when the current one ends.
                Step::Nothing
            }
        }
        Some((id, FINISHED)) if id == request_id => Step::Nothing,
        _ => match recorded {
            Some((id, running)) if id == request_id => {
                if running {
                    Step::Resume
                } else {
                    Step::Nothing
                }
            }
            _ => Step::Start,
        },
    }
}

struct Job {
    request_id: String,
    cancel: Arc<AtomicBool>,
    state: Arc<AtomicU8>,
    handle: tokio::task::AbortHandle,
    /// The leadership term it runs in.
    term: u64,
}

/// Jobs running in this process, per ScaledConsumer. Dropping it stops them.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Job>>,
}

impl Drop for Jobs {
    fn drop(&mut self) {
        for job in self.jobs.lock().unwrap_or_else(|p| p.into_inner()).values() {
            job.handle.abort();
        }
    }
}

/// The cancel flag a job polls.
pub type CancelFlag = Arc<AtomicBool>;

impl Jobs {
    /// Apply [`step`] for `key` and start the job when due: `start(resume, cancel, guard)`
    /// builds the job's future, which returns [`FINISHED`] or [`INTERRUPTED`]. The job gets
    /// `guard` (the leader's right to act in this term) and must stop as soon as it no longer
    /// holds. A job of an earlier term is stopped and forgotten here: what it did is only
    /// known from the status it recorded, so the request is resumed from there.
    pub fn supervise<F, Fut>(
        &self,
        key: &str,
        request_id: &str,
        cancel: bool,
        recorded: Option<(&str, bool)>,
        guard: &Guard,
        start: F,
    ) -> Step
    where
        F: FnOnce(bool, CancelFlag, Guard) -> Fut,
        Fut: Future<Output = u8> + Send + 'static,
    {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stale) = jobs.get(key).filter(|j| j.term != guard.term()) {
            stale.handle.abort();
            jobs.remove(key);
        }
        let running = jobs
            .get(key)
            .map(|j| (j.request_id.as_str(), j.state.load(Ordering::SeqCst)));
        let decided = step(request_id, cancel, running, recorded);
        let resume = match decided {
            Step::Nothing => return decided,
            Step::Cancel => {
                if let Some(j) = jobs.get(key) {
                    j.cancel.store(true, Ordering::SeqCst);
                }
                return decided;
            }
            Step::Start => false,
            Step::Resume => true,
        };
        let flag = Arc::new(AtomicBool::new(cancel));
        let state = Arc::new(AtomicU8::new(RUNNING));
        let fut = start(resume, flag.clone(), guard.clone());
        let done = state.clone();
        let task = tokio::spawn(async move {
            let outcome = fut.await;
            done.store(outcome, Ordering::SeqCst);
        });
        jobs.insert(
            key.to_string(),
            Job {
                request_id: request_id.to_string(),
                cancel: flag,
                state,
                handle: task.abort_handle(),
                term: guard.term(),
            },
        );
        decided
    }

    /// Forget jobs of objects that no longer exist (stopping them).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, j| {
                let keep = keep(k);
                if !keep {
                    j.handle.abort();
                }
                keep
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::leadership::Leadership;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_job_of_an_earlier_term_is_stopped_and_the_record_decides() {
        let leadership = Leadership::elected();
        leadership.grant(Instant::now() + Duration::from_secs(60));
        let jobs = Jobs::default();
        let first = leadership.guard();
        let started = jobs.supervise("ns/a", "r1", false, None, &first, |_, _, _| {
            std::future::pending::<u8>()
        });
        assert_eq!(started, Step::Start);
        let again = jobs.supervise(
            "ns/a",
            "r1",
            false,
            Some(("r1", true)),
            &first,
            |_, _, _| std::future::pending::<u8>(),
        );
        assert_eq!(again, Step::Nothing, "one run per id while it runs");
        // Leadership lapses and comes back: the old run is void; the status shows the
        // request running, so it is resumed from there.
        leadership.revoke();
        leadership.grant(Instant::now() + Duration::from_secs(60));
        let second = leadership.guard();
        assert!(!first.holds());
        let resumed = jobs.supervise(
            "ns/a",
            "r1",
            false,
            Some(("r1", true)),
            &second,
            |resume, _, guard| {
                assert!(resume && guard.holds());
                std::future::pending::<u8>()
            },
        );
        assert_eq!(resumed, Step::Resume);
    }

    #[test]
    fn one_run_per_request_id() {
        // Nothing ran, nothing recorded: start.
        assert_eq!(step("r1", false, None, None), Step::Start);
        // Running here: never a second run, whatever the status says.
        assert_eq!(
            step("r1", false, Some(("r1", RUNNING)), None),
            Step::Nothing
        );
        assert_eq!(
            step("r2", false, Some(("r1", RUNNING)), None),
            Step::Nothing
        );
        assert_eq!(step("r1", true, Some(("r1", RUNNING)), None), Step::Cancel);
        // Finished here: done.
        assert_eq!(
            step("r1", false, Some(("r1", FINISHED)), Some(("r1", false))),
            Step::Nothing
        );
        // After a restart: a Running status resumes, any other outcome of the id ends it.
        assert_eq!(step("r1", false, None, Some(("r1", true))), Step::Resume);
        assert_eq!(step("r1", false, None, Some(("r1", false))), Step::Nothing);
        // Interrupted here: resume from the status.
        assert_eq!(
            step("r1", false, Some(("r1", INTERRUPTED)), Some(("r1", true))),
            Step::Resume
        );
        // A new id after an old outcome: start.
        assert_eq!(
            step("r2", false, Some(("r1", FINISHED)), Some(("r1", false))),
            Step::Start
        );
    }
}
