//! Fixtures shared by nerite's end-to-end suite (`e2e/tests`) and `make demo`: an isolated
//! RabbitMQ started by `e2e/rabbitmq.sh`, an SQS-compatible server (moto, `e2e/moto.sh`), a Kafka-protocol broker (tansu,
//! `e2e/kafka.sh`), the in-repo fake Kubernetes API server (or a real
//! cluster), and the operator running in-process against it.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod kafka;
pub mod moto;
pub mod ops;
pub mod rabbitmq;
pub mod sqs_move;
