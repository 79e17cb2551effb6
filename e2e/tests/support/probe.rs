//! A broker source driven from a blocking trial: read once, read until a condition holds,
//! expect an error that does not show the password.

use std::time::Duration;

use nerite::brokers::Source;
use nerite::brokers::rabbitmq::RabbitMqTarget;
use nerite::brokers::rabbitmq::amqp::AmqpTarget;
use nerite::core::error::SourceError;
use nerite::core::observation::Observation;

use super::rabbitmq::wait_for;

/// How long a reading may take to show a change the broker already made.
const SETTLE: Duration = Duration::from_secs(20);

/// What a probe needs to know of a target besides reading it.
pub trait ProbeTarget {
    /// The password that must never show in an error.
    fn password(&self) -> &str;
    /// `vhost/queue`, for messages.
    fn label(&self) -> String;
}

impl ProbeTarget for RabbitMqTarget {
    fn password(&self) -> &str {
        self.credentials.password()
    }
    fn label(&self) -> String {
        format!("{}/{}", self.vhost, self.queue)
    }
}

impl ProbeTarget for AmqpTarget {
    fn password(&self) -> &str {
        self.credentials.password()
    }
    fn label(&self) -> String {
        format!("{}/{}", self.vhost, self.queue)
    }
}

/// The source plus a runtime to drive it (two worker threads: the AMQP client's I/O needs a
/// multi-thread runtime).
pub struct Probe<S> {
    pub source: S,
    pub rt: tokio::runtime::Runtime,
}

impl<S: Source> Probe<S>
where
    S::Target: ProbeTarget,
{
    pub fn new(source: S) -> Result<Probe<S>, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        Ok(Probe { source, rt })
    }

    pub fn observe(&self, target: &S::Target) -> Result<Observation, SourceError> {
        self.rt.block_on(self.source.observe(target))
    }

    /// Observe until `check` accepts the reading; returns it and the time it took.
    pub fn await_reading(
        &self,
        target: &S::Target,
        what: &str,
        check: impl Fn(&Observation) -> bool,
    ) -> Result<(Observation, Duration), String> {
        wait_for(SETTLE, || match self.observe(target) {
            Ok(o) if check(&o) => Ok(o),
            Ok(o) => Err(format!("{what}: got {o:?}")),
            Err(e) => Err(e.to_string()),
        })
        .map_err(|e| format!("{}: {e}", target.label()))
    }

    /// Observe until the backlog is `want`.
    pub fn await_backlog(
        &self,
        target: &S::Target,
        want: i64,
    ) -> Result<(Observation, Duration), String> {
        self.await_reading(target, &format!("backlog {want}"), |o| o.backlog == want)
    }

    /// Observe and expect an error; checks the password does not leak into it.
    pub fn expect_error(&self, target: &S::Target) -> Result<SourceError, String> {
        match self.observe(target) {
            Ok(o) => Err(format!("expected an error, got {o:?}")),
            Err(e) => {
                let shown = format!("{e} | {e:?}");
                if shown.contains(target.password()) {
                    return Err(format!("the password leaked into an error: {shown}"));
                }
                Ok(e)
            }
        }
    }
}
