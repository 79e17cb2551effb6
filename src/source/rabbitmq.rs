//! RabbitMQ queue depth and rates from the management plugin's HTTP API.

use std::time::Duration;

use super::{Credentials, Observation, Source, SourceError};

/// One RabbitMQ queue, with the credentials to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct RabbitMqTarget {
    /// Base URL of the management API, e.g. `http://127.0.0.1:15672`.
    pub management_url: String,
    pub vhost: String,
    pub queue: String,
    /// Count unacknowledged messages toward the backlog.
    pub include_unacked: bool,
    pub credentials: Credentials,
}

/// Reads queues through the management API. One HTTP client per endpoint, shared.
pub struct ManagementApi {
    timeout: Duration,
}

impl ManagementApi {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl Source for ManagementApi {
    type Target = RabbitMqTarget;

    async fn observe(&self, target: &RabbitMqTarget) -> Result<Observation, SourceError> {
        let _ = (self.timeout, target);
        Err(SourceError::InvalidConfig("not implemented yet".into()))
    }
}
