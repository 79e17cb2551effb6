//! Brokers: one folder per broker (RabbitMQ, SQS, Kafka), each read through one shared
//! client per endpoint (no per-object long-lived connections) and never deciding anything.

pub mod jobs;
pub mod kafka;
pub mod rabbitmq;
pub mod sqs;

use std::future::Future;

use crate::core::error::SourceError;
use crate::core::observation::Observation;

/// A broker source. Implementations are cheap to share (`Arc`) and keep one client per
/// endpoint internally.
pub trait Source: Send + Sync {
    /// What identifies one queue on this broker, credentials included.
    type Target: Send + Sync;

    /// Read the queue once. Must finish (success or error) within the source's timeout.
    fn observe(
        &self,
        target: &Self::Target,
    ) -> impl Future<Output = Result<Observation, SourceError>> + Send;
}
