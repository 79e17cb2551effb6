//! nerite keeps message-queue consumers sized to their work.
//!
//! The library is split along the reconcile pipeline: [`api`] (the CRD types), [`validate`]
//! (spec checks), [`source`] (brokers, one file each), [`policy`] (pure decisions),
//! [`kubeio`] (the one place that acts on Kubernetes), [`status`] (pure status building) and
//! [`controller`] (the loop that ties them together). [`leader`] (Lease-based leader
//! election) and [`metrics`] (Prometheus metrics, health endpoints) run beside it.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod kubeio;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod source;
pub mod status;
pub mod validate;
