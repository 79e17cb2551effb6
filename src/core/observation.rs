//! What a broker reading tells the policy: one [`Observation`] of a queue, a limit on useful
//! replicas the broker knows of, and the credentials a broker is read with.

use std::fmt;

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
