//! One management-API listing per endpoint and vhost serves every ScaledConsumer there.
//!
//! KEDA and most scalers make one `GET /api/queues/{vhost}/{queue}` per object per poll, so
//! the broker's management plugin answers N requests every interval. nerite groups objects by
//! (management endpoint, vhost, credentials) and reads each group with
//! `GET /api/queues/{vhost}?columns=…&page=…&page_size=500`: one request per 500 queues of
//! the vhost, however many ScaledConsumers point there.
//!
//! While the group's queues are few, the listing is narrowed with the management API's name
//! filter (`name=^(a|b|c)$&use_regex=true`), so the answer holds only the queues someone
//! watches; when the filter would make the request line long it is dropped and the whole vhost
//! is listed.
//!
//! The poller is a read-through cache with single flight: an object asks for its queue with
//! the age it accepts (half its poll interval); a snapshot at most that old answers at once,
//! otherwise one listing is made while concurrent askers wait for it. With every object of a
//! group on the same interval, the group makes at most two listings per interval, whatever the
//! number of objects.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reqwest::StatusCode;
use serde::Deserialize;

use super::{
    Endpoint, ManagementApi, QueueStats, RabbitMqTarget, api_reason, check_name, classify_status,
    encode_segment, scrub,
};
use crate::core::error::SourceError;
use crate::core::observation::Credentials;
use crate::core::observation::Observation;

/// Largest page the management API accepts.
pub const PAGE_SIZE: usize = 500;

/// Longest name filter (characters of the regular expression) before the whole vhost is
/// listed instead: request lines beyond a few kilobytes are refused by some proxies.
const MAX_FILTER_LEN: usize = 2000;

/// A queue nobody asked for in this long leaves the group's filter.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Columns of a listing: the single-queue columns plus the name.
const LIST_COLUMNS: &str = "name,messages,messages_ready,messages_unacknowledged,consumers,\
consumer_utilisation,consumer_capacity,message_stats.publish_details.rate,\
message_stats.deliver_get_details.rate,message_stats.ack_details.rate";

/// Objects share a listing only when they would make the very same request: same endpoint,
/// vhost and credentials (an object with a wrong password must never read through another
/// object's login). No `Debug`: the key holds the password.
#[derive(Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    endpoint: String,
    vhost: String,
    username: String,
    password: String,
}

/// What one listing returned.
struct Snapshot {
    taken: Instant,
    at: Timestamp,
    /// The queue names the listing was narrowed to (`None`: the whole vhost).
    filter: Option<BTreeSet<String>>,
    result: Result<HashMap<String, QueueStats>, SourceError>,
}

impl Snapshot {
    fn covers(&self, queue: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f.contains(queue))
    }
}

#[derive(Default)]
struct GroupState {
    snapshot: Option<Arc<Snapshot>>,
    /// Queue → when it was last asked for.
    wanted: HashMap<String, Instant>,
}

#[derive(Default)]
struct Group {
    /// Held across a listing: askers queue behind it and then find the fresh snapshot.
    state: tokio::sync::Mutex<GroupState>,
}

/// Serves observations of many queues from shared listings.
pub struct SharedPoller {
    api: Arc<ManagementApi>,
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
}

impl SharedPoller {
    pub fn new(api: Arc<ManagementApi>) -> Self {
        Self {
            api,
            groups: Mutex::default(),
        }
    }

    /// The management client (for its traffic counters and the management operations).
    pub fn api(&self) -> &Arc<ManagementApi> {
        &self.api
    }

    /// Groups currently known (endpoint, vhost, user).
    pub fn group_count(&self) -> usize {
        lock(&self.groups).len()
    }

    /// Read `target`'s queue from a listing at most `max_age` old, making one if needed.
    pub async fn observe(
        &self,
        target: &RabbitMqTarget,
        max_age: Duration,
    ) -> Result<Observation, SourceError> {
        let endpoint = Endpoint::parse(&target.management_url)?;
        check_name("vhost", &target.vhost)?;
        check_name("queue", &target.queue)?;
        let key = GroupKey {
            endpoint: endpoint.key.clone(),
            vhost: target.vhost.clone(),
            username: target.credentials.username.clone(),
            password: target.credentials.password().to_owned(),
        };
        let group = lock(&self.groups).entry(key).or_default().clone();
        let mut state = group.state.lock().await;
        let now = Instant::now();
        state.wanted.insert(target.queue.clone(), now);
        let fresh = state
            .snapshot
            .as_ref()
            .filter(|s| now.duration_since(s.taken) <= max_age && s.covers(&target.queue))
            .cloned();
        let snapshot = match fresh {
            Some(s) => s,
            None => {
                state
                    .wanted
                    .retain(|_, asked| now.duration_since(*asked) < FORGET_AFTER);
                let names: BTreeSet<String> = state.wanted.keys().cloned().collect();
                let snapshot = Arc::new(
                    self.api
                        .list_queues(&endpoint, &target.vhost, &target.credentials, names)
                        .await,
                );
                state.snapshot = Some(snapshot.clone());
                snapshot
            }
        };
        drop(state);
        match &snapshot.result {
            Err(e) => Err(e.clone()),
            Ok(queues) => match queues.get(&target.queue) {
                Some(stats) => {
                    stats.to_observation(target.include_unacked, snapshot.at, &endpoint.key)
                }
                None => Err(SourceError::QueueNotFound {
                    endpoint: endpoint.key.clone(),
                    vhost: target.vhost.clone(),
                    queue: target.queue.clone(),
                }),
            },
        }
    }
}

/// One page of `GET /api/queues/{vhost}?page=…`.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<QueueStats>,
    #[serde(default)]
    page_count: Option<u64>,
}

/// `^(a|b)$` with regular-expression metacharacters escaped, or `None` when too long.
pub(crate) fn name_filter(names: &BTreeSet<String>) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let mut out = String::from("^(");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        for c in name.chars() {
            if "\\^$.|?*+()[]{}".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        if out.len() > MAX_FILTER_LEN {
            return None;
        }
    }
    out.push_str(")$");
    Some(out)
}

impl ManagementApi {
    /// List the queues of a vhost (narrowed to `names` when the filter is short), page by page.
    async fn list_queues(
        &self,
        endpoint: &Endpoint,
        vhost: &str,
        credentials: &Credentials,
        names: BTreeSet<String>,
    ) -> Snapshot {
        let deadline = Instant::now() + self.timeout;
        let filter = name_filter(&names);
        let result = self
            .list_pages(endpoint, vhost, credentials, filter.as_deref(), deadline)
            .await;
        Snapshot {
            taken: Instant::now(),
            at: Timestamp::now(),
            filter: filter.map(|_| names),
            result,
        }
    }

    async fn list_pages(
        &self,
        endpoint: &Endpoint,
        vhost: &str,
        credentials: &Credentials,
        filter: Option<&str>,
        deadline: Instant,
    ) -> Result<HashMap<String, QueueStats>, SourceError> {
        let client = self.client(endpoint)?;
        let mut queues = HashMap::new();
        let mut page = 1u64;
        loop {
            let url = endpoint.list_url(vhost, page, filter);
            let (status, body) = self
                .get(&client, endpoint, url, credentials, deadline)
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(if api_reason(&body).is_some() {
                    SourceError::VhostNotFound {
                        endpoint: endpoint.key.clone(),
                        vhost: vhost.to_owned(),
                    }
                } else {
                    SourceError::Protocol {
                        endpoint: endpoint.key.clone(),
                        detail: "HTTP 404 without the management API's error body; check that \
                                 the URL is the management API's base URL"
                            .into(),
                    }
                });
            }
            if !status.is_success() {
                let probe = RabbitMqTarget {
                    management_url: String::new(),
                    vhost: vhost.to_owned(),
                    queue: String::new(),
                    include_unacked: true,
                    credentials: credentials.clone(),
                };
                return Err(classify_status(
                    status,
                    &body,
                    &endpoint.key,
                    &probe,
                    credentials,
                ));
            }
            let parsed: Page =
                serde_json::from_slice(&body).map_err(|e| SourceError::Protocol {
                    endpoint: endpoint.key.clone(),
                    detail: scrub(
                        format!("the queue listing is not the expected JSON: {e}"),
                        credentials,
                    ),
                })?;
            for q in parsed.items {
                if let Some(name) = q.name.clone() {
                    queues.insert(name, q);
                }
            }
            let pages = parsed.page_count.unwrap_or(1);
            if page >= pages {
                return Ok(queues);
            }
            page += 1;
        }
    }
}

impl Endpoint {
    fn list_url(&self, vhost: &str, page: u64, filter: Option<&str>) -> reqwest::Url {
        let mut query = format!("columns={LIST_COLUMNS}&page={page}&page_size={PAGE_SIZE}");
        if let Some(f) = filter {
            query.push_str("&use_regex=true&name=");
            query.push_str(&encode_segment(f));
        }
        self.api_url(&format!("queues/{}", encode_segment(vhost)), &query)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_escapes_and_gives_up_when_long() {
        let names: BTreeSet<String> = ["a.b", "c|d", "plain"].map(String::from).into();
        assert_eq!(name_filter(&names).as_deref(), Some(r"^(a\.b|c\|d|plain)$"));
        assert_eq!(name_filter(&BTreeSet::new()), None);
        let many: BTreeSet<String> = (0..1000).map(|i| format!("queue-{i}")).collect();
        assert_eq!(name_filter(&many), None);
    }

    #[test]
    fn list_url_pages_and_filters() -> Result<(), SourceError> {
        let e = Endpoint::parse("http://127.0.0.1:15672")?;
        let url = e.list_url("/", 2, Some("^(a)$"));
        assert_eq!(url.path(), "/api/queues/%2F");
        let q = url.query().unwrap_or_default();
        assert!(q.contains("page=2&page_size=500"), "{q}");
        assert!(q.contains("use_regex=true&name=%5E%28a%29%24"), "{q}");
        assert!(q.starts_with("columns=name,"), "{q}");
        Ok(())
    }

    #[test]
    fn parses_a_page() -> Result<(), serde_json::Error> {
        let body = r#"{"filtered_count":2,"item_count":2,"items":[
            {"name":"q1","messages":3,"messages_ready":2,"messages_unacknowledged":1,"consumers":1},
            {"name":"q3"}],"page":1,"page_count":1,"page_size":500,"total_count":3}"#;
        let page: Page = serde_json::from_str(body)?;
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.page_count, Some(1));
        assert_eq!(page.items[0].messages_ready, Some(2));
        Ok(())
    }

    /// A canned management API that counts requests and answers listings.
    async fn listing_server(
        body: &'static str,
    ) -> Result<
        (
            u16,
            Arc<std::sync::atomic::AtomicUsize>,
            tokio::task::JoinHandle<()>,
        ),
        std::io::Error,
    > {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut head = Vec::new();
                    loop {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        head.clear();
                        seen.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok((port, count, task))
    }

    fn target(port: u16, queue: &str) -> RabbitMqTarget {
        RabbitMqTarget {
            management_url: format!("http://127.0.0.1:{port}"),
            vhost: "/".into(),
            queue: queue.into(),
            include_unacked: true,
            credentials: Credentials::new("u", "p"),
        }
    }

    #[tokio::test]
    async fn different_passwords_never_share_a_listing() -> Result<(), Box<dyn std::error::Error>> {
        use std::sync::atomic::Ordering;
        let (port, count, server) = listing_server(
            r#"{"items":[{"name":"a","messages_ready":5,"messages_unacknowledged":1}],"page_count":1}"#,
        )
        .await?;
        let poller = SharedPoller::new(Arc::new(ManagementApi::new(Duration::from_secs(2))));
        let mut wrong = target(port, "a");
        wrong.credentials = Credentials::new("u", "other");
        poller
            .observe(&target(port, "a"), Duration::from_secs(5))
            .await?;
        poller.observe(&wrong, Duration::from_secs(5)).await?;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(poller.group_count(), 2);
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_listing() -> Result<(), Box<dyn std::error::Error>> {
        use std::sync::atomic::Ordering;
        let (port, count, server) = listing_server(
            r#"{"items":[{"name":"a","messages_ready":5,"messages_unacknowledged":1},
            {"name":"b","messages_ready":7,"messages_unacknowledged":0}],"page_count":1}"#,
        )
        .await?;
        let poller = Arc::new(SharedPoller::new(Arc::new(ManagementApi::new(
            Duration::from_secs(2),
        ))));
        let ask = |n: usize| {
            let mut tasks = Vec::new();
            for i in 0..n {
                let p = poller.clone();
                let q = if i % 2 == 0 { "a" } else { "b" };
                tasks.push(tokio::spawn(async move {
                    p.observe(&target(port, q), Duration::from_secs(5)).await
                }));
            }
            tasks
        };
        let mut backlogs = Vec::new();
        for t in ask(50) {
            backlogs.push(t.await??.backlog);
        }
        // One listing for the first queue seen, at most one more once the second joins.
        let first = count.load(Ordering::SeqCst);
        assert!((1..=2).contains(&first), "{first} listings");
        for t in ask(100) {
            backlogs.push(t.await??.backlog);
        }
        assert_eq!(count.load(Ordering::SeqCst), first, "fresh snapshot reused");
        assert!(backlogs.iter().all(|b| *b == 6 || *b == 7));
        assert_eq!(poller.group_count(), 1);
        let missing = poller
            .observe(&target(port, "c"), Duration::from_secs(5))
            .await;
        assert!(
            matches!(missing, Err(SourceError::QueueNotFound { .. })),
            "{missing:?}"
        );
        server.abort();
        Ok(())
    }
}
