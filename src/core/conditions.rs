//! Status conditions, merged once: conditions keep their `lastTransitionTime` while their
//! status does not change.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A standard Kubernetes condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Last time `status` changed (RFC 3339).
    pub last_transition_time: String,
    /// Generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub const READY: &str = "Ready";
pub const SOURCE_REACHABLE: &str = "SourceReachable";
pub const SCALING_LIMITED: &str = "ScalingLimited";

/// A condition before its transition time is known, or (with `remove`) the removal of a
/// condition that no longer applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
    /// Drop the condition of this type instead (see [`CondUpdate::removed`]).
    pub remove: bool,
}

impl CondUpdate {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
            remove: false,
        }
    }

    /// The condition of this type no longer applies: [`merge_conditions`] drops it.
    pub fn removed(type_: &'static str) -> Self {
        Self {
            type_,
            status: false,
            reason: String::new(),
            message: String::new(),
            remove: true,
        }
    }
}

/// Merge `updates` into `previous`: a condition whose status is unchanged keeps its
/// `lastTransitionTime`; conditions not updated are kept as they were; a
/// [`CondUpdate::removed`] drops its type.
pub fn merge_conditions(
    previous: &[Condition],
    updates: &[CondUpdate],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous.to_vec();
    for u in updates {
        if u.remove {
            out.retain(|c| c.type_ != u.type_);
            continue;
        }
        let status = if u.status { "True" } else { "False" }.to_string();
        let existing = out.iter_mut().find(|c| c.type_ == u.type_);
        match existing {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = rfc3339(now);
                }
                c.status = status;
                c.reason = u.reason.clone();
                c.message = u.message.clone();
                c.observed_generation = generation;
            }
            None => out.push(Condition {
                type_: u.type_.to_string(),
                status,
                reason: u.reason.clone(),
                message: u.message.clone(),
                last_transition_time: rfc3339(now),
                observed_generation: generation,
            }),
        }
    }
    let order = [READY, SOURCE_REACHABLE, SCALING_LIMITED];
    out.sort_by_key(|c| {
        order
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(order.len())
    });
    out
}

/// RFC 3339 with second precision, as Kubernetes writes times.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("valid")
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = merge_conditions(
            &[],
            &[CondUpdate::new(READY, true, "Scaled", "ok")],
            Some(1),
            ts(0),
        );
        let second = merge_conditions(
            &first,
            &[CondUpdate::new(READY, true, "Observed", "still ok")],
            Some(2),
            ts(60),
        );
        assert_eq!(second[0].last_transition_time, rfc3339(ts(0)));
        assert_eq!(second[0].message, "still ok");
        assert_eq!(second[0].observed_generation, Some(2));
        let third = merge_conditions(
            &second,
            &[CondUpdate::new(READY, false, "Unreachable", "down")],
            Some(2),
            ts(120),
        );
        assert_eq!(third[0].last_transition_time, rfc3339(ts(120)));
        assert_eq!(third[0].status, "False");
    }

    #[test]
    fn conditions_are_ordered_and_others_kept() {
        let first = merge_conditions(
            &[],
            &[
                CondUpdate::new(SCALING_LIMITED, false, "WithinBounds", ""),
                CondUpdate::new(READY, true, "Ok", ""),
            ],
            None,
            ts(0),
        );
        let second = merge_conditions(
            &first,
            &[CondUpdate::new(SOURCE_REACHABLE, true, "Observed", "")],
            None,
            ts(5),
        );
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![READY, SOURCE_REACHABLE, SCALING_LIMITED]);
    }

    #[test]
    fn a_removed_condition_is_dropped_and_others_kept() {
        let first = merge_conditions(
            &[],
            &[
                CondUpdate::new(READY, true, "Ok", ""),
                CondUpdate::new("Redrive", false, "NoDeadLetter", "refused"),
            ],
            None,
            ts(0),
        );
        let second = merge_conditions(&first, &[CondUpdate::removed("Redrive")], None, ts(5));
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![READY]);
        // Removing what is not there changes nothing.
        assert_eq!(
            merge_conditions(&second, &[CondUpdate::removed("Redrive")], None, ts(9)),
            second
        );
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(ts(0)), "2023-11-14T22:13:20Z");
    }
}
