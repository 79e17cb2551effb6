//! The error vocabulary below the Kubernetes client: why a broker could not be read
//! ([`SourceError`]) and why a spec is refused ([`SpecError`]). Both are plain data: messages
//! name endpoints, objects and fields, never a credential.

use std::time::Duration;

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

/// Everything wrong with a spec, each problem naming its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid spec: {}", .problems.join("; "))]
pub struct SpecError {
    pub problems: Vec<String>,
}
