//! The Kafka wire protocol: one TCP (optionally TLS, optionally SASL) connection per broker,
//! and a cluster client that routes each request to the broker that must answer it.
//!
//! Requests and responses are encoded by the `kafka-protocol` crate; this module frames them,
//! negotiates versions (`ApiVersions` on every new connection), authenticates, bounds every
//! call with a deadline and counts what it sends. Connections are opened lazily, kept while
//! they work, and dropped on the first I/O error (the next call reconnects). One request is
//! in flight per connection at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreatePartitionsRequest,
    CreatePartitionsResponse, FetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sasl::{self, Mechanism};

/// Largest response accepted (a Fetch answer is bounded by the request's `max_bytes`).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A request this client knows how to send, with the highest version it was written for.
pub trait Call: Encodable + Message {
    const KEY: ApiKey;
    /// Highest version whose fields the callers of this module fill in correctly.
    const MAX: i16;
    type Response: Decodable;
}

macro_rules! calls {
    ($($req:ty => $resp:ty, $key:ident, $max:literal;)*) => {$(
        impl Call for $req {
            const KEY: ApiKey = ApiKey::$key;
            const MAX: i16 = $max;
            type Response = $resp;
        }
    )*};
}

calls! {
    ApiVersionsRequest => ApiVersionsResponse, ApiVersions, 3;
    MetadataRequest => MetadataResponse, Metadata, 12;
    ListOffsetsRequest => ListOffsetsResponse, ListOffsets, 8;
    FindCoordinatorRequest => FindCoordinatorResponse, FindCoordinator, 4;
    OffsetFetchRequest => OffsetFetchResponse, OffsetFetch, 8;
    OffsetCommitRequest => OffsetCommitResponse, OffsetCommit, 8;
    CreatePartitionsRequest => CreatePartitionsResponse, CreatePartitions, 3;
    // v12+ is flexible; some brokers (tansu 0.6) send tagged fields v12 does not define.
    FetchRequest => FetchResponse, Fetch, 11;
    ProduceRequest => ProduceResponse, Produce, 9;
    InitProducerIdRequest => InitProducerIdResponse, InitProducerId, 4;
    SaslHandshakeRequest => SaslHandshakeResponse, SaslHandshake, 1;
    SaslAuthenticateRequest => SaslAuthenticateResponse, SaslAuthenticate, 2;
}

/// TLS material, already read from Secrets (PEM).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsMaterial {
    /// CA bundle; `None`: the public web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// Name to verify in the broker's certificate; default: the host name dialled.
    pub server_name: Option<String>,
}

/// SASL login. No `Debug`: it holds the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SaslLogin {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

/// How to reach and log in to one cluster. No `Debug`: it holds secrets.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    /// `host:port` of one or more brokers.
    pub bootstrap: Vec<String>,
    pub tls: Option<TlsMaterial>,
    pub sasl: Option<SaslLogin>,
    /// Deadline of one call (connection set-up included).
    pub timeout: Duration,
    pub client_id: String,
}

impl Settings {
    /// `kafka://first-bootstrap-server`, for messages.
    pub fn label(&self) -> String {
        format!(
            "kafka://{}",
            self.bootstrap.first().map(String::as_str).unwrap_or("?")
        )
    }
}

/// Why a call failed. Texts never hold a credential.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("cannot resolve {addr}: {detail}")]
    Dns { addr: String, detail: String },
    #[error("cannot connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error(
        "{addr} closed the connection{during} (does the listener need TLS or SASL settings that differ from these?)"
    )]
    Closed { addr: String, during: String },
    #[error("TLS with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("SASL authentication at {addr} failed: {detail}")]
    AuthFailed { addr: String, detail: String },
    #[error("SASL at {addr}: {detail}")]
    Sasl { addr: String, detail: String },
    #[error(
        "{addr} does not support {api} (versions this client speaks: {ours}; broker: {theirs})"
    )]
    Unsupported {
        addr: String,
        api: &'static str,
        ours: String,
        theirs: String,
    },
    #[error("malformed answer from {addr}: {detail}")]
    Codec { addr: String, detail: String },
    #[error("invalid client settings: {0}")]
    Config(String),
    #[error("no broker of the cluster answered: {0}")]
    NoBroker(String),
}

impl WireError {
    /// True for failures of the connection itself (worth one reconnect and retry).
    fn is_connection(&self) -> bool {
        matches!(
            self,
            WireError::Closed { .. } | WireError::Connect { .. } | WireError::Codec { .. }
        )
    }
}

/// Requests sent and bytes moved by a cluster client, by API.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    connections: AtomicU64,
    by_api: Mutex<BTreeMap<&'static str, u64>>,
}

/// A copy of [`Counters`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub connections: u64,
    pub by_api: BTreeMap<&'static str, u64>,
}

impl Traffic {
    /// Traffic between an earlier copy and this one.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            requests: self.requests.saturating_sub(earlier.requests),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            connections: self.connections.saturating_sub(earlier.connections),
            by_api: self
                .by_api
                .iter()
                .map(|(k, v)| (*k, v.saturating_sub(*earlier.by_api.get(k).unwrap_or(&0))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }

    /// Sum of several copies.
    pub fn add(&mut self, other: &Traffic) {
        self.requests += other.requests;
        self.bytes_out += other.bytes_out;
        self.bytes_in += other.bytes_in;
        self.connections += other.connections;
        for (k, v) in &other.by_api {
            *self.by_api.entry(k).or_default() += v;
        }
    }
}

impl Counters {
    fn count(&self, api: ApiKey, out: usize, inn: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(out as u64, Ordering::Relaxed);
        self.bytes_in.fetch_add(inn as u64, Ordering::Relaxed);
        let mut by = self.by_api.lock().unwrap_or_else(|p| p.into_inner());
        *by.entry(api_name(api)).or_default() += 1;
    }

    pub fn snapshot(&self) -> Traffic {
        Traffic {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            by_api: self
                .by_api
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Name of an API for counters and messages.
pub fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::Metadata => "Metadata",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::Fetch => "Fetch",
        ApiKey::Produce => "Produce",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "Other",
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One authenticated connection to one broker.
struct Conn {
    addr: String,
    stream: Box<dyn Stream>,
    /// API key → (min, max) versions the broker accepts.
    versions: HashMap<i16, (i16, i16)>,
    correlation: i32,
}

impl Conn {
    async fn open(addr: &str, s: &Settings, counters: &Counters) -> Result<Conn, WireError> {
        let tcp = connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &s.tls {
            None => Box::new(tcp),
            Some(t) => Box::new(tls_connect(addr, tcp, t).await?),
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn {
            addr: addr.to_string(),
            stream,
            versions: HashMap::new(),
            correlation: 0,
        };
        conn.negotiate(s, counters).await?;
        if let Some(login) = &s.sasl {
            conn.authenticate(login, counters).await?;
        }
        Ok(conn)
    }

    /// `ApiVersions`: v3 first; a broker that does not know it answers in v0 with its ranges.
    async fn negotiate(&mut self, s: &Settings, counters: &Counters) -> Result<(), WireError> {
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("nerite");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let _ = s;
        let mut resp = self.raw_call(&req, 3, &s.client_id, counters).await;
        if let Ok(r) = &resp
            && r.error_code == 35
        {
            resp = self.raw_call(&req, 0, &s.client_id, counters).await;
        }
        let resp = resp?;
        if resp.error_code != 0 {
            return Err(WireError::Codec {
                addr: self.addr.clone(),
                detail: format!("ApiVersions answered error {}", resp.error_code),
            });
        }
        self.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    async fn authenticate(
        &mut self,
        login: &SaslLogin,
        counters: &Counters,
    ) -> Result<(), WireError> {
        let addr = self.addr.clone();
        let mut hs = SaslHandshakeRequest::default();
        hs.mechanism = StrBytes::from_static_str(login.mechanism.name());
        let v = self.version::<SaslHandshakeRequest>()?;
        let resp = self.raw_call(&hs, v, "nerite", counters).await?;
        match resp.error_code {
            0 => {}
            33 => {
                let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
                return Err(WireError::Sasl {
                    addr,
                    detail: format!(
                        "the broker does not enable {}; it offers [{}]",
                        login.mechanism.name(),
                        offered.join(", ")
                    ),
                });
            }
            code => {
                return Err(WireError::Sasl {
                    addr,
                    detail: format!("handshake answered error code {code}"),
                });
            }
        }
        let mut exchange = sasl::Exchange::start(login.mechanism, &login.username, &login.password);
        let av = self.version::<SaslAuthenticateRequest>()?;
        let mut message = exchange.first();
        loop {
            let mut req = SaslAuthenticateRequest::default();
            req.auth_bytes = Bytes::from(message);
            let resp = self.raw_call(&req, av, "nerite", counters).await?;
            if resp.error_code != 0 {
                let why = resp
                    .error_message
                    .as_ref()
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_else(|| format!("error code {}", resp.error_code));
                return Err(WireError::AuthFailed {
                    addr,
                    detail: sasl::scrub(&why, &login.password),
                });
            }
            match exchange.next(&resp.auth_bytes) {
                Ok(Some(reply)) => message = reply,
                Ok(None) => return Ok(()),
                Err(why) => {
                    return Err(WireError::AuthFailed {
                        addr,
                        detail: sasl::scrub(&why, &login.password),
                    });
                }
            }
        }
    }

    /// The version to use for `R`: the highest both sides speak.
    fn version<R: Call>(&self) -> Result<i16, WireError> {
        let ours = (R::VERSIONS.min, R::VERSIONS.max.min(R::MAX));
        let unsupported = |theirs: String| WireError::Unsupported {
            addr: self.addr.clone(),
            api: api_name(R::KEY),
            ours: format!("{}–{}", ours.0, ours.1),
            theirs,
        };
        let Some(&(min, max)) = self.versions.get(&(R::KEY as i16)) else {
            return Err(unsupported("not offered".to_string()));
        };
        let v = ours.1.min(max);
        if v < ours.0.max(min) {
            return Err(unsupported(format!("{min}–{max}")));
        }
        Ok(v)
    }

    fn supports(&self, key: ApiKey) -> bool {
        self.versions.contains_key(&(key as i16))
    }

    async fn call<R: Call>(
        &mut self,
        req: &R,
        client_id: &str,
        counters: &Counters,
    ) -> Result<(R::Response, i16), WireError> {
        let v = self.version::<R>()?;
        Ok((self.raw_call(req, v, client_id, counters).await?, v))
    }

    async fn raw_call<R: Call>(
        &mut self,
        req: &R,
        version: i16,
        client_id: &str,
        counters: &Counters,
    ) -> Result<R::Response, WireError> {
        let codec = |detail: String| WireError::Codec {
            addr: self.addr.clone(),
            detail,
        };
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY as i16;
        header.request_api_version = version;
        header.correlation_id = correlation;
        header.client_id = Some(StrBytes::from_string(client_id.to_string()));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::KEY.request_header_version(version))
            .map_err(|e| codec(format!("encoding the request header: {e}")))?;
        req.encode(&mut body, version)
            .map_err(|e| codec(format!("encoding {} v{version}: {e}", api_name(R::KEY))))?;
        let len = u32::try_from(body.len()).map_err(|_| codec("request too large".into()))?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_u32(len);
        frame.extend_from_slice(&body);
        let closed = |during: &str, addr: &str| WireError::Closed {
            addr: addr.to_string(),
            during: during.to_string(),
        };
        let name = api_name(R::KEY);
        self.stream
            .write_all(&frame)
            .await
            .map_err(|_| closed(&format!(" while sending {name}"), &self.addr))?;
        self.stream
            .flush()
            .await
            .map_err(|_| closed(&format!(" while sending {name}"), &self.addr))?;
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .await
            .map_err(|_| closed(&format!(" before answering {name}"), &self.addr))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(codec(format!("frame of {len} bytes exceeds {MAX_FRAME}")));
        }
        let mut buf = vec![0u8; len];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(|_| closed(&format!(" while answering {name}"), &self.addr))?;
        counters.count(R::KEY, frame.len(), len + 4);
        let mut buf = Bytes::from(buf);
        let rh = ResponseHeader::decode(&mut buf, R::KEY.response_header_version(version))
            .map_err(|e| codec(format!("response header: {e}")))?;
        if rh.correlation_id != correlation {
            return Err(codec(format!(
                "correlation id {} does not match request {correlation}",
                rh.correlation_id
            )));
        }
        let resp = R::Response::decode(&mut buf, version)
            .map_err(|e| codec(format!("decoding {name} v{version}: {e}")))?;
        let _ = buf.remaining();
        Ok(resp)
    }
}

async fn connect(addr: &str) -> Result<TcpStream, WireError> {
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(addr).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(WireError::Dns {
                addr: addr.to_string(),
                detail: e.to_string(),
            });
        }
    };
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.to_string(),
        }
    }
    Err(WireError::Connect {
        addr: addr.to_string(),
        detail: last,
    })
}

async fn tls_connect(
    addr: &str,
    tcp: TcpStream,
    t: &TlsMaterial,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, WireError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let tls = |detail: String| WireError::Tls {
        addr: addr.to_string(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| tls(format!("CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| tls(format!("CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(tls("the CA bundle holds no PEM certificate".to_string()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&t.client_cert_pem, &t.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| tls("client key: not a PEM private key".to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = match &t.server_name {
        Some(n) => n.clone(),
        None => host_of(addr).to_string(),
    };
    let name = ServerName::try_from(host.clone())
        .map_err(|_| tls(format!("{host:?} is not a valid server name")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| tls(e.to_string()))
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Any broker (known brokers first, then the bootstrap list).
    Any,
    /// The broker with this node id.
    Node(i32),
}

/// A client for one cluster: connections per broker, the broker list from the last
/// metadata, and traffic counters.
pub struct Cluster {
    settings: Settings,
    brokers: Mutex<BTreeMap<i32, String>>,
    conns: Mutex<HashMap<String, Slot>>,
    counters: Arc<Counters>,
}

impl Cluster {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            brokers: Mutex::default(),
            conns: Mutex::default(),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn traffic(&self) -> Traffic {
        self.counters.snapshot()
    }

    /// Remember the brokers of a metadata answer.
    pub fn set_brokers(&self, brokers: impl IntoIterator<Item = (i32, String)>) {
        let mut b = self.brokers.lock().unwrap_or_else(|p| p.into_inner());
        for (id, addr) in brokers {
            b.insert(id, addr);
        }
    }

    fn slot(&self, addr: &str) -> Slot {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_string())
            .or_default()
            .clone()
    }

    /// Send `req` where `route` says; returns the answer and the version used.
    pub async fn call<R: Call>(
        &self,
        route: Route,
        req: &R,
    ) -> Result<(R::Response, i16), WireError> {
        match route {
            Route::Node(id) => {
                let addr = self
                    .brokers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| {
                        WireError::NoBroker(format!("broker {id} is not in the cluster metadata"))
                    })?;
                self.call_addr(&addr, req).await
            }
            Route::Any => {
                let mut candidates: Vec<String> = self
                    .brokers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for b in &self.settings.bootstrap {
                    if !candidates.contains(b) {
                        candidates.push(b.clone());
                    }
                }
                let mut first_err = None;
                for addr in candidates {
                    match self.call_addr(&addr, req).await {
                        Ok(r) => return Ok(r),
                        // A broker that answered but refused (auth, versions) speaks for all.
                        Err(
                            e @ (WireError::AuthFailed { .. }
                            | WireError::Sasl { .. }
                            | WireError::Unsupported { .. }
                            | WireError::Tls { .. }
                            | WireError::Config(_)),
                        ) => return Err(e),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                Err(first_err.unwrap_or_else(|| WireError::NoBroker("no bootstrap server".into())))
            }
        }
    }

    /// Whether the broker at `route` offers `key` (connecting if needed).
    pub async fn supports(&self, route: Route, key: ApiKey) -> Result<bool, WireError> {
        let addr = self.addr_of(route)?;
        let slot = self.slot(&addr);
        let mut guard = slot.lock().await;
        self.ensure(&addr, &mut guard).await?;
        Ok(guard.as_ref().is_some_and(|c| c.supports(key)))
    }

    /// The version of `R` the broker at `route` and this client agree on (connecting if
    /// needed), so a caller can build the request in that version's layout.
    pub async fn version<R: Call>(&self, route: Route) -> Result<i16, WireError> {
        let addr = self.addr_of(route)?;
        let slot = self.slot(&addr);
        let mut guard = slot.lock().await;
        self.ensure(&addr, &mut guard).await?;
        match guard.as_ref() {
            Some(c) => c.version::<R>(),
            None => Err(WireError::NoBroker(format!("no connection to {addr}"))),
        }
    }

    fn addr_of(&self, route: Route) -> Result<String, WireError> {
        Ok(match route {
            Route::Node(id) => self
                .brokers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned()
                .ok_or_else(|| WireError::NoBroker(format!("broker {id} is unknown")))?,
            Route::Any => self
                .brokers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .next()
                .cloned()
                .or_else(|| self.settings.bootstrap.first().cloned())
                .ok_or_else(|| WireError::NoBroker("no bootstrap server".into()))?,
        })
    }

    async fn ensure(&self, addr: &str, guard: &mut Option<Conn>) -> Result<(), WireError> {
        if guard.is_none() {
            let timeout = self.settings.timeout;
            let conn =
                tokio::time::timeout(timeout, Conn::open(addr, &self.settings, &self.counters))
                    .await
                    .map_err(|_| WireError::Timeout {
                        addr: addr.to_string(),
                        after: timeout,
                    })??;
            *guard = Some(conn);
        }
        Ok(())
    }

    async fn call_addr<R: Call>(
        &self,
        addr: &str,
        req: &R,
    ) -> Result<(R::Response, i16), WireError> {
        let slot = self.slot(addr);
        let mut guard = slot.lock().await;
        let reused = guard.is_some();
        match self.try_call(addr, &mut guard, req).await {
            Ok(r) => Ok(r),
            // An idle connection the broker closed: one fresh try.
            Err(e) if reused && e.is_connection() => {
                *guard = None;
                self.try_call(addr, &mut guard, req).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_call<R: Call>(
        &self,
        addr: &str,
        guard: &mut Option<Conn>,
        req: &R,
    ) -> Result<(R::Response, i16), WireError> {
        self.ensure(addr, guard).await?;
        let timeout = self.settings.timeout;
        let Some(conn) = guard.as_mut() else {
            return Err(WireError::NoBroker(format!("no connection to {addr}")));
        };
        let res = tokio::time::timeout(
            timeout,
            conn.call(req, &self.settings.client_id, &self.counters),
        )
        .await
        .unwrap_or_else(|_| {
            Err(WireError::Timeout {
                addr: addr.to_string(),
                after: timeout,
            })
        });
        if matches!(
            res,
            Err(WireError::Timeout { .. } | WireError::Closed { .. } | WireError::Codec { .. })
        ) {
            // The stream may hold half a frame: never reuse it.
            *guard = None;
        }
        res
    }

    /// Drop every connection (they reconnect on the next call).
    pub fn disconnect(&self) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// `StrBytes` from an owned string.
pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("kafka-0.kafka:9092"), "kafka-0.kafka");
        assert_eq!(host_of("[::1]:9092"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn traffic_since_subtracts_per_api() {
        let mut a = Traffic {
            requests: 5,
            ..Default::default()
        };
        a.by_api.insert("Metadata", 2);
        a.by_api.insert("ListOffsets", 3);
        let mut b = a.clone();
        b.requests = 9;
        b.by_api.insert("Metadata", 3);
        b.by_api.insert("ListOffsets", 6);
        let d = b.since(&a);
        assert_eq!(d.requests, 4);
        assert_eq!(d.by_api.get("Metadata"), Some(&1));
        assert_eq!(d.by_api.get("ListOffsets"), Some(&3));
    }
}
