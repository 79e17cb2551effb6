//! Broker addresses and names as specs write them, checked without I/O: SQS queue names,
//! URLs, ARNs and regions, and AMQP URLs. Validation ([`super::validate`]) and the brokers
//! share these rules.

use std::fmt;

use crate::core::error::SourceError;

/// Longest SQS queue name, `.fifo` included.
const MAX_NAME: usize = 80;

/// `eu-west-1`, `us-gov-west-1`, `cn-north-1`, ...
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// An SQS queue name: letters, digits, `-`, `_`; FIFO names end in `.fifo`; at most 80.
pub fn is_queue_name(s: &str) -> bool {
    let base = s.strip_suffix(".fifo").unwrap_or(s);
    !base.is_empty()
        && s.len() <= MAX_NAME
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// FIFO queues are named `*.fifo`.
pub fn is_fifo_name(name: &str) -> bool {
    name.ends_with(".fifo")
}

/// The AWS partition of a region.
pub fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// True for AWS's own SQS endpoints (no override, or an `amazonaws.com` / `api.aws` host).
pub fn is_aws_endpoint(endpoint: Option<&str>) -> bool {
    let Some(raw) = endpoint else {
        return true;
    };
    let Ok(url) = reqwest::Url::parse(raw) else {
        return false;
    };
    url.host_str().is_some_and(|h| {
        h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn") || h.ends_with(".api.aws")
    })
}

/// A parsed queue URL: `https://sqs.eu-west-1.amazonaws.com/123456789012/orders`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueUrl {
    pub name: String,
    /// The owning account, when the URL names one.
    pub account: Option<String>,
    /// The region, when the host is an AWS endpoint that names it.
    pub region: Option<String>,
}

impl QueueUrl {
    /// Parse and check a queue URL. Errors follow a field name ("... must ...").
    pub fn parse(raw: &str) -> Result<QueueUrl, String> {
        let raw = raw.trim();
        if !(raw.starts_with("https://") || raw.starts_with("http://")) {
            return Err("must be an http:// or https:// URL".into());
        }
        let url = reqwest::Url::parse(raw).map_err(|e| format!("is not a valid URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("must name a host")?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query or fragment".into());
        }
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let Some((name, rest)) = segments.split_last() else {
            return Err("must end with the queue name (…/ACCOUNT/NAME)".into());
        };
        if !is_queue_name(name) {
            return Err(format!(
                "ends with {name:?}, which is not an SQS queue name (letters, digits, - and _, \
                 at most 80 characters, FIFO names end in .fifo)"
            ));
        }
        let account = rest
            .last()
            .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()))
            .map(|a| a.to_string());
        let region = region_of_host(host);
        if region.is_some() && account.as_deref().is_none_or(|a| a.len() != 12) {
            return Err("must name the 12-digit account before the queue name".into());
        }
        Ok(QueueUrl {
            name: name.to_string(),
            account,
            region,
        })
    }

    pub fn fifo(&self) -> bool {
        is_fifo_name(&self.name)
    }
}

/// `sqs.REGION.amazonaws.com[.cn]`, `REGION.queue.amazonaws.com`, `sqs.REGION.api.aws`.
fn region_of_host(host: &str) -> Option<String> {
    let labels: Vec<&str> = host.split('.').collect();
    let aws = host.ends_with(".amazonaws.com")
        || host.ends_with(".amazonaws.com.cn")
        || host.ends_with(".api.aws");
    if !aws || labels.len() < 3 {
        return None;
    }
    let candidate = if labels[0] == "sqs" || labels[0].starts_with("vpce") {
        labels[1]
    } else if labels[1] == "queue" {
        labels[0]
    } else {
        return None;
    };
    is_region(candidate).then(|| candidate.to_string())
}

/// `arn:PARTITION:sqs:REGION:ACCOUNT:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueArn {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub name: String,
}

impl QueueArn {
    pub fn parse(raw: &str) -> Result<QueueArn, String> {
        let parts: Vec<&str> = raw.split(':').collect();
        if parts.len() != 6 {
            return Err("expected 6 colon-separated parts: arn:aws:sqs:REGION:ACCOUNT:NAME".into());
        }
        if parts[0] != "arn" || !parts[1].starts_with("aws") {
            return Err("must start with arn:aws".into());
        }
        if parts[2] != "sqs" {
            return Err(format!("names service {:?}, not sqs", parts[2]));
        }
        if !is_region(parts[3]) {
            return Err(format!("{:?} is not a region", parts[3]));
        }
        if parts[4].len() != 12 || !parts[4].bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{:?} is not a 12-digit account id", parts[4]));
        }
        if !is_queue_name(parts[5]) {
            return Err(format!("{:?} is not a queue name", parts[5]));
        }
        Ok(QueueArn {
            partition: parts[1].to_string(),
            region: parts[3].to_string(),
            account: parts[4].to_string(),
            name: parts[5].to_string(),
        })
    }
}

impl fmt::Display for QueueArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:sqs:{}:{}:{}",
            self.partition, self.region, self.account, self.name
        )
    }
}

/// A checked AMQP URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpEndpoint {
    pub tls: bool,
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// `amqp://host:port`: the endpoint named in errors.
    pub key: String,
}

impl AmqpEndpoint {
    /// Parse an `amqpUrl`. Errors never quote the URL: a refused one may hold credentials.
    pub fn parse(raw: &str) -> Result<AmqpEndpoint, SourceError> {
        let invalid = |why: &str| SourceError::InvalidConfig(format!("the AMQP URL {why}"));
        let url = url::Url::parse(raw.trim()).map_err(|e| {
            SourceError::InvalidConfig(format!("the AMQP URL is not a valid URL: {e}"))
        })?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(SourceError::InvalidConfig(format!(
                    "the AMQP URL must use amqp or amqps, not {other:?}"
                )));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "must not contain credentials (user info before the host): use \
                 credentialsSecretRef",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("must not have a query or fragment"));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(invalid(
                "must not name a vhost in its path; use spec.source.rabbitmq.vhost",
            ));
        }
        let host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("has no host"))?;
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(invalid(
                "has a host name with characters a host name cannot have",
            ));
        }
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        if port == 0 {
            return Err(invalid("has port 0"));
        }
        let scheme = if tls { "amqps" } else { "amqp" };
        let shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(AmqpEndpoint {
            tls,
            host: host.to_owned(),
            port,
            key: format!("{scheme}://{shown}:{port}"),
        })
    }
}
