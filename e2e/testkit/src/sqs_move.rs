//! A test double for the SQS message-move-task API, which moto does not implement.
//!
//! [`MoveTaskDouble`] listens on its own port in front of a moto server: requests for
//! `StartMessageMoveTask`, `ListMessageMoveTasks` and `CancelMessageMoveTask` (JSON protocol,
//! `X-Amz-Target: AmazonSQS.<Operation>`) are answered here, everything else is forwarded to
//! moto unchanged. A started task moves the source queue's messages to the destination
//! through moto (receive → send with body and attributes → delete), at most
//! `MaxNumberOfMessagesPerSecond` a second, and reports RUNNING, COMPLETED, CANCELLING and
//! CANCELLED as AWS documents them. It is a stand-in for AWS's side of a redrive, so that
//! nerite's `aws` mode can be followed from start to end (and cancelled); it says nothing
//! about AWS's own pacing or failure modes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::moto::{Moto, Sqs};

/// One move task, as `ListMessageMoveTasks` reports it.
#[derive(Clone, Debug)]
pub struct Task {
    pub handle: String,
    pub source_arn: String,
    pub destination_arn: Option<String>,
    pub rate: Option<i64>,
    pub status: String,
    pub moved: i64,
    pub to_move: i64,
    pub failure: Option<String>,
    cancel: bool,
}

#[derive(Clone)]
struct Double {
    moto: String,
    sqs: Sqs,
    http: reqwest::Client,
    tasks: Arc<Mutex<Vec<Task>>>,
}

/// The running double; stops when dropped.
pub struct MoveTaskDouble {
    pub endpoint: String,
    tasks: Arc<Mutex<Vec<Task>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MoveTaskDouble {
    /// Start in front of `moto` on a free local port (inside a tokio runtime).
    pub async fn start(moto: &Moto) -> Result<MoveTaskDouble, String> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let state = Double {
            moto: moto.endpoint(),
            sqs: moto.sqs(),
            http: reqwest::Client::new(),
            tasks: tasks.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MoveTaskDouble {
            endpoint: format!("http://{addr}"),
            tasks,
            stop: Some(stop),
        })
    }

    /// Every task started so far.
    pub fn tasks(&self) -> Vec<Task> {
        lock(&self.tasks).clone()
    }
}

impl Drop for MoveTaskDouble {
    fn drop(&mut self) {
        for t in lock(&self.tasks).iter_mut() {
            t.cancel = true;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn reply(code: StatusCode, body: Value) -> Response {
    (
        code,
        [("content-type", "application/x-amz-json-1.0")],
        body.to_string(),
    )
        .into_response()
}

fn client_error(kind: &str, message: &str) -> Response {
    reply(
        StatusCode::BAD_REQUEST,
        json!({"__type": format!("com.amazonaws.sqs#{kind}"), "message": message}),
    )
}

async fn handle(
    State(d): State<Double>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match target.as_str() {
        "AmazonSQS.StartMessageMoveTask" => start(&d, &input),
        "AmazonSQS.ListMessageMoveTasks" => list(&d, &input),
        "AmazonSQS.CancelMessageMoveTask" => cancel(&d, &input),
        _ => forward(&d, method, uri, headers, body).await,
    }
}

async fn forward(
    d: &Double,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!(
        "{}{}",
        d.moto,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut req = d.http.request(method, url).body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(r) => {
            let code = r.status();
            let ctype = r
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/x-amz-json-1.0")
                .to_string();
            let bytes = r.bytes().await.unwrap_or_default();
            (code, [("content-type", ctype)], bytes).into_response()
        }
        Err(e) => reply(
            StatusCode::BAD_GATEWAY,
            json!({"message": format!("forwarding to moto: {e}")}),
        ),
    }
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` → moto's queue URL.
fn url_of(d: &Double, arn: &str) -> Option<String> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "sqs", _, account, name] => Some(format!("{}/{account}/{name}", d.moto)),
        _ => None,
    }
}

fn start(d: &Double, input: &Value) -> Response {
    let Some(source) = input["SourceArn"].as_str() else {
        return client_error("InvalidParameterValue", "SourceArn is required");
    };
    let Some(from) = url_of(d, source) else {
        return client_error("InvalidParameterValue", "SourceArn is not an SQS ARN");
    };
    let destination = input["DestinationArn"].as_str().map(str::to_string);
    let to = match &destination {
        Some(arn) => match url_of(d, arn) {
            Some(u) => u,
            None => {
                return client_error("InvalidParameterValue", "DestinationArn is not an SQS ARN");
            }
        },
        None => return client_error("UnsupportedOperation", "this double needs a DestinationArn"),
    };
    let mut tasks = lock(&d.tasks);
    if tasks
        .iter()
        .any(|t| t.source_arn == source && (t.status == "RUNNING" || t.status == "CANCELLING"))
    {
        return client_error(
            "UnsupportedOperation",
            "a move task is already running for this source",
        );
    }
    let handle = format!(
        "task-{}-{}",
        tasks.len() + 1,
        source.rsplit(':').next().unwrap_or("")
    );
    tasks.push(Task {
        handle: handle.clone(),
        source_arn: source.to_string(),
        destination_arn: destination,
        rate: input["MaxNumberOfMessagesPerSecond"].as_i64(),
        status: "RUNNING".into(),
        moved: 0,
        to_move: 0,
        failure: None,
        cancel: false,
    });
    drop(tasks);
    let d2 = d.clone();
    let h = handle.clone();
    tokio::spawn(async move { run(d2, h, from, to).await });
    reply(StatusCode::OK, json!({"TaskHandle": handle}))
}

/// The task as it is now.
fn task(d: &Double, handle: &str) -> Option<Task> {
    lock(&d.tasks).iter().find(|t| t.handle == handle).cloned()
}

fn update(d: &Double, handle: &str, f: impl FnOnce(&mut Task)) -> Option<Task> {
    let mut tasks = lock(&d.tasks);
    let t = tasks.iter_mut().find(|t| t.handle == handle)?;
    f(t);
    Some(t.clone())
}

async fn run(d: Double, handle: String, from: String, to: String) {
    let to_move = d.sqs.depth(&from).await.map(|(v, _, _)| v).unwrap_or(0);
    update(&d, &handle, |t| t.to_move = to_move);
    let rate = task(&d, &handle).and_then(|t| t.rate).unwrap_or(500).max(1);
    loop {
        let Some(now) = task(&d, &handle) else {
            return;
        };
        if now.cancel {
            update(&d, &handle, |t| t.status = "CANCELLED".into());
            return;
        }
        if now.moved >= to_move {
            update(&d, &handle, |t| t.status = "COMPLETED".into());
            return;
        }
        let batch = (to_move - now.moved).clamp(1, 10).min(rate);
        let out = d
            .sqs
            .client
            .receive_message()
            .queue_url(&from)
            .max_number_of_messages(i32::try_from(batch).unwrap_or(10))
            .visibility_timeout(30)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await;
        let msgs = match out {
            Ok(o) => o.messages().to_vec(),
            Err(e) => {
                update(&d, &handle, |t| {
                    t.status = "FAILED".into();
                    t.failure = Some(format!("receive: {e}"));
                });
                return;
            }
        };
        if msgs.is_empty() {
            update(&d, &handle, |t| t.status = "COMPLETED".into());
            return;
        }
        let mut moved = 0;
        for m in &msgs {
            let mut send = d
                .sqs
                .client
                .send_message()
                .queue_url(&to)
                .message_body(m.body().unwrap_or_default());
            let attrs: HashMap<String, MessageAttributeValue> =
                m.message_attributes().cloned().unwrap_or_default();
            for (k, v) in attrs {
                send = send.message_attributes(k, v);
            }
            if send.send().await.is_err() {
                continue;
            }
            if let Some(r) = m.receipt_handle() {
                let _ = d
                    .sqs
                    .client
                    .delete_message()
                    .queue_url(&from)
                    .receipt_handle(r)
                    .send()
                    .await;
            }
            moved += 1;
        }
        update(&d, &handle, |t| t.moved += moved);
        // At most `rate` messages a second.
        let pause = Duration::from_secs_f64(msgs.len() as f64 / rate as f64);
        tokio::time::sleep(pause.max(Duration::from_millis(50))).await;
    }
}

fn list(d: &Double, input: &Value) -> Response {
    let Some(source) = input["SourceArn"].as_str() else {
        return client_error("InvalidParameterValue", "SourceArn is required");
    };
    let max = input["MaxResults"].as_u64().unwrap_or(1).max(1) as usize;
    let tasks = lock(&d.tasks);
    let results: Vec<Value> = tasks
        .iter()
        .rev()
        .filter(|t| t.source_arn == source)
        .take(max)
        .map(|t| {
            let mut v = json!({
                "Status": t.status,
                "SourceArn": t.source_arn,
                "ApproximateNumberOfMessagesMoved": t.moved,
                "ApproximateNumberOfMessagesToMove": t.to_move,
                "StartedTimestamp": 0,
            });
            // AWS lists the handle only while the task runs.
            if t.status == "RUNNING" {
                v["TaskHandle"] = json!(t.handle);
            }
            if let Some(a) = &t.destination_arn {
                v["DestinationArn"] = json!(a);
            }
            if let Some(r) = t.rate {
                v["MaxNumberOfMessagesPerSecond"] = json!(r);
            }
            if let Some(f) = &t.failure {
                v["FailureReason"] = json!(f);
            }
            v
        })
        .collect();
    reply(StatusCode::OK, json!({"Results": results}))
}

fn cancel(d: &Double, input: &Value) -> Response {
    let Some(handle) = input["TaskHandle"].as_str() else {
        return client_error("InvalidParameterValue", "TaskHandle is required");
    };
    let mut tasks = lock(&d.tasks);
    let Some(t) = tasks.iter_mut().find(|t| t.handle == handle) else {
        return client_error("ResourceNotFoundException", "no such task");
    };
    if t.status != "RUNNING" {
        return client_error("UnsupportedOperation", "the task is not running");
    }
    t.cancel = true;
    t.status = "CANCELLING".into();
    reply(
        StatusCode::OK,
        json!({"ApproximateNumberOfMessagesMoved": t.moved}),
    )
}
