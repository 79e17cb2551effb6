//! nerite keeps message-queue consumers sized to their work.
#![forbid(unsafe_code)]

pub mod api;
pub mod crdgen;
pub mod policy;
pub mod source;
pub mod validate;
