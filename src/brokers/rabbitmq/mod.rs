//! RabbitMQ queue depth and rates from the management plugin's HTTP API, or depth alone
//! through AMQP ([`amqp`], for brokers without the management plugin).
//!
//! One observation is one `GET /api/queues/{vhost}/{queue}?columns=...` (nested columns such as
//! `message_stats.publish_details.rate` work on RabbitMQ 3.10 and later). Only when that answers
//! 404 does a second, cheap request (`GET /api/exchanges/{vhost}/amq.default`, allowed for
//! non-administrators) tell an unknown vhost from an unknown queue.
//!
//! The management API reports authorization failures as HTTP 401 with a reason; a failed login
//! ("Login failed") becomes [`SourceError::Unauthorized`], a missing user tag or vhost
//! permission becomes [`SourceError::Forbidden`].
//!
//! Credentials travel only in the `Authorization` header. Management URLs that carry
//! credentials are refused, and no error text is built from anything that could hold them.
//!
//! The operator does not call [`Source::observe`] per object: [`poller::SharedPoller`] serves
//! every ScaledConsumer on one endpoint and vhost from one listing per tick. [`manage`] holds
//! the writes (dead-letter topology, policies, shovels), [`prefetch`], [`deadletter`] and
//! [`redrive`] the pure decisions, and [`reconcile`] ties them to one ScaledConsumer.

pub mod amqp;
pub mod deadletter;
pub mod manage;
pub mod poller;
pub mod prefetch;
pub mod reconcile;
pub mod redrive;

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::brokers::Source;
use crate::core::error::SourceError;
use crate::core::observation::Credentials;
use crate::core::observation::Observation;

/// One RabbitMQ queue, with the credentials to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct RabbitMqTarget {
    /// Base URL of the management API, e.g. `http://127.0.0.1:15672`.
    pub management_url: String,
    pub vhost: String,
    pub queue: String,
    /// Count unacknowledged messages toward the backlog.
    pub include_unacked: bool,
    pub credentials: Credentials,
}

/// Reads queues through the management API. One HTTP client per endpoint, shared.
pub struct ManagementApi {
    timeout: Duration,
    /// Keyed by `scheme://host:port`.
    clients: Mutex<HashMap<String, reqwest::Client>>,
    calls: AtomicU64,
    bytes: AtomicU64,
}

/// Management API traffic since the client was created: requests sent and response body
/// bytes received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub calls: u64,
    pub bytes: u64,
}

impl Traffic {
    /// Traffic between an earlier reading and this one.
    pub fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            calls: self.calls.saturating_sub(earlier.calls),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

impl ManagementApi {
    /// `timeout` bounds one whole [`Source::observe`] call, connection set-up included.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            clients: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Requests made and bytes received so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            calls: self.calls.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The deadline of one operation started now.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn client(&self, endpoint: &Endpoint) -> Result<reqwest::Client, SourceError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&endpoint.key) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nerite/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Protocol {
                endpoint: endpoint.key.clone(),
                detail: format!("cannot build an HTTP client: {}", error_chain(&e)),
            })?;
        clients.insert(endpoint.key.clone(), client.clone());
        Ok(client)
    }

    /// One GET; returns status and body, or the classified transport failure.
    async fn get(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint,
        url: Url,
        credentials: &Credentials,
        deadline: Instant,
    ) -> Result<(StatusCode, Vec<u8>), SourceError> {
        self.request(
            client,
            endpoint,
            reqwest::Method::GET,
            url,
            None,
            credentials,
            deadline,
        )
        .await
    }

    /// One request with an optional JSON body; returns status and body, or the classified
    /// transport failure. Counted in [`ManagementApi::traffic`].
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint,
        method: reqwest::Method,
        url: Url,
        body: Option<&serde_json::Value>,
        credentials: &Credentials,
        deadline: Instant,
    ) -> Result<(StatusCode, Vec<u8>), SourceError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(self.timeout_error(endpoint));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        let send = async {
            let mut request = client
                .request(method, url)
                .basic_auth(&credentials.username, Some(credentials.password()))
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(remaining);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            self.bytes.fetch_add(
                u64::try_from(body.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            Ok::<_, reqwest::Error>((status, body.to_vec()))
        };
        // The client's own timeouts should fire first; this is the backstop for the contract.
        match tokio::time::timeout(remaining, send).await {
            Err(_elapsed) => Err(self.timeout_error(endpoint)),
            Ok(Err(e)) => Err(classify_transport(
                &e,
                &endpoint.key,
                self.timeout,
                credentials,
            )),
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    fn timeout_error(&self, endpoint: &Endpoint) -> SourceError {
        SourceError::Timeout {
            endpoint: endpoint.key.clone(),
            after: self.timeout,
        }
    }
}

impl Source for ManagementApi {
    type Target = RabbitMqTarget;

    async fn observe(&self, target: &RabbitMqTarget) -> Result<Observation, SourceError> {
        let deadline = Instant::now() + self.timeout;
        let endpoint = Endpoint::parse(&target.management_url)?;
        check_name("vhost", &target.vhost)?;
        check_name("queue", &target.queue)?;
        let client = self.client(&endpoint)?;
        let credentials = &target.credentials;

        let url = endpoint.queue_url(&target.vhost, &target.queue);
        let (status, body) = self
            .get(&client, &endpoint, url, credentials, deadline)
            .await?;
        if status == StatusCode::NOT_FOUND {
            if api_reason(&body).is_none() {
                // Not the management API's own 404: the URL points elsewhere.
                return Err(SourceError::Protocol {
                    endpoint: endpoint.key.clone(),
                    detail: "HTTP 404 without the management API's error body; check that the \
                             URL is the management API's base URL"
                        .into(),
                });
            }
            return Err(self.not_found(&client, &endpoint, target, deadline).await);
        }
        if !status.is_success() {
            return Err(classify_status(
                status,
                &body,
                &endpoint.key,
                target,
                credentials,
            ));
        }
        let stats = parse_queue(&body).map_err(|detail| SourceError::Protocol {
            endpoint: endpoint.key.clone(),
            detail: scrub(detail, credentials),
        })?;
        stats.to_observation(target.include_unacked, Timestamp::now(), &endpoint.key)
    }
}

impl ManagementApi {
    /// The queue lookup said 404: find out whether the vhost exists.
    async fn not_found(
        &self,
        client: &reqwest::Client,
        endpoint: &Endpoint,
        target: &RabbitMqTarget,
        deadline: Instant,
    ) -> SourceError {
        let url = endpoint.vhost_probe_url(&target.vhost);
        match self
            .get(client, endpoint, url, &target.credentials, deadline)
            .await
        {
            Ok((status, _)) if status == StatusCode::NOT_FOUND => SourceError::VhostNotFound {
                endpoint: endpoint.key.clone(),
                vhost: target.vhost.clone(),
            },
            Ok((status, _)) if status.is_success() => SourceError::QueueNotFound {
                endpoint: endpoint.key.clone(),
                vhost: target.vhost.clone(),
                queue: target.queue.clone(),
            },
            Ok((status, body)) => {
                classify_status(status, &body, &endpoint.key, target, &target.credentials)
            }
            Err(e) => e,
        }
    }
}

/// The columns one observation needs; everything else the API would compute is skipped.
const QUEUE_COLUMNS: &str = "messages,messages_ready,messages_unacknowledged,consumers,\
consumer_utilisation,message_stats.publish_details.rate,message_stats.deliver_get_details.rate,\
message_stats.ack_details.rate";

/// Path segment encoding: everything but unreserved characters, so `/` in a vhost becomes
/// `%2F` and the default vhost `/` is `%2F`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A validated management base URL.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    base: Url,
    /// `scheme://host:port`: the client map key and the endpoint named in errors.
    key: String,
}

impl Endpoint {
    fn parse(raw: &str) -> Result<Endpoint, SourceError> {
        // Never echo `raw`: it may hold credentials.
        let base = Url::parse(raw.trim()).map_err(|e| {
            SourceError::InvalidConfig(format!("the management URL does not parse: {e}"))
        })?;
        if !base.username().is_empty() || base.password().is_some() {
            return Err(SourceError::InvalidConfig(
                "the management URL must not carry credentials; put them in the credentials \
                 Secret"
                    .into(),
            ));
        }
        let scheme = base.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(SourceError::InvalidConfig(format!(
                "the management URL must use http or https, not {scheme:?}"
            )));
        }
        let host = match base.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => {
                return Err(SourceError::InvalidConfig(
                    "the management URL has no host".into(),
                ));
            }
        };
        if base.query().is_some() || base.fragment().is_some() {
            return Err(SourceError::InvalidConfig(
                "the management URL must not have a query or fragment".into(),
            ));
        }
        let port = base
            .port_or_known_default()
            .ok_or_else(|| SourceError::InvalidConfig("the management URL has no port".into()))?;
        let key = format!("{scheme}://{host}:{port}");
        Ok(Endpoint { base, key })
    }

    /// `base` + `/api/` + already-encoded `rest`, keeping any path prefix of the base (for a
    /// management API served under a sub-path).
    fn api_url(&self, rest: &str, query: &str) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}/api/{rest}"));
        url.set_query(Some(query));
        url
    }

    fn queue_url(&self, vhost: &str, queue: &str) -> Url {
        self.api_url(
            &format!("queues/{}/{}", encode_segment(vhost), encode_segment(queue)),
            &format!("columns={QUEUE_COLUMNS}"),
        )
    }

    /// Every vhost has the default exchange, and users without the administrator tag may read
    /// it (unlike `/api/vhosts/{vhost}`).
    fn vhost_probe_url(&self, vhost: &str) -> Url {
        self.api_url(
            &format!("exchanges/{}/amq.default", encode_segment(vhost)),
            "columns=name",
        )
    }
}

fn check_name(what: &str, name: &str) -> Result<(), SourceError> {
    if name.is_empty() {
        return Err(SourceError::InvalidConfig(format!(
            "the {what} name is empty"
        )));
    }
    // URL normalization would turn these into path navigation.
    if name == "." || name == ".." {
        return Err(SourceError::InvalidConfig(format!(
            "the {what} name {name:?} cannot be read through the management API"
        )));
    }
    Ok(())
}

/// The queue fields this source reads. Everything is optional on the wire; what is required is
/// decided in [`QueueStats::to_observation`].
#[derive(Debug, Default, Deserialize, PartialEq)]
struct QueueStats {
    /// Present in listings.
    name: Option<String>,
    messages: Option<i64>,
    messages_ready: Option<i64>,
    messages_unacknowledged: Option<i64>,
    consumers: Option<i64>,
    consumer_utilisation: Option<f64>,
    /// The same measure under its RabbitMQ 3.12+ name.
    consumer_capacity: Option<f64>,
    message_stats: Option<MessageStats>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
struct MessageStats {
    publish_details: Option<Rate>,
    deliver_get_details: Option<Rate>,
    ack_details: Option<Rate>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
struct Rate {
    rate: Option<f64>,
}

/// Parse a queue object. Errors are human-readable details for [`SourceError::Protocol`].
fn parse_queue(body: &[u8]) -> Result<QueueStats, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the queue answer is not JSON: {e}"))?;
    match value {
        serde_json::Value::Object(_) => serde_json::from_value(value)
            .map_err(|e| format!("the queue answer has unexpected fields: {e}")),
        // With `columns`, a queue the statistics database has not seen yet comes back as `[]`.
        serde_json::Value::Array(items) if items.is_empty() => Ok(QueueStats::default()),
        _ => Err("the queue answer is not a JSON object".into()),
    }
}

impl QueueStats {
    fn to_observation(
        &self,
        include_unacked: bool,
        observed_at: Timestamp,
        endpoint: &str,
    ) -> Result<Observation, SourceError> {
        let protocol = |detail: &str| SourceError::Protocol {
            endpoint: endpoint.to_owned(),
            detail: detail.to_owned(),
        };
        let ready = self.messages_ready.ok_or_else(|| {
            protocol(
                "the broker has no message counts for this queue yet (new queue, or statistics \
                 collection is off)",
            )
        })?;
        let backlog = if include_unacked {
            match (self.messages_unacknowledged, self.messages) {
                (Some(unacked), _) => ready.saturating_add(unacked),
                (None, Some(total)) => total,
                (None, None) => {
                    return Err(protocol(
                        "the broker reports no unacknowledged count for this queue",
                    ));
                }
            }
        } else {
            ready
        };
        if backlog < 0 {
            return Err(protocol("the broker reports a negative message count"));
        }
        let stats = self.message_stats.clone().unwrap_or_default();
        let rate = |r: Option<Rate>| r.and_then(|r| r.rate).filter(|v| v.is_finite());
        Ok(Observation {
            backlog,
            ready: Some(ready),
            unacked: self.messages_unacknowledged,
            consumers: self.consumers,
            publish_rate: rate(stats.publish_details),
            deliver_rate: rate(stats.deliver_get_details),
            ack_rate: rate(stats.ack_details),
            consumer_utilisation: self
                .consumer_utilisation
                .or(self.consumer_capacity)
                .filter(|v| v.is_finite()),
            observed_at,
            replica_cap: None,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
struct ApiError {
    error: Option<String>,
    reason: Option<String>,
}

/// The management API's `{"error": ..., "reason": ...}` as one short line.
fn api_reason(body: &[u8]) -> Option<String> {
    let e: ApiError = serde_json::from_slice(body).ok()?;
    let text = match (e.error, e.reason) {
        (_, Some(reason)) if !reason.is_empty() => reason,
        (Some(error), _) if !error.is_empty() => error,
        _ => return None,
    };
    Some(text.chars().take(200).collect())
}

fn classify_status(
    status: StatusCode,
    body: &[u8],
    endpoint: &str,
    target: &RabbitMqTarget,
    credentials: &Credentials,
) -> SourceError {
    let reason = api_reason(body);
    let endpoint = endpoint.to_owned();
    let user = &credentials.username;
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            let lower = reason.as_deref().unwrap_or_default().to_ascii_lowercase();
            if lower.contains("not management user") || lower.contains("not monitor") {
                SourceError::Forbidden {
                    endpoint,
                    detail: format!(
                        "user {user:?} needs the monitoring or management tag to use the \
                         management API"
                    ),
                }
            } else if lower.contains("virtual host") || lower.contains("vhost") {
                SourceError::Forbidden {
                    endpoint,
                    detail: format!(
                        "user {user:?} has no permissions on vhost {:?}",
                        target.vhost
                    ),
                }
            } else if status == StatusCode::FORBIDDEN || lower.contains("not administrator") {
                SourceError::Forbidden {
                    endpoint,
                    detail: scrub(
                        format!(
                            "user {user:?}: {}",
                            reason.as_deref().unwrap_or("forbidden")
                        ),
                        credentials,
                    ),
                }
            } else {
                SourceError::Unauthorized { endpoint }
            }
        }
        _ => {
            let detail = match reason {
                Some(reason) => format!("HTTP {}: {reason}", status.as_u16()),
                None => format!("HTTP {}", status.as_u16()),
            };
            SourceError::Protocol {
                endpoint,
                detail: scrub(detail, credentials),
            }
        }
    }
}

/// Classify a failed request. Only the causes below `reqwest::Error` are used for the detail:
/// reqwest's own Display includes the request URL.
fn classify_transport(
    e: &reqwest::Error,
    endpoint: &str,
    timeout: Duration,
    credentials: &Credentials,
) -> SourceError {
    let endpoint = endpoint.to_owned();
    if e.is_timeout() {
        return SourceError::Timeout {
            endpoint,
            after: timeout,
        };
    }
    let detail = scrub(error_chain(e), credentials);
    let mut dns = false;
    let mut closed = false;
    let mut io_kind = None;
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
            if io.kind() == std::io::ErrorKind::TimedOut {
                return SourceError::Timeout {
                    endpoint,
                    after: timeout,
                };
            }
        }
        let text = c.to_string();
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            dns = true;
        }
        // hyper's wording when a kept-alive connection died under the request (the broker was
        // killed or restarted): the peer is gone, not misbehaving.
        if text.contains("connection closed before message completed") {
            closed = true;
        }
        cause = c.source();
    }
    if dns {
        return SourceError::Dns { endpoint, detail };
    }
    if e.is_connect() || io_kind.is_some_and(peer_gone) || closed {
        SourceError::Unreachable { endpoint, detail }
    } else {
        SourceError::Protocol { endpoint, detail }
    }
}

/// I/O failures that mean the broker cannot be reached (refused, reset, gone), as opposed to
/// one that answers wrongly. Shared by the management API and the AMQP reader.
fn peer_gone(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::AddrNotAvailable
            | K::BrokenPipe
            | K::UnexpectedEof
    )
}

/// The causes of an error, outermost first, without the error's own message.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    if parts.is_empty() {
        "request failed".to_owned()
    } else {
        parts.join(": ")
    }
}

/// Last line of defence: a detail that somehow contains the password is replaced whole.
fn scrub(detail: String, credentials: &Credentials) -> String {
    let password = credentials.password();
    if !password.is_empty() && detail.contains(password) {
        "details withheld because they may contain a credential".to_owned()
    } else {
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> RabbitMqTarget {
        RabbitMqTarget {
            management_url: url.into(),
            vhost: "/".into(),
            queue: "work".into(),
            include_unacked: true,
            credentials: Credentials::new("app", "s3cret-pw"),
        }
    }

    /// Recorded from RabbitMQ 3.10.8 with the columns this source requests.
    const BUSY: &str = r#"{"consumer_utilisation":0.75,"consumers":2,"message_stats":{
        "ack_details":{"rate":4.2},"deliver_get_details":{"rate":4.4},
        "publish_details":{"rate":5.0}},"messages":17,"messages_ready":12,
        "messages_unacknowledged":5}"#;

    /// A queue that has seen no traffic: no `message_stats` at all.
    const IDLE: &str = r#"{"consumer_utilisation":0,"consumers":0,"messages":3,
        "messages_ready":3,"messages_unacknowledged":0}"#;

    fn observe(body: &str, include_unacked: bool) -> Result<Observation, SourceError> {
        let stats = parse_queue(body.as_bytes()).map_err(|d| SourceError::Protocol {
            endpoint: "e".into(),
            detail: d,
        })?;
        stats.to_observation(include_unacked, Timestamp::UNIX_EPOCH, "e")
    }

    #[test]
    fn parses_busy_queue() -> Result<(), SourceError> {
        let o = observe(BUSY, true)?;
        assert_eq!(o.backlog, 17);
        assert_eq!(o.ready, Some(12));
        assert_eq!(o.unacked, Some(5));
        assert_eq!(o.consumers, Some(2));
        assert_eq!(o.publish_rate, Some(5.0));
        assert_eq!(o.deliver_rate, Some(4.4));
        assert_eq!(o.ack_rate, Some(4.2));
        assert_eq!(o.consumer_utilisation, Some(0.75));
        Ok(())
    }

    #[test]
    fn include_unacked_off_counts_ready_only() -> Result<(), SourceError> {
        assert_eq!(observe(BUSY, false)?.backlog, 12);
        Ok(())
    }

    #[test]
    fn missing_message_stats_gives_no_rates() -> Result<(), SourceError> {
        let o = observe(IDLE, true)?;
        assert_eq!(o.backlog, 3);
        assert_eq!(o.publish_rate, None);
        assert_eq!(o.deliver_rate, None);
        assert_eq!(o.ack_rate, None);
        Ok(())
    }

    #[test]
    fn partial_message_stats() -> Result<(), SourceError> {
        let o = observe(
            r#"{"messages_ready":1,"messages_unacknowledged":0,
               "message_stats":{"publish_details":{"rate":0.0}}}"#,
            false,
        )?;
        assert_eq!(o.publish_rate, Some(0.0));
        assert_eq!(o.deliver_rate, None);
        assert_eq!(o.consumers, None);
        Ok(())
    }

    #[test]
    fn unacked_falls_back_to_total() -> Result<(), SourceError> {
        let o = observe(r#"{"messages":9,"messages_ready":4}"#, true)?;
        assert_eq!(o.backlog, 9);
        Ok(())
    }

    #[test]
    fn fresh_queue_without_statistics_is_a_protocol_error() {
        for body in ["[]", r#"{"name":"q2","durable":true}"#] {
            let e = observe(body, true);
            assert!(
                matches!(e, Err(SourceError::Protocol { .. })),
                "{body}: {e:?}"
            );
        }
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        for body in [
            "<html>",
            "",
            r#"{"messages_ready":"many"}"#,
            "[1]",
            "42",
            r#"{"messages_ready":-1,"messages_unacknowledged":0}"#,
        ] {
            assert!(
                matches!(observe(body, true), Err(SourceError::Protocol { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn null_utilisation_is_none() -> Result<(), SourceError> {
        let o = observe(
            r#"{"messages_ready":0,"messages_unacknowledged":0,"consumer_utilisation":null}"#,
            true,
        )?;
        assert_eq!(o.consumer_utilisation, None);
        Ok(())
    }

    #[test]
    fn builds_encoded_urls() -> Result<(), SourceError> {
        let e = Endpoint::parse("http://127.0.0.1:15672")?;
        assert_eq!(e.key, "http://127.0.0.1:15672");
        let url = e.queue_url("/", "orders");
        assert_eq!(url.path(), "/api/queues/%2F/orders");
        assert_eq!(
            url.query(),
            Some(format!("columns={QUEUE_COLUMNS}").as_str())
        );
        let url = e.queue_url("team/a", "q with space#1?x=%");
        assert_eq!(
            url.path(),
            "/api/queues/team%2Fa/q%20with%20space%231%3Fx%3D%25"
        );
        let url = e.queue_url("v", "é.q-_~");
        assert_eq!(url.path(), "/api/queues/v/%C3%A9.q-_~");
        assert_eq!(
            e.vhost_probe_url("/").path(),
            "/api/exchanges/%2F/amq.default"
        );
        Ok(())
    }

    #[test]
    fn keeps_path_prefix_and_default_ports() -> Result<(), SourceError> {
        let e = Endpoint::parse("https://rabbit.example.com/mgmt/")?;
        assert_eq!(e.key, "https://rabbit.example.com:443");
        assert_eq!(e.queue_url("/", "q").path(), "/mgmt/api/queues/%2F/q");
        let e = Endpoint::parse("http://rabbit")?;
        assert_eq!(e.key, "http://rabbit:80");
        assert_eq!(e.queue_url("/", "q").path(), "/api/queues/%2F/q");
        Ok(())
    }

    #[test]
    fn rejects_bad_urls_without_echoing_them() {
        for raw in [
            "http://admin:hunter22@rabbit:15672",
            "http://admin@rabbit:15672",
            "not a url hunter22",
            "ftp://rabbit/",
            "http://rabbit:15672/?x=hunter22",
            "",
        ] {
            match Endpoint::parse(raw) {
                Err(e @ SourceError::InvalidConfig(_)) => {
                    let text = e.to_string();
                    assert!(!text.contains("hunter22"), "{text}");
                    assert!(e.is_permanent());
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_unreadable_names() {
        assert!(check_name("queue", "").is_err());
        assert!(check_name("queue", "..").is_err());
        assert!(check_name("vhost", "/").is_ok());
    }

    fn status(code: u16, body: &str) -> SourceError {
        let t = target("http://h:1");
        classify_status(
            StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
            body.as_bytes(),
            "http://h:1",
            &t,
            &t.credentials,
        )
    }

    #[test]
    fn classifies_statuses() {
        assert!(matches!(
            status(401, r#"{"error":"not_authorized","reason":"Login failed"}"#),
            SourceError::Unauthorized { .. }
        ));
        assert!(matches!(status(401, ""), SourceError::Unauthorized { .. }));
        match status(
            401,
            r#"{"error":"not_authorised","reason":"Not management user"}"#,
        ) {
            SourceError::Forbidden { detail, .. } => assert!(detail.contains("monitoring")),
            other => panic!("{other:?}"),
        }
        match status(
            401,
            r#"{"error":"not_authorised","reason":"User not authorised to access virtual host"}"#,
        ) {
            SourceError::Forbidden { detail, .. } => assert!(detail.contains("vhost")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(status(403, "{}"), SourceError::Forbidden { .. }));
        match status(503, r#"{"error":"x","reason":"busy"}"#) {
            SourceError::Protocol { detail, .. } => assert_eq!(detail, "HTTP 503: busy"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(status(302, ""), SourceError::Protocol { .. }));
    }

    #[test]
    fn scrub_withholds_password() {
        let c = Credentials::new("u", "s3cret-pw");
        assert_eq!(scrub("fine".into(), &c), "fine");
        assert!(!scrub("oops s3cret-pw".into(), &c).contains("s3cret"));
    }

    #[test]
    fn target_debug_hides_password() {
        let text = format!("{:?}", target("http://h:1"));
        assert!(!text.contains("s3cret-pw"), "{text}");
    }

    #[tokio::test]
    async fn invalid_config_before_any_request() {
        let api = ManagementApi::new(Duration::from_secs(1));
        let e = api.observe(&target("http://app:s3cret-pw@h:1")).await;
        match e {
            Err(e @ SourceError::InvalidConfig(_)) => assert!(!e.to_string().contains("s3cret")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() -> Result<(), std::io::Error> {
        // Bind then drop to get a port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let api = ManagementApi::new(Duration::from_secs(2));
        let e = api
            .observe(&target(&format!("http://127.0.0.1:{port}")))
            .await;
        assert!(matches!(e, Err(SourceError::Unreachable { .. })), "{e:?}");
        Ok(())
    }

    #[tokio::test]
    async fn connection_dropped_without_answer_is_unreachable() -> Result<(), std::io::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                if let Ok((socket, _)) = listener.accept().await {
                    drop(socket);
                }
            }
        });
        let api = ManagementApi::new(Duration::from_secs(2));
        let e = api
            .observe(&target(&format!("http://127.0.0.1:{port}")))
            .await;
        server.abort();
        assert!(matches!(e, Err(SourceError::Unreachable { .. })), "{e:?}");
        Ok(())
    }

    /// Serve `answer` to every connection, after reading the request head.
    async fn canned_server(
        answer: &'static str,
    ) -> Result<(u16, tokio::task::JoinHandle<()>), std::io::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        Ok((port, task))
    }

    #[tokio::test]
    async fn foreign_404_is_not_a_missing_vhost() -> Result<(), std::io::Error> {
        let (port, server) = canned_server(
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot here!",
        )
        .await?;
        let api = ManagementApi::new(Duration::from_secs(2));
        let e = api
            .observe(&target(&format!("http://127.0.0.1:{port}/wrong")))
            .await;
        server.abort();
        assert!(matches!(e, Err(SourceError::Protocol { .. })), "{e:?}");
        Ok(())
    }

    #[tokio::test]
    async fn server_error_and_garbage_are_protocol_errors() -> Result<(), std::io::Error> {
        for answer in [
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{\"mes",
            "garbage that is not HTTP\r\n\r\n",
        ] {
            let (port, server) = canned_server(answer).await?;
            let api = ManagementApi::new(Duration::from_secs(2));
            let e = api
                .observe(&target(&format!("http://127.0.0.1:{port}")))
                .await;
            server.abort();
            match e {
                Err(e @ SourceError::Protocol { .. }) => {
                    assert!(!format!("{e} {e:?}").contains("s3cret-pw"), "{e}");
                }
                other => panic!("{answer:?}: {other:?}"),
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn silent_server_times_out() -> Result<(), std::io::Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let api = ManagementApi::new(Duration::from_millis(300));
        let started = Instant::now();
        let e = api
            .observe(&target(&format!("http://127.0.0.1:{port}")))
            .await;
        assert!(matches!(e, Err(SourceError::Timeout { .. })), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
        Ok(())
    }

    #[test]
    fn one_client_per_endpoint() -> Result<(), SourceError> {
        let api = ManagementApi::new(Duration::from_secs(1));
        api.client(&Endpoint::parse("http://a:1/x")?)?;
        api.client(&Endpoint::parse("http://a:1/y")?)?;
        api.client(&Endpoint::parse("http://b:1")?)?;
        let n = api.clients.lock().map(|m| m.len()).unwrap_or_default();
        assert_eq!(n, 2);
        Ok(())
    }
}
