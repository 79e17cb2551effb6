//! The dead-letter policy nerite puts on a source queue: pure construction.
//!
//! - The policy matches exactly one queue: pattern `^<queue, regex-escaped>$`, applied to
//!   queues only, named `nerite.dlx.<queue>`. nerite never writes or deletes other policies.
//! - RabbitMQ applies one policy per queue (the highest priority). So that nerite's policy does
//!   not silently drop a user's settings, it takes priority one above the highest other policy
//!   matching the queue and carries that policy's keys (except the dead-letter keys nerite
//!   sets); status names the policy whose keys were carried.
//! - Classic and quorum queues get different definitions: `delivery-limit` exists for quorum
//!   queues only, and on RabbitMQ 3.10 a policy carrying `delivery-limit` that matches a
//!   classic queue silently disables that queue's dead-lettering. For a classic queue nerite
//!   never sets `delivery-limit` (and drops one carried from a user policy), and says so.
//! - Streams cannot dead-letter.

use serde_json::{Map, Value, json};

use super::manage::Policy;

/// Keys nerite owns in its policy.
const OWN_KEYS: [&str; 3] = [
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
];

/// Lowest priority of nerite's policies.
pub const BASE_PRIORITY: i64 = 10;

/// Name of nerite's policy for `queue`.
pub fn policy_name(queue: &str) -> String {
    format!("nerite.dlx.{queue}")
}

/// `^queue$` with regular-expression metacharacters escaped.
pub fn exact_pattern(queue: &str) -> String {
    let mut out = String::from("^");
    for c in queue.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

/// What to put on the broker, and what to tell the user.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub policy: Policy,
    /// Notes for the status (ignored settings, carried keys).
    pub notes: Vec<String>,
}

/// Why no policy can be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Streams do not support dead-lettering.
    UnsupportedQueueType(String),
}

/// Plan nerite's policy for `queue` of `queue_type`. `others`: the vhost's policies whose
/// pattern matches the queue (nerite's own excluded), as the caller found them.
pub fn plan(
    queue: &str,
    queue_type: &str,
    exchange: &str,
    routing_key: &str,
    max_deliveries: Option<u32>,
    others: &[Policy],
) -> Result<Plan, PlanError> {
    let quorum = match queue_type {
        "quorum" => true,
        "classic" => false,
        other => return Err(PlanError::UnsupportedQueueType(other.to_owned())),
    };
    let mut notes = Vec::new();
    let mut definition = Map::new();
    let winner = others
        .iter()
        .filter(|p| p.apply_to == "queues" || p.apply_to == "all" || p.apply_to.is_empty())
        .max_by_key(|p| p.priority);
    let priority = winner.map_or(BASE_PRIORITY, |w| (w.priority + 1).max(BASE_PRIORITY));
    if let Some(w) = winner {
        let carried: Vec<&String> = w
            .definition
            .keys()
            .filter(|k| !OWN_KEYS.contains(&k.as_str()))
            .collect();
        for k in &carried {
            definition.insert((*k).clone(), w.definition[k.as_str()].clone());
        }
        if !carried.is_empty() {
            notes.push(format!(
                "carries {} from policy {:?}",
                carried
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                w.name
            ));
        }
        if !quorum && w.definition.contains_key("delivery-limit") {
            notes.push(format!(
                "dropped delivery-limit of policy {:?}: on a classic queue it disables dead-lettering",
                w.name
            ));
        }
    }
    definition.insert("dead-letter-exchange".into(), json!(exchange));
    definition.insert("dead-letter-routing-key".into(), json!(routing_key));
    match (quorum, max_deliveries) {
        (true, Some(n)) => {
            definition.insert("delivery-limit".into(), json!(n));
        }
        (false, Some(_)) => notes.push(
            "maxDeliveries ignored: classic queues have no delivery limit (a delivery-limit \
             policy on a classic queue disables its dead-lettering)"
                .into(),
        ),
        _ => {}
    }
    Ok(Plan {
        policy: Policy {
            name: policy_name(queue),
            pattern: exact_pattern(queue),
            apply_to: "queues".into(),
            priority,
            definition,
        },
        notes,
    })
}

/// Whether the broker's copy of a policy already says what `want` says.
pub fn same_policy(have: &Policy, want: &Policy) -> bool {
    have.pattern == want.pattern
        && have.apply_to == want.apply_to
        && have.priority == want.priority
        && Value::Object(have.definition.clone()) == Value::Object(want.definition.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, priority: i64, def: Value) -> Policy {
        Policy {
            name: name.into(),
            pattern: ".*".into(),
            apply_to: "queues".into(),
            priority,
            definition: def.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn classic_never_gets_delivery_limit() {
        let p = plan(
            "orders",
            "classic",
            "orders.dlx",
            "orders.dlq",
            Some(3),
            &[],
        );
        let p = p.expect("classic is supported");
        assert!(!p.policy.definition.contains_key("delivery-limit"));
        assert_eq!(p.policy.definition["dead-letter-exchange"], "orders.dlx");
        assert!(p.notes.iter().any(|n| n.contains("maxDeliveries ignored")));
        // Not even one carried from a user's policy.
        let user = policy("limits", 0, json!({"delivery-limit": 5, "max-length": 100}));
        let p = plan("orders", "classic", "x", "k", None, &[user]).expect("planned");
        assert!(!p.policy.definition.contains_key("delivery-limit"));
        assert_eq!(p.policy.definition["max-length"], 100);
    }

    #[test]
    fn quorum_gets_delivery_limit() {
        let p = plan("jobs", "quorum", "jobs.dlx", "jobs.dlq", Some(3), &[]).expect("planned");
        assert_eq!(p.policy.definition["delivery-limit"], 3);
        assert_eq!(p.policy.pattern, "^jobs$");
        assert_eq!(p.policy.apply_to, "queues");
        assert_eq!(p.policy.priority, BASE_PRIORITY);
    }

    #[test]
    fn carries_the_winning_user_policy_and_outranks_it() {
        let low = policy("low", 1, json!({"message-ttl": 1000}));
        let high = policy(
            "high",
            40,
            json!({"max-length": 10, "dead-letter-exchange": "theirs"}),
        );
        let p = plan("q", "classic", "mine", "k", None, &[low, high]).expect("planned");
        assert_eq!(p.policy.priority, 41);
        assert_eq!(p.policy.definition["max-length"], 10);
        assert_eq!(p.policy.definition["dead-letter-exchange"], "mine");
        assert!(!p.policy.definition.contains_key("message-ttl"));
        assert!(p.notes.iter().any(|n| n.contains("\"high\"")));
    }

    #[test]
    fn streams_are_refused() {
        assert_eq!(
            plan("s", "stream", "x", "k", None, &[]).map(|_| ()),
            Err(PlanError::UnsupportedQueueType("stream".into()))
        );
    }

    #[test]
    fn pattern_matches_exactly_one_name() {
        assert_eq!(exact_pattern("a.b-c"), r"^a\.b-c$");
        let re = regex::Regex::new(&exact_pattern("orders.v1")).expect("valid regex");
        assert!(re.is_match("orders.v1"));
        assert!(!re.is_match("ordersXv1"));
        assert!(!re.is_match("orders.v1.dlq"));
    }
}
