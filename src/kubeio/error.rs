//! Typed errors of a reconcile, split into permanent (wait for a spec change) and transient
//! (requeue with backoff).

use crate::core::error::{SourceError, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule; nothing happens until it changes.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),

    /// `scaleTargetRef` names a kind the API server does not serve.
    #[error("scale target kind {kind} in {api_version} is not served by the cluster")]
    UnknownTargetKind { api_version: String, kind: String },

    /// The kind exists but has no `/scale` subresource.
    #[error("scale target kind {kind} in {api_version} has no /scale subresource")]
    TargetNotScalable { api_version: String, kind: String },

    /// The workload does not exist (yet).
    #[error("scale target {kind}/{name} not found in namespace {namespace}")]
    TargetNotFound {
        kind: String,
        name: String,
        namespace: String,
    },

    /// The credentials Secret does not exist.
    #[error("secret {name} not found in namespace {namespace}")]
    SecretNotFound { name: String, namespace: String },

    /// The Secret exists but lacks a key (or its value is not UTF-8).
    #[error("secret {name} in namespace {namespace} has no usable key {key:?}")]
    SecretKeyMissing {
        name: String,
        namespace: String,
        key: String,
    },

    /// The broker could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),

    /// A Kubernetes API call failed.
    #[error("kubernetes API error: {}", describe_kube(.0))]
    Kube(#[from] kube::Error),

    /// The object lacks a namespace or name (never the case for served objects).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),

    /// A write was dropped: this replica does not lead (any more).
    #[error("not the leader: the write was dropped")]
    NotLeader,
}

impl Error {
    /// True when retrying cannot help until the user changes something watched (the spec).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec(_)
            | Error::UnknownTargetKind { .. }
            | Error::TargetNotScalable { .. }
            | Error::MissingObjectKey(_) => true,
            Error::Source(e) => e.is_permanent(),
            Error::TargetNotFound { .. }
            | Error::SecretNotFound { .. }
            | Error::SecretKeyMissing { .. }
            | Error::Kube(_)
            | Error::NotLeader => false,
        }
    }

    /// CamelCase reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::UnknownTargetKind { .. } => "UnknownTargetKind",
            Error::TargetNotScalable { .. } => "TargetNotScalable",
            Error::TargetNotFound { .. } => "TargetNotFound",
            Error::SecretNotFound { .. } => "SecretNotFound",
            Error::SecretKeyMissing { .. } => "SecretKeyMissing",
            Error::Source(e) => e.reason(),
            Error::Kube(_) => "KubernetesApiError",
            Error::MissingObjectKey(_) => "InvalidObject",
            Error::NotLeader => "NotLeader",
        }
    }

    /// True when the failure is about reading the broker (including its credentials).
    pub fn is_source_failure(&self) -> bool {
        matches!(
            self,
            Error::Source(_) | Error::SecretNotFound { .. } | Error::SecretKeyMissing { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kube error in one line: for an API status its code, reason and message (the status'
/// own Debug form repeats all of them with empty fields).
fn describe_kube(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}
