//! The `ScaledConsumer` resource: its CRD types ([`api`]), their validation into a
//! [`validate::ValidSpec`] with defaults applied, the dead-letter and [`redrive`] vocabulary
//! every broker shares, and the CRD generator ([`crdgen`]).

pub mod api;
pub mod crdgen;
pub mod names;
pub mod redrive;
pub mod validate;
