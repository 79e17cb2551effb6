//! Watch: a chunked stream of newline-delimited JSON watch events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Request, Shared, lock, present};
use crate::error::{ApiError, ApiResult};
use crate::resources::ResourceInfo;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Event;
use crate::table;

struct Filter {
    info: ResourceInfo,
    namespace: Option<String>,
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
    /// Send `meta.k8s.io/v1` `Table` rows instead of objects (`kubectl get -w`).
    table: bool,
}

impl Filter {
    fn render(&self, obj: Value) -> Value {
        let obj = present(&self.info, obj);
        if self.table {
            table::render_one(&self.info, &obj)
        } else {
            obj
        }
    }

    fn matches(&self, key: &str, ns: &str, obj: &Value) -> bool {
        key == self.info.storage_key()
            && self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.labels.as_ref().is_none_or(|l| l.matches_object(obj))
            && self.fields.as_ref().is_none_or(|f| f.matches_object(obj))
    }
}

fn line(type_: &str, object: Value) -> Bytes {
    let mut s = json!({"type": type_, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(info: &ResourceInfo, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta}),
    )
}

fn expired(rv: &str, oldest: u64) -> Bytes {
    line(
        "ERROR",
        ApiError::expired(format!("too old resource version: {rv} ({oldest})")).to_status(),
    )
}

fn query_flag(req: &Request, key: &str) -> bool {
    req.query.get(key).is_some_and(|v| v == "true" || v == "1")
}

/// Start a watch; the response streams until timeout, shutdown, or the client leaves.
pub fn watch(
    shared: &Shared,
    req: &Request,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    table: bool,
) -> ApiResult<Response> {
    let filter = Filter {
        info: req.info.clone(),
        namespace: req.namespace.clone().filter(|_| req.info.namespaced),
        labels: req
            .query
            .get("labelSelector")
            .map(|s| LabelSelector::parse(s))
            .transpose()?,
        fields: req
            .query
            .get("fieldSelector")
            .map(|s| FieldSelector::parse(s))
            .transpose()?,
        table,
    };
    let bookmarks = query_flag(req, "allowWatchBookmarks");
    let send_initial = query_flag(req, "sendInitialEvents");
    let rv_param = req
        .query
        .get("resourceVersion")
        .cloned()
        .unwrap_or_default();

    let store = lock(shared);
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(store.config.default_watch_timeout);
    let bookmark_every = store.config.bookmark_interval;
    let rx = store.subscribe();
    let mut last_rv = store.current_rv();
    let mut initial: Vec<Bytes> = Vec::new();
    let mut ended = false;
    if rv_param.is_empty() || rv_param == "0" || send_initial {
        for obj in store.list(&filter.info, filter.namespace.as_deref()) {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if filter.matches(&filter.info.storage_key(), &ns, &obj) {
                initial.push(line("ADDED", filter.render(obj)));
            }
        }
        if send_initial {
            initial.push(bookmark(&filter.info, last_rv, true));
        }
    } else {
        let rv: u64 = rv_param.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid resource version: {rv_param:?}"))
        })?;
        if rv < store.compacted_rv() {
            initial.push(expired(&rv_param, store.compacted_rv() + 1));
            ended = true;
        } else {
            for ev in store.events_after(rv) {
                if filter.matches(&ev.key, &ev.namespace, &ev.object) {
                    initial.push(line(ev.type_, filter.render(ev.object.clone())));
                }
            }
        }
    }
    drop(store);

    let (tx, out) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        for chunk in initial {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        if ended {
            return;
        }
        let mut rx: broadcast::Receiver<Arc<Event>> = rx;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            let chunk = tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    if !bookmarks { continue; }
                    bookmark(&filter.info, last_rv, false)
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        last_rv = last_rv.max(ev.rv);
                        if !filter.matches(&ev.key, &ev.namespace, &ev.object) {
                            continue;
                        }
                        line(ev.type_, filter.render(ev.object.clone()))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(expired(&last_rv.to_string(), last_rv)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv()
            .await
            .map(|chunk| (Ok::<Bytes, Infallible>(chunk), out))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}
