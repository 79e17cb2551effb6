//! Shared fixtures for the end-to-end trials.

pub use nerite_testkit::{cluster, kafka, moto, ops, rabbitmq};

use std::sync::{Arc, OnceLock};

/// Servers shared by trials, started on first use and stopped when the run ends.
#[derive(Clone, Default)]
pub struct Env {
    rabbit: Arc<OnceLock<Result<Arc<rabbitmq::RabbitMq>, String>>>,
    moto: Arc<OnceLock<Result<Arc<moto::Moto>, String>>>,
    kafka: Arc<OnceLock<Result<Arc<kafka::Kafka>, String>>>,
}

impl Env {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared RabbitMQ, started on first use.
    pub fn rabbitmq(&self) -> Result<Arc<rabbitmq::RabbitMq>, String> {
        self.rabbit
            .get_or_init(|| rabbitmq::RabbitMq::start().map(Arc::new))
            .clone()
    }

    /// The shared Kafka-protocol broker (tansu), started on first use.
    pub fn kafka(&self) -> Result<Arc<kafka::Kafka>, String> {
        self.kafka
            .get_or_init(|| kafka::Kafka::start().map(Arc::new))
            .clone()
    }

    /// The shared moto (SQS) server, started on first use.
    pub fn moto(&self) -> Result<Arc<moto::Moto>, String> {
        self.moto
            .get_or_init(|| moto::Moto::start().map(Arc::new))
            .clone()
    }
}
