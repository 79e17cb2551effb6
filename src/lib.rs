//! nerite keeps message-queue consumers sized to their work.
//!
//! The library is layered; each layer imports only from the layers before it (a unit test,
//! `layers::imports_go_one_way`, keeps it so). See `ARCHITECTURE.md`.
//!
//! 1. [`core`]: observations, the pure scaling policy, durations, conditions, errors, the
//!    leadership state. No Kubernetes client, no I/O.
//! 2. [`spec`]: the CRD types, validation of a spec into a `ValidSpec`, the redrive
//!    vocabulary, the CRD generator. [`simulate`] (the offline simulator) sits beside it.
//! 3. [`kubeio`]: the one writer to Kubernetes, which holds the leadership.
//! 4. [`brokers`]: one folder per broker (RabbitMQ, SQS, Kafka) and the background jobs.
//! 5. [`reconcile`]: one ScaledConsumer's poll — validate, observe, decide, act, status.
//! 6. [`runtime`]: the command line, the client, leader election, metrics serving, the
//!    controllers.
#![forbid(unsafe_code)]

pub mod brokers;
pub mod core;
pub mod kubeio;
pub mod reconcile;
pub mod runtime;
pub mod simulate;
pub mod spec;

#[cfg(test)]
mod layers;
