//! Broker sources: one trait, one file per broker.
//!
//! A source turns a broker's view of a queue into an [`Observation`]. Sources never decide
//! anything and never touch Kubernetes; they are shared by every ScaledConsumer that points at
//! the same endpoint (one HTTP client per endpoint, no per-object long-lived connections).

pub mod jobs;
pub mod kafka;
pub mod rabbitmq;
pub mod sqs;
pub mod vocab;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

/// One reading of a queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// Messages counted toward the objective (the source's counting rule applied).
    pub backlog: i64,
    /// Messages ready for delivery.
    pub ready: Option<i64>,
    /// Messages delivered and not yet acknowledged.
    pub unacked: Option<i64>,
    /// Consumers attached.
    pub consumers: Option<i64>,
    /// Arrivals per second.
    pub publish_rate: Option<f64>,
    /// Deliveries per second.
    pub deliver_rate: Option<f64>,
    /// Completions (acks) per second.
    pub ack_rate: Option<f64>,
    /// Fraction of time the queue could push to its consumers (0..1).
    pub consumer_utilisation: Option<f64>,
    /// When the reading was taken.
    pub observed_at: Timestamp,
    /// Most replicas that can do work (Kafka: one consumer per partition), if the source
    /// knows such a limit.
    pub replica_cap: Option<ReplicaCap>,
}

/// A limit on useful replicas that the source knows of.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaCap {
    pub max: i32,
    /// For the decision's reason, e.g. "4 partitions (more consumers would idle)".
    pub why: String,
}

/// Credentials read from a Kubernetes Secret. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The password, for building a request. Never log or format it.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a source could not be read. Messages name the endpoint and the object, never a
/// credential.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// The broker rejected the credentials (HTTP 401).
    #[error(
        "authentication failed at {endpoint}: check the user and password in the credentials Secret"
    )]
    Unauthorized { endpoint: String },
    /// The user lacks permission for the vhost or queue (HTTP 403).
    #[error("access denied at {endpoint}: {detail}")]
    Forbidden { endpoint: String, detail: String },
    /// The virtual host does not exist.
    #[error("vhost {vhost:?} does not exist at {endpoint}")]
    VhostNotFound { endpoint: String, vhost: String },
    /// The queue does not exist.
    #[error("queue {queue:?} not found in vhost {vhost:?} at {endpoint}")]
    QueueNotFound {
        endpoint: String,
        vhost: String,
        queue: String,
    },
    /// The host name does not resolve.
    #[error("cannot resolve host of {endpoint}: {detail}")]
    Dns { endpoint: String, detail: String },
    /// Connection refused or reset, or no route.
    #[error("cannot connect to {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    /// No answer within the deadline.
    #[error("no answer from {endpoint} within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// The broker answered with something unexpected (5xx, malformed body, ...).
    #[error("unexpected answer from {endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    /// The source configuration cannot work (e.g. a malformed URL).
    #[error("invalid source configuration: {0}")]
    InvalidConfig(String),
    /// An SQS queue does not exist at that endpoint, in that region.
    #[error(
        "SQS queue {queue:?} does not exist in region {region} at {endpoint}; check the queue URL and the region"
    )]
    SqsQueueNotFound {
        endpoint: String,
        region: String,
        queue: String,
    },
    /// AWS rejected the credentials (unknown key, bad signature, expired token), or none
    /// could be found.
    #[error("AWS rejected or found no credentials at {endpoint}: {detail}")]
    AwsCredentials { endpoint: String, detail: String },
    /// The TLS handshake failed (untrusted certificate, wrong name, not a TLS listener).
    #[error("TLS with {endpoint} failed: {detail}")]
    Tls { endpoint: String, detail: String },
    /// A Kafka topic does not exist.
    #[error("topic {topic:?} does not exist at {endpoint}")]
    KafkaTopicNotFound { endpoint: String, topic: String },
    /// The consumer group has committed no offset on any partition of its topics, so
    /// there is nothing to measure lag from (with `offsetResetPolicy: Latest`).
    #[error(
        "consumer group {group:?} has no committed offsets on {topics} at {endpoint}: check the group name (an unknown group has none); holding the count"
    )]
    KafkaGroupHasNoOffsets {
        endpoint: String,
        group: String,
        topics: String,
    },
}

impl SourceError {
    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Unauthorized { .. } => "Unauthorized",
            SourceError::Forbidden { .. } => "Forbidden",
            SourceError::VhostNotFound { .. } => "VhostNotFound",
            SourceError::QueueNotFound { .. } => "QueueNotFound",
            SourceError::Dns { .. } => "HostNotFound",
            SourceError::Unreachable { .. } => "Unreachable",
            SourceError::Timeout { .. } => "Timeout",
            SourceError::Protocol { .. } => "ProtocolError",
            SourceError::InvalidConfig(_) => "InvalidSourceConfig",
            SourceError::SqsQueueNotFound { .. } => "QueueNotFound",
            SourceError::AwsCredentials { .. } => "Unauthorized",
            SourceError::Tls { .. } => "TlsFailed",
            SourceError::KafkaTopicNotFound { .. } => "TopicNotFound",
            SourceError::KafkaGroupHasNoOffsets { .. } => "GroupHasNoOffsets",
        }
    }

    /// True when retrying without a spec change cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SourceError::InvalidConfig(_))
    }
}

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
