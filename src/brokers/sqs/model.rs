//! Pure SQS rules: names, URLs, ARNs, the redrive policies and depth counting. No I/O.

pub use crate::spec::names::{
    QueueArn, QueueUrl, is_aws_endpoint, is_fifo_name, is_queue_name, is_region, partition_of,
};
use serde_json::{Value, json};

/// A source queue's `RedrivePolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub dead_letter_target_arn: String,
    pub max_receive_count: i64,
}

impl RedrivePolicy {
    /// Parse what SQS returns (`maxReceiveCount` may be a number or a string). `None` for an
    /// empty or unreadable policy.
    pub fn parse(raw: &str) -> Option<RedrivePolicy> {
        let v: Value = serde_json::from_str(raw).ok()?;
        let arn = v.get("deadLetterTargetArn")?.as_str()?.to_string();
        let count = match v.get("maxReceiveCount")? {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        Some(RedrivePolicy {
            dead_letter_target_arn: arn,
            max_receive_count: count,
        })
    }

    pub fn to_json(&self) -> String {
        json!({
            "deadLetterTargetArn": self.dead_letter_target_arn,
            "maxReceiveCount": self.max_receive_count,
        })
        .to_string()
    }
}

/// A DLQ's `RedriveAllowPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowPolicy {
    AllowAll,
    DenyAll,
    ByQueue(Vec<String>),
}

/// SQS accepts at most this many source ARNs in a `byQueue` policy.
pub const MAX_ALLOWED_SOURCES: usize = 10;

impl AllowPolicy {
    pub fn parse(raw: &str) -> Option<AllowPolicy> {
        let v: Value = serde_json::from_str(raw).ok()?;
        match v.get("redrivePermission")?.as_str()? {
            "allowAll" => Some(AllowPolicy::AllowAll),
            "denyAll" => Some(AllowPolicy::DenyAll),
            "byQueue" => {
                let mut arns: Vec<String> = v
                    .get("sourceQueueArns")?
                    .as_array()?
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                arns.sort();
                arns.dedup();
                Some(AllowPolicy::ByQueue(arns))
            }
            _ => None,
        }
    }

    pub fn to_json(&self) -> String {
        match self {
            AllowPolicy::AllowAll => json!({"redrivePermission": "allowAll"}),
            AllowPolicy::DenyAll => json!({"redrivePermission": "denyAll"}),
            AllowPolicy::ByQueue(arns) => {
                json!({"redrivePermission": "byQueue", "sourceQueueArns": arns})
            }
        }
        .to_string()
    }

    /// The policy nerite wants on a DLQ that currently has `current`: `byQueue` including
    /// `source` (other sources already allowed stay allowed, up to SQS's limit).
    pub fn with_source(current: Option<&AllowPolicy>, source: &str) -> AllowPolicy {
        let mut arns = match current {
            Some(AllowPolicy::ByQueue(arns)) => arns.clone(),
            _ => Vec::new(),
        };
        if !arns.iter().any(|a| a == source) {
            if arns.len() >= MAX_ALLOWED_SOURCES {
                arns.remove(0);
            }
            arns.push(source.to_string());
        }
        arns.sort();
        AllowPolicy::ByQueue(arns)
    }

    /// The policy after nerite stops managing `source`: `None` when nothing needs writing.
    pub fn without_source(current: Option<&AllowPolicy>, source: &str) -> Option<AllowPolicy> {
        match current {
            Some(AllowPolicy::ByQueue(arns)) if arns.iter().any(|a| a == source) => {
                let rest: Vec<String> = arns.iter().filter(|a| *a != source).cloned().collect();
                Some(if rest.is_empty() {
                    AllowPolicy::AllowAll
                } else {
                    AllowPolicy::ByQueue(rest)
                })
            }
            _ => None,
        }
    }
}

/// The three counts SQS reports for a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    /// `ApproximateNumberOfMessages`.
    pub visible: i64,
    /// `ApproximateNumberOfMessagesNotVisible`.
    pub in_flight: i64,
    /// `ApproximateNumberOfMessagesDelayed`.
    pub delayed: i64,
}

impl Depth {
    /// KEDA's counting: visible, plus in-flight and delayed when asked.
    pub fn backlog(&self, include_in_flight: bool, include_delayed: bool) -> i64 {
        let mut n = self.visible;
        if include_in_flight {
            n = n.saturating_add(self.in_flight);
        }
        if include_delayed {
            n = n.saturating_add(self.delayed);
        }
        n
    }

    /// From GetQueueAttributes' string values. Errors name the missing or bad attribute.
    pub fn from_attributes(get: impl Fn(&str) -> Option<String>) -> Result<Depth, String> {
        let count = |name: &str| -> Result<i64, String> {
            let raw = get(name).ok_or_else(|| format!("the answer has no {name}"))?;
            match raw.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Ok(n),
                _ => Err(format!("{name} is not a count: {raw:?}")),
            }
        };
        Ok(Depth {
            visible: count("ApproximateNumberOfMessages")?,
            in_flight: count("ApproximateNumberOfMessagesNotVisible")?,
            delayed: count("ApproximateNumberOfMessagesDelayed")?,
        })
    }
}

/// What to do with the source's `RedrivePolicy` this tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyPlan {
    /// It is as wanted.
    Keep,
    /// Set it for the first time.
    Set,
    /// nerite set it before and someone changed or removed it: restore.
    Restore { found: Option<RedrivePolicy> },
}

/// Compare the policy SQS reports with the one wanted. `managed`: nerite set a policy on
/// this queue before (status says so).
pub fn plan_policy(current: Option<&str>, wanted: &RedrivePolicy, managed: bool) -> PolicyPlan {
    let found = current
        .filter(|s| !s.trim().is_empty())
        .and_then(RedrivePolicy::parse);
    match found {
        Some(p) if &p == wanted => PolicyPlan::Keep,
        found if managed => PolicyPlan::Restore { found },
        _ => PolicyPlan::Set,
    }
}

/// After the `deadLetter` section is removed: true when the source's policy is still the
/// one nerite set (pointing at `dlq_arn`), so nerite removes it.
pub fn should_remove_policy(current: Option<&str>, dlq_arn: &str) -> bool {
    current
        .and_then(RedrivePolicy::parse)
        .is_some_and(|p| p.dead_letter_target_arn == dlq_arn)
}

/// A FIFO deduplication id for a redriven message: stable for one request and one DLQ
/// message, so resending it after an interruption is deduplicated by SQS within its
/// five-minute window, and never equal to the id the message was first sent with.
pub fn dedup_id(request_id: &str, message_id: &str) -> String {
    // FNV-1a, 64 bit: short and stable across versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let id: String = message_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(100)
        .collect();
    format!("nerite-{h:016x}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_names() {
        for r in ["eu-west-1", "us-gov-west-1", "ap-southeast-2", "cn-north-1"] {
            assert!(is_region(r), "{r}");
        }
        for r in ["", "eu", "eu-west", "EU-west-1", "eu-west-1a", "e-west-1"] {
            assert!(!is_region(r), "{r}");
        }
        assert!(is_queue_name("orders"));
        assert!(is_queue_name("orders-dlq.fifo"));
        assert!(is_queue_name(&"a".repeat(80)));
        assert!(!is_queue_name(&"a".repeat(81)));
        assert!(!is_queue_name(".fifo"));
        assert!(!is_queue_name("a.b"));
        assert!(!is_queue_name("a b"));
    }

    #[test]
    fn queue_urls() {
        let u = QueueUrl::parse("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo")
            .expect("valid");
        assert_eq!(u.name, "orders.fifo");
        assert_eq!(u.account.as_deref(), Some("123456789012"));
        assert_eq!(u.region.as_deref(), Some("eu-west-1"));
        assert!(u.fifo());
        let legacy =
            QueueUrl::parse("https://us-east-2.queue.amazonaws.com/123456789012/q").expect("ok");
        assert_eq!(legacy.region.as_deref(), Some("us-east-2"));
        let local = QueueUrl::parse("http://127.0.0.1:4566/000000000000/q").expect("ok");
        assert_eq!(local.region, None);
        assert_eq!(local.account.as_deref(), Some("000000000000"));
        assert!(QueueUrl::parse("sqs.eu-west-1.amazonaws.com/1/q").is_err());
        assert!(QueueUrl::parse("https://sqs.eu-west-1.amazonaws.com/").is_err());
        assert!(QueueUrl::parse("https://sqs.eu-west-1.amazonaws.com/q").is_err());
        assert!(QueueUrl::parse("https://sqs.eu-west-1.amazonaws.com/123456789012/a.b").is_err());
        let creds = QueueUrl::parse("https://AKIA:secret@sqs.eu-west-1.amazonaws.com/1/q")
            .expect_err("refused");
        assert!(!creds.contains("secret"), "{creds}");
    }

    #[test]
    fn arns() {
        let a = QueueArn::parse("arn:aws:sqs:eu-west-1:123456789012:orders-dlq").expect("ok");
        assert_eq!(a.region, "eu-west-1");
        assert_eq!(a.name, "orders-dlq");
        assert_eq!(
            a.to_string(),
            "arn:aws:sqs:eu-west-1:123456789012:orders-dlq"
        );
        for bad in [
            "arn:aws:sqs:eu-west-1:12345:q",
            "arn:aws:sns:eu-west-1:123456789012:q",
            "arn:aws:sqs:nowhere:123456789012:q",
            "arn:aws:sqs:eu-west-1:123456789012",
            "arn:aws:sqs:eu-west-1:123456789012:q:x",
            "aws:sqs:eu-west-1:123456789012:q",
        ] {
            assert!(QueueArn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redrive_policy_parse_and_compare() {
        let wanted = RedrivePolicy {
            dead_letter_target_arn: "arn:aws:sqs:eu-west-1:123456789012:dlq".into(),
            max_receive_count: 3,
        };
        let as_string = r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:dlq","maxReceiveCount":"3"}"#;
        assert_eq!(RedrivePolicy::parse(as_string), Some(wanted.clone()));
        assert_eq!(
            RedrivePolicy::parse(&wanted.to_json()),
            Some(wanted.clone())
        );
        assert_eq!(
            plan_policy(Some(as_string), &wanted, true),
            PolicyPlan::Keep
        );
        assert_eq!(plan_policy(None, &wanted, false), PolicyPlan::Set);
        assert_eq!(plan_policy(Some(""), &wanted, false), PolicyPlan::Set);
        assert_eq!(
            plan_policy(None, &wanted, true),
            PolicyPlan::Restore { found: None }
        );
        let drifted = RedrivePolicy {
            max_receive_count: 9,
            ..wanted.clone()
        };
        assert_eq!(
            plan_policy(Some(&drifted.to_json()), &wanted, true),
            PolicyPlan::Restore {
                found: Some(drifted.clone())
            }
        );
        assert!(should_remove_policy(
            Some(&drifted.to_json()),
            &wanted.dead_letter_target_arn
        ));
        assert!(!should_remove_policy(
            Some(&drifted.to_json()),
            "arn:aws:sqs:eu-west-1:123456789012:x"
        ));
        assert!(!should_remove_policy(None, &wanted.dead_letter_target_arn));
    }

    #[test]
    fn allow_policy_union() {
        let a = "arn:aws:sqs:eu-west-1:123456789012:a";
        let b = "arn:aws:sqs:eu-west-1:123456789012:b";
        assert_eq!(
            AllowPolicy::with_source(None, a),
            AllowPolicy::ByQueue(vec![a.into()])
        );
        assert_eq!(
            AllowPolicy::with_source(Some(&AllowPolicy::AllowAll), a),
            AllowPolicy::ByQueue(vec![a.into()])
        );
        let both = AllowPolicy::with_source(Some(&AllowPolicy::ByQueue(vec![b.into()])), a);
        assert_eq!(both, AllowPolicy::ByQueue(vec![a.into(), b.into()]));
        assert_eq!(AllowPolicy::parse(&both.to_json()), Some(both.clone()));
        assert_eq!(
            AllowPolicy::without_source(Some(&both), a),
            Some(AllowPolicy::ByQueue(vec![b.into()]))
        );
        assert_eq!(
            AllowPolicy::without_source(Some(&AllowPolicy::ByQueue(vec![a.into()])), a),
            Some(AllowPolicy::AllowAll)
        );
        assert_eq!(
            AllowPolicy::without_source(Some(&AllowPolicy::DenyAll), a),
            None
        );
    }

    #[test]
    fn depth_counts_like_keda() {
        let d = Depth {
            visible: 10,
            in_flight: 4,
            delayed: 3,
        };
        assert_eq!(d.backlog(true, false), 14);
        assert_eq!(d.backlog(false, false), 10);
        assert_eq!(d.backlog(true, true), 17);
        let attrs = |n: &str| match n {
            "ApproximateNumberOfMessages" => Some("10".to_string()),
            "ApproximateNumberOfMessagesNotVisible" => Some("4".to_string()),
            "ApproximateNumberOfMessagesDelayed" => Some("3".to_string()),
            _ => None,
        };
        assert_eq!(Depth::from_attributes(attrs), Ok(d));
        let missing = Depth::from_attributes(|_| None).expect_err("missing");
        assert!(missing.contains("ApproximateNumberOfMessages"), "{missing}");
        let negative = Depth::from_attributes(|_| Some("-1".into())).expect_err("negative");
        assert!(negative.contains("not a count"), "{negative}");
    }

    #[test]
    fn dedup_ids_are_stable_and_bounded() {
        let a = dedup_id("r1", "5fea7756-0ea4-451a-a703-a558b933e274");
        assert_eq!(a, dedup_id("r1", "5fea7756-0ea4-451a-a703-a558b933e274"));
        assert_ne!(a, dedup_id("r2", "5fea7756-0ea4-451a-a703-a558b933e274"));
        assert!(a.len() <= 128);
        assert!(dedup_id(&"x".repeat(500), &"y".repeat(500)).len() <= 128);
    }

    #[test]
    fn aws_endpoints() {
        assert!(is_aws_endpoint(None));
        assert!(is_aws_endpoint(Some("https://sqs.eu-west-1.amazonaws.com")));
        assert!(is_aws_endpoint(Some(
            "https://vpce-1-2.sqs.eu-west-1.vpce.amazonaws.com"
        )));
        assert!(!is_aws_endpoint(Some("http://127.0.0.1:5000")));
    }
}
