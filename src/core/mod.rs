//! What every other layer speaks: a broker's [`observation::Observation`], the pure scaling
//! [`policy`], [`duration`]s as users write them, status [`conditions`], the [`error`]
//! vocabulary and the [`leadership`] state. No Kubernetes client and no I/O here.

pub mod conditions;
pub mod duration;
pub mod error;
pub mod leadership;
pub mod observation;
pub mod policy;
pub mod text;
