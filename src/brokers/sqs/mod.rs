//! Amazon SQS: queue depth, the dead-letter (redrive) policy nerite manages, and redrives.
//!
//! - [`model`]: pure rules (URLs, ARNs, policies, depth counting).
//! - this file: the shared SDK clients and one depth read per poll.
//! - [`deadletter`]: the `deadLetter` section, applied each tick (policy, drift, removal).
//! - [`redrive`]: moving messages from the DLQ back to the source, once per request id.
//!
//! One SDK client per region and endpoint is shared by every ScaledConsumer that points
//! there; credentials from a Secret are applied per request, so objects with different
//! Secrets still share the client's connections. Reads of the same queue with the same
//! identity that arrive within [`COALESCE`] of each other share one `GetQueueAttributes`.

pub mod deadletter;
pub mod model;
pub mod redrive;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials as AwsCredentials, Region};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use jiff::Timestamp;

use self::model::{Depth, QueueUrl};
use crate::brokers::Source;
use crate::core::error::SourceError;
use crate::core::observation::Credentials;
use crate::core::observation::Observation;

/// Reads of one queue within this long of each other share one request.
pub const COALESCE: Duration = Duration::from_millis(1000);

/// One SQS queue and how to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct SqsTarget {
    pub queue_url: String,
    pub region: String,
    /// Endpoint override; `None`: the region's public endpoint.
    pub endpoint: Option<String>,
    /// From a Secret (user name = access key id); `None`: the default AWS chain.
    pub credentials: Option<Credentials>,
    pub include_in_flight: bool,
    pub include_delayed: bool,
}

/// One read of a queue: the depth parts and what the dead-letter management needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SqsReading {
    pub depth: Depth,
    pub queue_arn: Option<String>,
    /// `RedrivePolicy` as SQS reports it (absent when none).
    pub redrive_policy: Option<String>,
    pub observed_at: Timestamp,
}

impl SqsReading {
    pub fn observation(&self, target: &SqsTarget) -> Observation {
        Observation {
            backlog: self
                .depth
                .backlog(target.include_in_flight, target.include_delayed),
            ready: Some(self.depth.visible),
            unacked: Some(self.depth.in_flight),
            consumers: None,
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
            consumer_utilisation: None,
            observed_at: self.observed_at,
            replica_cap: None,
        }
    }
}

/// Region, endpoint, queue URL and the whole identity (access key id and secret key): two
/// objects share a reading only when they would send the very same signed request.
type ReadKey = (String, Option<String>, String, String, String);
type ReadSlot = Arc<tokio::sync::Mutex<Option<(Instant, SqsReading)>>>;

/// The SQS side of nerite: shared clients, the last reading of each queue, running redrives.
pub struct SqsApi {
    timeout: Duration,
    http: aws_sdk_sqs::config::SharedHttpClient,
    clients: tokio::sync::Mutex<HashMap<(String, Option<String>), Client>>,
    reads: Mutex<HashMap<ReadKey, ReadSlot>>,
    calls: Arc<AtomicU64>,
    pub(crate) dead_letters: deadletter::DeadLetterCache,
    pub(crate) redrives: redrive::Redrives,
}

impl SqsApi {
    /// `timeout` bounds one read (connection set-up and retries included).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            http: https_client(),
            clients: tokio::sync::Mutex::default(),
            reads: Mutex::default(),
            calls: Arc::new(AtomicU64::new(0)),
            dead_letters: deadletter::DeadLetterCache::default(),
            redrives: redrive::Redrives::default(),
        }
    }

    /// HTTP requests sent to SQS so far, retries included (for benchmarks and metrics).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// SDK clients built so far (one per region and endpoint).
    pub async fn client_count(&self) -> usize {
        self.clients.lock().await.len()
    }

    /// The shared client for a region and endpoint, with the request's credentials.
    pub(crate) async fn conn(&self, target: &SqsTarget) -> Result<Conn, SourceError> {
        let key = (target.region.clone(), target.endpoint.clone());
        let mut clients = self.clients.lock().await;
        let client = match clients.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = build_client(
                    &target.region,
                    target.endpoint.as_deref(),
                    self.http.clone(),
                    self.timeout,
                    self.calls.clone(),
                )
                .await?;
                clients.insert(key, c.clone());
                c
            }
        };
        Ok(Conn {
            client,
            credentials: target.credentials.as_ref().map(|c| {
                AwsCredentials::new(
                    c.username.clone(),
                    c.password().to_string(),
                    None,
                    None,
                    "nerite-secret",
                )
            }),
            endpoint: endpoint_label(&target.region, target.endpoint.as_deref()),
            region: target.region.clone(),
            timeout: self.timeout,
        })
    }

    /// Read a queue: one `GetQueueAttributes` (shared with other readers of the same queue
    /// within [`COALESCE`]).
    pub async fn read(&self, target: &SqsTarget) -> Result<SqsReading, SourceError> {
        let url = QueueUrl::parse(&target.queue_url)
            .map_err(|why| SourceError::InvalidConfig(format!("the queue URL {why}")))?;
        let key: ReadKey = (
            target.region.clone(),
            target.endpoint.clone(),
            target.queue_url.clone(),
            target
                .credentials
                .as_ref()
                .map(|c| c.username.clone())
                .unwrap_or_default(),
            target
                .credentials
                .as_ref()
                .map(|c| c.password().to_string())
                .unwrap_or_default(),
        );
        let slot = {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.entry(key).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some((at, reading)) = cached.as_ref()
            && at.elapsed() < COALESCE
        {
            return Ok(reading.clone());
        }
        let conn = self.conn(target).await?;
        let reading = conn.read(&target.queue_url, &url.name).await?;
        *cached = Some((Instant::now(), reading.clone()));
        Ok(reading)
    }

    /// The last successful reading of a queue, if recent (used by the dead-letter step of
    /// the same tick, so it costs no request).
    pub fn last_reading(&self, target: &SqsTarget, max_age: Duration) -> Option<SqsReading> {
        let key: ReadKey = (
            target.region.clone(),
            target.endpoint.clone(),
            target.queue_url.clone(),
            target
                .credentials
                .as_ref()
                .map(|c| c.username.clone())
                .unwrap_or_default(),
            target
                .credentials
                .as_ref()
                .map(|c| c.password().to_string())
                .unwrap_or_default(),
        );
        let slot = self
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()?;
        let cached = slot.try_lock().ok()?;
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, r)| r.clone())
    }
}

impl Source for SqsApi {
    type Target = SqsTarget;

    async fn observe(&self, target: &SqsTarget) -> Result<Observation, SourceError> {
        Ok(self.read(target).await?.observation(target))
    }
}

/// One TLS-capable HTTP client (rustls with ring) for every SDK client.
pub fn https_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// An SDK client for a region and endpoint: the default credential chain (environment,
/// IRSA web identity, container and instance roles) unless a request brings its own.
pub async fn build_client(
    region: &str,
    endpoint: Option<&str>,
    http: aws_sdk_sqs::config::SharedHttpClient,
    timeout: Duration,
    calls: Arc<AtomicU64>,
) -> Result<Client, SourceError> {
    let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .connect_timeout(timeout)
        .operation_timeout(timeout)
        .build();
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http)
        .timeout_config(timeouts)
        .load()
        .await;
    let mut builder = aws_sdk_sqs::config::Builder::from(&shared)
        .interceptor(CountCalls(calls))
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::standard().with_max_attempts(2));
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Ok(Client::from_conf(builder.build()))
}

/// Counts HTTP requests (each attempt).
#[derive(Debug)]
struct CountCalls(Arc<AtomicU64>);

impl aws_sdk_sqs::config::Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "nerite-count-calls"
    }

    fn read_before_transmit(
        &self,
        _ctx: &aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _rc: &aws_sdk_sqs::config::RuntimeComponents,
        _cfg: &mut aws_sdk_sqs::config::ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// How an endpoint is named in messages.
pub fn endpoint_label(region: &str, endpoint: Option<&str>) -> String {
    match endpoint.and_then(|e| reqwest::Url::parse(e).ok()) {
        Some(url) => format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        None => format!("sqs.{region}.amazonaws.com"),
    }
}

/// A shared client plus the credentials of one request.
#[derive(Clone)]
pub(crate) struct Conn {
    pub client: Client,
    pub credentials: Option<AwsCredentials>,
    pub endpoint: String,
    pub region: String,
    pub timeout: Duration,
}

/// Send a request with the connection's credentials (if any).
macro_rules! send {
    ($conn:expr, $req:expr) => {{
        let req = $req;
        match &$conn.credentials {
            Some(c) => {
                req.customize()
                    .config_override(
                        aws_sdk_sqs::config::Builder::default().credentials_provider(c.clone()),
                    )
                    .send()
                    .await
            }
            None => req.send().await,
        }
    }};
}
pub(crate) use send;

impl Conn {
    /// Depth, ARN and redrive policy of one queue.
    pub async fn read(&self, queue_url: &str, name: &str) -> Result<SqsReading, SourceError> {
        let out = send!(
            self,
            self.client
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .attribute_names(QueueAttributeName::QueueArn)
                .attribute_names(QueueAttributeName::RedrivePolicy)
        )
        .map_err(|e| self.error(e, name))?;
        let attrs = out.attributes().cloned().unwrap_or_default();
        let get = |n: &str| attrs.get(&QueueAttributeName::from(n)).cloned();
        let depth = Depth::from_attributes(get).map_err(|detail| SourceError::Protocol {
            endpoint: self.endpoint.clone(),
            detail,
        })?;
        Ok(SqsReading {
            depth,
            queue_arn: attrs.get(&QueueAttributeName::QueueArn).cloned(),
            redrive_policy: attrs
                .get(&QueueAttributeName::RedrivePolicy)
                .filter(|p| !p.trim().is_empty())
                .cloned(),
            observed_at: Timestamp::now(),
        })
    }

    /// Classify an SDK error. Messages name the endpoint and queue, never a credential.
    pub fn error<E>(&self, err: SdkError<E, HttpResponse>, queue: &str) -> SourceError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        classify(err, &self.endpoint, &self.region, queue, self.timeout)
    }
}

/// What went wrong with an SQS call, as a [`SourceError`].
pub fn classify<E>(
    err: SdkError<E, HttpResponse>,
    endpoint: &str,
    region: &str,
    queue: &str,
    timeout: Duration,
) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let endpoint = endpoint.to_string();
    match err {
        SdkError::TimeoutError(_) => SourceError::Timeout {
            endpoint,
            after: timeout,
        },
        SdkError::DispatchFailure(f) => {
            let chain = f
                .as_connector_error()
                .map(|c| error_chain(c))
                .unwrap_or_else(|| format!("{f:?}"));
            if f.is_timeout() {
                SourceError::Timeout {
                    endpoint,
                    after: timeout,
                }
            } else if chain.contains("dns error") || chain.contains("failed to lookup") {
                SourceError::Dns {
                    endpoint,
                    detail: "the host name does not resolve".into(),
                }
            } else if chain.to_ascii_lowercase().contains("credentials") {
                SourceError::AwsCredentials {
                    endpoint,
                    detail: "no credentials: set credentialsSecretRef or give the operator an \
                             AWS identity (IRSA, instance role, environment)"
                        .into(),
                }
            } else {
                SourceError::Unreachable {
                    endpoint,
                    detail: first_line(&chain),
                }
            }
        }
        SdkError::ServiceError(ctx) => {
            let e = ctx.err();
            let raw = ctx.raw();
            let body = raw
                .body()
                .bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            // Some endpoints answer authorization failures in the query protocol's XML.
            let code = e
                .code()
                .map(str::to_string)
                .or_else(|| xml_field(&body, "Code"))
                .unwrap_or_default();
            let message = e
                .message()
                .map(str::to_string)
                .or_else(|| xml_field(&body, "Message"))
                .unwrap_or_default();
            match (code.as_str(), raw.status().as_u16()) {
                ("", 401) => SourceError::AwsCredentials {
                    endpoint,
                    detail: "HTTP 401: check the access key".into(),
                },
                ("", 403) => SourceError::Forbidden {
                    endpoint,
                    detail: format!("HTTP 403 on queue {queue:?}"),
                },
                ("", status) => SourceError::Protocol {
                    endpoint,
                    detail: format!("HTTP {status} without an SQS error code"),
                },
                _ => service_error(&code, &message, endpoint, region, queue),
            }
        }
        other => {
            let chain = error_chain(&other);
            if chain.to_ascii_lowercase().contains("credentials") {
                SourceError::AwsCredentials {
                    endpoint,
                    detail: "no credentials: set credentialsSecretRef or give the operator an \
                             AWS identity (IRSA, instance role, environment)"
                        .into(),
                }
            } else {
                SourceError::Protocol {
                    endpoint,
                    detail: first_line(&chain),
                }
            }
        }
    }
}

/// Map an SQS error code.
pub fn service_error(
    code: &str,
    message: &str,
    endpoint: String,
    region: &str,
    queue: &str,
) -> SourceError {
    let short = |s: &str| s.chars().take(300).collect::<String>();
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
            SourceError::SqsQueueNotFound {
                endpoint,
                region: region.to_string(),
                queue: queue.to_string(),
            }
        }
        "AccessDenied" | "AccessDeniedException" | "KMS.AccessDeniedException" => {
            SourceError::Forbidden {
                endpoint,
                detail: format!("{code} on queue {queue:?}: {}", short(message)),
            }
        }
        "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "SignatureDoesNotMatch"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "MissingAuthenticationToken"
        | "InvalidAccessKeyId" => SourceError::AwsCredentials {
            endpoint,
            detail: format!(
                "{code}: check the access key in the credentials Secret or the operator's AWS identity"
            ),
        },
        _ => SourceError::Protocol {
            endpoint,
            detail: if code.is_empty() {
                "an error without a code".to_string()
            } else {
                format!("{code}: {}", short(message))
            },
        },
    }
}

/// `<Name>value</Name>` in an XML error body.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{name}>"))?;
    let v = body[start..start + len].trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_classified() {
        let e = || "http://127.0.0.1:1".to_string();
        assert_eq!(
            service_error("QueueDoesNotExist", "", e(), "eu-west-1", "q").reason(),
            "QueueNotFound"
        );
        assert_eq!(
            service_error("AWS.SimpleQueueService.NonExistentQueue", "", e(), "r", "q").reason(),
            "QueueNotFound"
        );
        assert_eq!(
            service_error("AccessDenied", "not allowed", e(), "r", "q").reason(),
            "Forbidden"
        );
        assert_eq!(
            service_error("InvalidClientTokenId", "", e(), "r", "q").reason(),
            "Unauthorized"
        );
        let other = service_error("Boom", "it broke", e(), "r", "q");
        assert_eq!(other.reason(), "ProtocolError");
        assert!(other.to_string().contains("Boom: it broke"), "{other}");
        let missing = service_error("QueueDoesNotExist", "", e(), "eu-west-1", "orders");
        assert!(
            missing.to_string().contains("region eu-west-1"),
            "{missing}"
        );
    }

    #[test]
    fn xml_errors() {
        let body = "<ErrorResponse><Error><Code>AccessDenied</Code><Message>User: x is not \
                    authorized</Message></Error></ErrorResponse>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("AccessDenied"));
        assert!(xml_field(body, "Message").is_some_and(|m| m.contains("not authorized")));
        assert_eq!(xml_field("<Code></Code>", "Code"), None);
        assert_eq!(xml_field("{}", "Code"), None);
    }

    #[test]
    fn endpoint_labels() {
        assert_eq!(
            endpoint_label("eu-west-1", None),
            "sqs.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            endpoint_label("eu-west-1", Some("http://127.0.0.1:5000/")),
            "http://127.0.0.1:5000"
        );
    }
}
