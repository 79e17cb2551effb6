//! RabbitMQ queue depth through AMQP 0-9-1 alone, for brokers without the management plugin.
//!
//! One observation is one passive `queue.declare`: the broker answers with the queue's ready
//! message count and its consumer count, and changes nothing. That is all AMQP tells: there is
//! no unacknowledged count and no publish, deliver or ack rate, so an observation from this
//! reader has `backlog = ready = message_count`, `consumers`, and nothing else.
//!
//! Connections are shared: [`AmqpReader`] keeps one connection (with one channel) per endpoint,
//! vhost and login, used by every ScaledConsumer that reads there, opened on first use,
//! reopened after any failure, and closed once nobody has read through it for
//! [`FORGET_AFTER`]. Declares on a connection run one at a time. A passive declare of a missing
//! queue makes the broker close the channel (`404 NOT_FOUND`), so the next declare opens a
//! fresh channel; a connection-level error or a timeout drops the whole connection. Every step
//! (connecting, opening a channel, declaring) finishes within the reader's timeout.
//!
//! Credentials go into the AMQP handshake only. An `amqpUrl` that carries credentials is
//! refused, and no error text is built from anything that could hold them.
//!
//! Errors are classified by [`classify`], a pure function of what failed and where, into the
//! same [`SourceError`]s the management API path gives: a refused login is `Unauthorized`, a
//! missing vhost `VhostNotFound`, a missing queue `QueueNotFound`, a user without access to the
//! vhost or queue `Forbidden`, a refused or dropped connection `Unreachable`, no answer in time
//! `Timeout`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

use super::{peer_gone, scrub};
use crate::brokers::Source;
use crate::core::error::SourceError;
use crate::core::observation::Credentials;
use crate::core::observation::Observation;

/// A connection nobody read through for this long is closed.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// AMQP reply codes nerite tells apart.
mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const NOT_ALLOWED: u16 = 530;
}

/// One RabbitMQ queue read through AMQP, with the credentials to log in.
#[derive(Clone, Debug, PartialEq)]
pub struct AmqpTarget {
    /// `amqp://host[:port]` or `amqps://host[:port]`, without credentials or vhost.
    pub amqp_url: String,
    pub vhost: String,
    pub queue: String,
    pub credentials: Credentials,
}

pub use crate::spec::names::AmqpEndpoint;

/// The URI lapin connects with: the endpoint, the login and the vhost.
fn uri(endpoint: &AmqpEndpoint, vhost: &str, credentials: &Credentials) -> AMQPUri {
    AMQPUri {
        scheme: if endpoint.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: credentials.username.clone(),
                password: credentials.password().to_owned(),
            },
            host: endpoint.host.clone(),
            port: endpoint.port,
        },
        vhost: vhost.to_owned(),
        query: AMQPQueryString::default(),
    }
}

/// Vhost and queue names are AMQP short strings: 1 to 255 bytes.
fn check_name(what: &str, name: &str) -> Result<(), SourceError> {
    if name.is_empty() {
        return Err(SourceError::InvalidConfig(format!(
            "the {what} name is empty"
        )));
    }
    if name.len() > 255 {
        return Err(SourceError::InvalidConfig(format!(
            "the {what} name is longer than 255 bytes, the most AMQP can carry"
        )));
    }
    Ok(())
}

/// What a passive declare answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (`message-count`).
    pub ready: u32,
    /// Consumers attached (`consumer-count`).
    pub consumers: u32,
}

impl QueueCounts {
    /// The observation: the ready count is the backlog; unacknowledged messages and rates are
    /// unknown through AMQP.
    pub fn observation(self, observed_at: Timestamp) -> Observation {
        Observation {
            backlog: i64::from(self.ready),
            ready: Some(i64::from(self.ready)),
            unacked: None,
            consumers: Some(i64::from(self.consumers)),
            publish_rate: None,
            deliver_rate: None,
            ack_rate: None,
            consumer_utilisation: None,
            observed_at,
            replica_cap: None,
        }
    }
}

/// Where a failure happened: the answer to the same reply code means different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// TCP, TLS, login and opening the vhost.
    Connect,
    /// Opening a channel on an open connection.
    Channel,
    /// The passive declare.
    Declare,
}

/// A failure taken out of lapin's error: plain data, so [`classify`] is a pure function.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The broker closed the connection or channel with a reply code and text.
    Closed { code: u16, text: String },
    /// A socket error.
    Io { kind: io::ErrorKind, detail: String },
    /// The TLS handshake failed.
    Tls(String),
    /// The connection was lost or is closing (no reply code).
    Lost(String),
    /// No answer within the deadline.
    Timeout,
    /// Anything else (malformed frames, ...).
    Other(String),
}

impl Failure {
    /// Take the classification-relevant parts out of a lapin error.
    pub fn of(e: &lapin::Error) -> Failure {
        use lapin::ErrorKind as K;
        match e.kind() {
            K::ProtocolError(amqp) => Failure::Closed {
                code: amqp.get_id(),
                text: amqp.get_message().as_str().chars().take(300).collect(),
            },
            K::IOError(io) | K::RuntimeShutdownError(io) => Failure::of_io(io),
            K::InvalidConnectionState(state) => {
                Failure::Lost(format!("the connection is {state:?}").to_lowercase())
            }
            K::InvalidChannelState(state, _) => {
                Failure::Lost(format!("the channel is {state:?}").to_lowercase())
            }
            K::MissingHeartbeatError => {
                Failure::Lost("the broker missed its heartbeats".to_owned())
            }
            other => Failure::Other(format!("{other:?}").chars().take(300).collect()),
        }
    }

    fn of_io(e: &io::Error) -> Failure {
        if e.kind() == io::ErrorKind::TimedOut {
            return Failure::Timeout;
        }
        let mut tls = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
        while let Some(c) = cause {
            if c.downcast_ref::<rustls::Error>().is_some() {
                tls = true;
            }
            cause = c.source();
        }
        let detail = e.to_string();
        if tls {
            Failure::Tls(detail)
        } else {
            Failure::Io {
                kind: e.kind(),
                detail,
            }
        }
    }
}

/// What a failure means for the ScaledConsumer: the same typed errors as the management path.
pub fn classify(
    failure: Failure,
    stage: Stage,
    endpoint: &str,
    target: &AmqpTarget,
    timeout: Duration,
) -> SourceError {
    let endpoint = endpoint.to_owned();
    let user = &target.credentials.username;
    let vhost = &target.vhost;
    let clean = |detail: String| scrub(detail, &target.credentials);
    match failure {
        Failure::Timeout => SourceError::Timeout {
            endpoint,
            after: timeout,
        },
        Failure::Tls(detail) => SourceError::Tls {
            endpoint,
            detail: clean(detail),
        },
        Failure::Io { kind, detail } => {
            if detail.contains("failed to lookup address")
                || detail.contains("Name or service")
                || detail.contains("name resolution")
            {
                return SourceError::Dns {
                    endpoint,
                    detail: clean(detail),
                };
            }
            if peer_gone(kind) {
                SourceError::Unreachable {
                    endpoint,
                    detail: clean(detail),
                }
            } else {
                SourceError::Protocol {
                    endpoint,
                    detail: clean(detail),
                }
            }
        }
        Failure::Lost(detail) => SourceError::Unreachable {
            endpoint,
            detail: clean(format!("{detail}; reconnecting on the next poll")),
        },
        Failure::Other(detail) => SourceError::Protocol {
            endpoint,
            detail: clean(detail),
        },
        Failure::Closed { code, text } => {
            let lower = text.to_ascii_lowercase();
            match (code, stage) {
                (code::ACCESS_REFUSED, Stage::Connect) => SourceError::Unauthorized { endpoint },
                (code::ACCESS_REFUSED, _) => SourceError::Forbidden {
                    endpoint,
                    detail: clean(format!(
                        "user {user:?} was refused queue {:?} in vhost {vhost:?}: {text}",
                        target.queue
                    )),
                },
                (code::NOT_ALLOWED, Stage::Connect) if lower.contains("not found") => {
                    SourceError::VhostNotFound {
                        endpoint,
                        vhost: vhost.clone(),
                    }
                }
                (code::NOT_ALLOWED, Stage::Connect) => SourceError::Forbidden {
                    endpoint,
                    detail: if lower.contains("refused for user")
                        || lower.contains("access to vhost")
                    {
                        format!("user {user:?} has no permissions on vhost {vhost:?}")
                    } else {
                        clean(format!(
                            "the broker refused to open vhost {vhost:?}: {text}"
                        ))
                    },
                },
                (code::NOT_FOUND, Stage::Declare) => SourceError::QueueNotFound {
                    endpoint,
                    vhost: vhost.clone(),
                    queue: target.queue.clone(),
                },
                (code::RESOURCE_LOCKED, Stage::Declare) => SourceError::Forbidden {
                    endpoint,
                    detail: format!(
                        "queue {:?} is exclusive to another connection (RESOURCE_LOCKED)",
                        target.queue
                    ),
                },
                (code::CONNECTION_FORCED, _) => SourceError::Unreachable {
                    endpoint,
                    detail: clean(format!("the broker closed the connection: {text}")),
                },
                _ => SourceError::Protocol {
                    endpoint,
                    detail: clean(format!("AMQP {code}: {text}")),
                },
            }
        }
    }
}

/// Connections are shared only by objects that would open the very same one: same endpoint,
/// vhost and login (an object with a wrong password never reads through another object's
/// connection). No `Debug`: the key holds the password.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ConnKey {
    endpoint: String,
    vhost: String,
    username: String,
    password: String,
}

/// An open connection and its channel (none after the broker closed it).
struct Live {
    connection: lapin::Connection,
    channel: Option<lapin::Channel>,
}

/// The last answer for one queue.
struct Reading {
    taken: Instant,
    result: Result<Observation, SourceError>,
}

#[derive(Default)]
struct SlotState {
    live: Option<Live>,
    /// The last failed connection attempt; not retried within the askers' accepted age.
    failed: Option<(Instant, SourceError)>,
    readings: HashMap<String, Reading>,
}

struct Slot {
    /// Held across a connect or declare: declares on one connection run one at a time.
    state: tokio::sync::Mutex<SlotState>,
    last_used: Mutex<Instant>,
}

/// AMQP traffic since the reader was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmqpTraffic {
    /// Connections opened (successfully).
    pub connections: u64,
    /// Passive declares sent.
    pub declares: u64,
}

/// Reads queues through AMQP. One connection per endpoint, vhost and login, shared.
pub struct AmqpReader {
    timeout: Duration,
    slots: Mutex<HashMap<ConnKey, Arc<Slot>>>,
    connections: AtomicU64,
    declares: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AmqpReader {
    /// `timeout` bounds one whole observation, connecting included.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            slots: Mutex::default(),
            connections: AtomicU64::new(0),
            declares: AtomicU64::new(0),
        }
    }

    pub fn traffic(&self) -> AmqpTraffic {
        AmqpTraffic {
            connections: self.connections.load(Ordering::Relaxed),
            declares: self.declares.load(Ordering::Relaxed),
        }
    }

    /// Connections (endpoint, vhost, login) currently kept, open or failed.
    pub fn connection_count(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Read `target`'s queue, reusing an answer at most `max_age` old (another object on the
    /// same queue asked for it).
    pub async fn observe(
        &self,
        target: &AmqpTarget,
        max_age: Duration,
    ) -> Result<Observation, SourceError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let endpoint = AmqpEndpoint::parse(&target.amqp_url)?;
        check_name("vhost", &target.vhost)?;
        check_name("queue", &target.queue)?;
        let key = ConnKey {
            endpoint: endpoint.key.clone(),
            vhost: target.vhost.clone(),
            username: target.credentials.username.clone(),
            password: target.credentials.password().to_owned(),
        };
        let slot = {
            let now = Instant::now();
            let mut slots = lock(&self.slots);
            // Close what nobody used for a while (a deleted object, a rotated password).
            slots.retain(|_, s| now.duration_since(*lock(&s.last_used)) < FORGET_AFTER);
            let slot = slots
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(Slot {
                        state: tokio::sync::Mutex::default(),
                        last_used: Mutex::new(now),
                    })
                })
                .clone();
            *lock(&slot.last_used) = now;
            slot
        };
        let timeout_error = || SourceError::Timeout {
            endpoint: endpoint.key.clone(),
            after: self.timeout,
        };
        let mut state = tokio::time::timeout_at(deadline, slot.state.lock())
            .await
            .map_err(|_| timeout_error())?;
        let now = Instant::now();
        if let Some(r) = state.readings.get(&target.queue)
            && now.duration_since(r.taken) <= max_age
        {
            return r.result.clone();
        }
        if let Some((at, e)) = &state.failed
            && now.duration_since(*at) <= max_age
        {
            return Err(e.clone());
        }
        let result = self.read(&mut state, &endpoint, target, deadline).await;
        let taken = Instant::now();
        state
            .readings
            .retain(|_, r| taken.duration_since(r.taken) < FORGET_AFTER);
        state.readings.insert(
            target.queue.clone(),
            Reading {
                taken,
                result: result.clone(),
            },
        );
        result
    }

    /// Connect if needed, open a channel if needed, declare. Leaves `state` ready for the next
    /// read: a failed connection or channel is dropped.
    async fn read(
        &self,
        state: &mut SlotState,
        endpoint: &AmqpEndpoint,
        target: &AmqpTarget,
        deadline: tokio::time::Instant,
    ) -> Result<Observation, SourceError> {
        let fail =
            |f: Failure, stage: Stage| classify(f, stage, &endpoint.key, target, self.timeout);
        if state
            .live
            .as_ref()
            .is_some_and(|l| !l.connection.status().connected())
        {
            state.live = None;
        }
        if state.live.is_none() {
            match self.connect(endpoint, target, deadline).await {
                Ok(connection) => {
                    state.failed = None;
                    state.live = Some(Live {
                        connection,
                        channel: None,
                    });
                }
                Err(f) => {
                    let e = fail(f, Stage::Connect);
                    state.failed = Some((Instant::now(), e.clone()));
                    return Err(e);
                }
            }
        }
        let Some(live) = state.live.as_mut() else {
            return Err(fail(Failure::Lost("no connection".into()), Stage::Connect));
        };
        if live
            .channel
            .as_ref()
            .is_some_and(|c| !c.status().connected())
        {
            live.channel = None;
        }
        let channel = match &live.channel {
            Some(c) => c.clone(),
            None => match tokio::time::timeout_at(deadline, live.connection.create_channel()).await
            {
                Ok(Ok(c)) => {
                    live.channel = Some(c.clone());
                    c
                }
                Ok(Err(e)) => {
                    let f = Failure::of(&e);
                    state.live = None;
                    return Err(fail(f, Stage::Channel));
                }
                Err(_) => {
                    state.live = None;
                    return Err(fail(Failure::Timeout, Stage::Channel));
                }
            },
        };
        self.declares.fetch_add(1, Ordering::Relaxed);
        let declared = tokio::time::timeout_at(
            deadline,
            channel.queue_declare(
                target.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        match declared {
            Ok(Ok(q)) => Ok(QueueCounts {
                ready: q.message_count(),
                consumers: q.consumer_count(),
            }
            .observation(Timestamp::now())),
            Ok(Err(e)) => {
                // The broker closed the channel (a soft error) or the connection (a hard one):
                // the next read opens what is gone.
                live.channel = None;
                if !live.connection.status().connected() {
                    state.live = None;
                }
                Err(fail(Failure::of(&e), Stage::Declare))
            }
            Err(_) => {
                // A reply may still come on this channel; start over on a new connection.
                state.live = None;
                Err(fail(Failure::Timeout, Stage::Declare))
            }
        }
    }

    async fn connect(
        &self,
        endpoint: &AmqpEndpoint,
        target: &AmqpTarget,
        deadline: tokio::time::Instant,
    ) -> Result<lapin::Connection, Failure> {
        let runtime = lapin::runtime::default_runtime().map_err(|e| Failure::of(&e))?;
        let uri = uri(endpoint, &target.vhost, &target.credentials);
        let properties = lapin::ConnectionProperties::default()
            .with_connection_name(concat!("nerite/", env!("CARGO_PKG_VERSION")).into());
        // lapin runs each connection on an I/O thread of its own that lives as long as the
        // socket. A handshake given up on (a server that accepts and never answers) would
        // leave that thread waiting: keep a handle on the socket to shut it down then.
        let socket: Arc<Mutex<Option<std::net::TcpStream>>> = Arc::default();
        let seen = socket.clone();
        let connecting = lapin::Connection::connector(
            uri,
            runtime,
            // Runs on lapin's I/O thread, inside the operator's runtime.
            async move |uri, runtime| {
                let connect = async {
                    let mut plain = uri.clone();
                    plain.scheme = AMQPScheme::AMQP;
                    let tls = lapin::tcp::OwnedTLSConfig::default();
                    let stream = lapin::tcp::AMQPUriTcpExt::connect_with_config_async(
                        &plain,
                        tls.as_ref(),
                        &runtime,
                    )
                    .await?;
                    #[cfg(unix)]
                    if let lapin::tcp::AsyncTcpStream::Plain(s) = &stream {
                        use std::os::fd::AsFd;
                        if let Ok(fd) = s.get_ref().as_fd().try_clone_to_owned() {
                            *lock(&seen) = Some(std::net::TcpStream::from(fd));
                        }
                    }
                    match uri.scheme {
                        AMQPScheme::AMQPS => {
                            stream.into_tls(&uri.authority.host, tls.as_ref()).await
                        }
                        AMQPScheme::AMQP => Ok(stream),
                    }
                };
                match tokio::time::timeout_at(deadline, connect).await {
                    Ok(stream) => stream.map_err(lapin::Error::from),
                    Err(_) => Err(lapin::Error::from(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no TCP or TLS connection in time",
                    ))),
                }
            },
            properties,
        );
        let result = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(connection)) => {
                self.connections.fetch_add(1, Ordering::Relaxed);
                Ok(connection)
            }
            Ok(Err(e)) => Err(Failure::of(&e)),
            Err(_) => Err(Failure::Timeout),
        };
        let socket = lock(&socket).take();
        if result.is_err()
            && let Some(socket) = socket
        {
            // Ends lapin's I/O thread of this attempt.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        result
    }
}

impl Source for AmqpReader {
    type Target = AmqpTarget;

    async fn observe(&self, target: &AmqpTarget) -> Result<Observation, SourceError> {
        AmqpReader::observe(self, target, Duration::ZERO).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> AmqpTarget {
        AmqpTarget {
            amqp_url: "amqp://rabbit:5672".into(),
            vhost: "team".into(),
            queue: "orders".into(),
            credentials: Credentials::new("app", "s3cret-pw"),
        }
    }

    fn classify_at(f: Failure, stage: Stage) -> SourceError {
        classify(
            f,
            stage,
            "amqp://rabbit:5672",
            &target(),
            Duration::from_secs(5),
        )
    }

    fn closed(code: u16, text: &str) -> Failure {
        Failure::Closed {
            code,
            text: text.into(),
        }
    }

    #[test]
    fn parses_urls() -> Result<(), SourceError> {
        let e = AmqpEndpoint::parse("amqp://rabbit")?;
        assert_eq!(
            (e.tls, e.port, e.key.as_str()),
            (false, 5672, "amqp://rabbit:5672")
        );
        let e = AmqpEndpoint::parse("amqps://rabbit.example.com/")?;
        assert_eq!(
            (e.tls, e.port, e.key.as_str()),
            (true, 5671, "amqps://rabbit.example.com:5671")
        );
        let e = AmqpEndpoint::parse("amqp://127.0.0.1:35672")?;
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 35672));
        let e = AmqpEndpoint::parse("amqp://[::1]:5000")?;
        assert_eq!(
            (e.host.as_str(), e.key.as_str()),
            ("::1", "amqp://[::1]:5000")
        );
        Ok(())
    }

    #[test]
    fn refuses_bad_urls_without_echoing_them() {
        for raw in [
            "amqp://admin:hunter22@rabbit:5672",
            "amqp://admin@rabbit",
            "http://rabbit:15672",
            "amqp://rabbit/hunter22",
            "amqp://rabbit/%2f",
            "amqp://rabbit?heartbeat=hunter22",
            "amqp://",
            "not a url hunter22",
            "",
        ] {
            match AmqpEndpoint::parse(raw) {
                Err(e @ SourceError::InvalidConfig(_)) => {
                    assert!(!e.to_string().contains("hunter22"), "{e}");
                    assert!(e.is_permanent());
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn uri_carries_login_and_vhost() -> Result<(), SourceError> {
        let e = AmqpEndpoint::parse("amqps://rabbit:1234")?;
        let uri = uri(&e, "team/a", &Credentials::new("u", "p"));
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(uri.vhost, "team/a");
        assert_eq!(uri.authority.userinfo.username, "u");
        assert_eq!(uri.authority.port, 1234);
        Ok(())
    }

    #[test]
    fn names_must_fit_a_short_string() {
        assert!(check_name("queue", "").is_err());
        assert!(check_name("queue", &"é".repeat(128)).is_err());
        assert!(check_name("queue", &"q".repeat(255)).is_ok());
    }

    #[test]
    fn counts_become_a_ready_only_observation() {
        let o = QueueCounts {
            ready: 1000,
            consumers: 3,
        }
        .observation(Timestamp::UNIX_EPOCH);
        assert_eq!(o.backlog, 1000);
        assert_eq!(o.ready, Some(1000));
        assert_eq!(o.consumers, Some(3));
        assert_eq!(o.unacked, None);
        assert_eq!(
            (o.publish_rate, o.deliver_rate, o.ack_rate),
            (None, None, None)
        );
        assert_eq!(o.consumer_utilisation, None);
    }

    #[test]
    fn classifies_broker_refusals() {
        let login = closed(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
        );
        assert!(matches!(
            classify_at(login, Stage::Connect),
            SourceError::Unauthorized { .. }
        ));
        match classify_at(
            closed(403, "ACCESS_REFUSED - access to queue 'orders' refused"),
            Stage::Declare,
        ) {
            SourceError::Forbidden { detail, .. } => assert!(detail.contains("refused queue")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_at(closed(530, "NOT_ALLOWED - vhost team not found"), Stage::Connect),
            SourceError::VhostNotFound { vhost, .. } if vhost == "team"
        ));
        match classify_at(
            closed(
                530,
                "NOT_ALLOWED - access to vhost 'team' refused for user 'app'",
            ),
            Stage::Connect,
        ) {
            SourceError::Forbidden { detail, .. } => assert!(detail.contains("no permissions")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_at(
                closed(404, "NOT_FOUND - no queue 'orders' in vhost 'team'"),
                Stage::Declare
            ),
            SourceError::QueueNotFound { queue, .. } if queue == "orders"
        ));
        assert!(matches!(
            classify_at(closed(405, "RESOURCE_LOCKED"), Stage::Declare),
            SourceError::Forbidden { .. }
        ));
        assert!(matches!(
            classify_at(closed(320, "CONNECTION_FORCED - shutdown"), Stage::Declare),
            SourceError::Unreachable { .. }
        ));
        match classify_at(closed(541, "INTERNAL_ERROR"), Stage::Declare) {
            SourceError::Protocol { detail, .. } => assert_eq!(detail, "AMQP 541: INTERNAL_ERROR"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classifies_transport_failures() {
        let io = |kind, detail: &str| Failure::Io {
            kind,
            detail: detail.into(),
        };
        assert!(matches!(
            classify_at(
                io(io::ErrorKind::ConnectionRefused, "refused"),
                Stage::Connect
            ),
            SourceError::Unreachable { .. }
        ));
        assert!(matches!(
            classify_at(
                io(io::ErrorKind::Other, "failed to lookup address information"),
                Stage::Connect
            ),
            SourceError::Dns { .. }
        ));
        assert!(matches!(
            classify_at(Failure::Timeout, Stage::Declare),
            SourceError::Timeout { .. }
        ));
        assert!(matches!(
            classify_at(Failure::Tls("bad certificate".into()), Stage::Connect),
            SourceError::Tls { .. }
        ));
        assert!(matches!(
            classify_at(Failure::Lost("closed".into()), Stage::Declare),
            SourceError::Unreachable { .. }
        ));
    }

    #[test]
    fn never_shows_the_password() {
        for f in [
            closed(541, "boom s3cret-pw"),
            Failure::Other("s3cret-pw".into()),
            Failure::Io {
                kind: io::ErrorKind::Other,
                detail: "s3cret-pw".into(),
            },
        ] {
            let e = classify_at(f, Stage::Declare);
            assert!(!format!("{e} {e:?}").contains("s3cret-pw"), "{e:?}");
        }
        assert!(!format!("{:?}", target()).contains("s3cret-pw"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_connection_is_unreachable() -> Result<(), std::io::Error> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let reader = AmqpReader::new(Duration::from_secs(2));
        let mut t = target();
        t.amqp_url = format!("amqp://127.0.0.1:{port}");
        let e = reader.observe(&t, Duration::ZERO).await;
        assert!(matches!(e, Err(SourceError::Unreachable { .. })), "{e:?}");
        assert_eq!(reader.traffic().connections, 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_server_times_out() -> Result<(), std::io::Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let reader = AmqpReader::new(Duration::from_millis(400));
        let mut t = target();
        t.amqp_url = format!("amqp://127.0.0.1:{port}");
        let started = Instant::now();
        let e = reader.observe(&t, Duration::ZERO).await;
        assert!(matches!(e, Err(SourceError::Timeout { .. })), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A failed attempt answers askers that accept its age without a new attempt.
        let again = reader.observe(&t, Duration::from_secs(60)).await;
        assert_eq!(again, e);
        // Attempts given up on leave no I/O thread behind (lapin runs one per connection).
        for _ in 0..3 {
            let _ = reader.observe(&t, Duration::ZERO).await;
        }
        let io_threads = || {
            std::fs::read_dir("/proc/self/task").map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == "lapin-io-loop")
                    })
                    .count()
            })
        };
        let gone_by = Instant::now() + Duration::from_secs(5);
        while io_threads()? > 0 {
            assert!(
                Instant::now() < gone_by,
                "{} lapin I/O threads left",
                io_threads()?
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(listener);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_config_before_any_connection() {
        let reader = AmqpReader::new(Duration::from_secs(1));
        let mut t = target();
        t.amqp_url = "amqp://app:s3cret-pw@h:1".into();
        match reader.observe(&t, Duration::ZERO).await {
            Err(e @ SourceError::InvalidConfig(_)) => assert!(!e.to_string().contains("s3cret")),
            other => panic!("{other:?}"),
        }
        assert_eq!(reader.connection_count(), 0);
    }
}
