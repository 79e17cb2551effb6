//! A throwaway RabbitMQ started through `e2e/rabbitmq.sh`.
//!
//! Every instance lives in its own temporary directory on free ports, bound to 127.0.0.1, and is
//! killed when dropped (or, failing that, by the script's watchdog when this process exits). The helpers drive the broker through its management API as `guest` (a
//! blocking client; do not call them from inside an async runtime).
//!
//! The helpers serve every area's trials; not each one uses all of them.
//!
//! Set `NERITE_KEEP_RABBITMQ=1` to keep the broker's directory (logs) after the run.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

/// How a queue is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Classic,
    Quorum,
}

pub struct RabbitMq {
    dir: tempfile::TempDir,
    pub amqp_port: u16,
    pub management_port: u16,
    dist_port: u16,
    epmd_port: u16,
    http: reqwest::blocking::Client,
    /// Wall time of the first start (script start to broker and management API ready).
    pub cold_start: Duration,
    /// Plugins to enable (comma-separated); `None`: the script's default set.
    plugins: Option<String>,
    /// Serializes stop/start_again.
    lifecycle: Mutex<()>,
}

const USER: &str = "guest";
const PASSWORD: &str = "guest";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rabbitmq.sh")
}

/// `n` distinct ports that were free a moment ago (bound to port 0 together, then released).
pub fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind port 0: {e}"))?;
        *port = l.local_addr().map_err(|e| e.to_string())?.port();
        listeners.push(l);
    }
    Ok(ports)
}

fn run_script(args: &[&str]) -> Result<String, String> {
    run_script_with(args, None)
}

fn run_script_with(args: &[&str], plugins: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    if let Some(p) = plugins {
        cmd.env("NERITE_RABBITMQ_PLUGINS", p);
    }
    let out = cmd
        .arg(script())
        .args(args)
        // Brokers die with this process even when it is killed before `Drop` runs.
        .env("NERITE_RABBITMQ_OWNER_PID", std::process::id().to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(format!(
            "rabbitmq.sh {} failed ({}):\n{stderr}{}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode one path segment (`/` → `%2F`).
pub fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

impl RabbitMq {
    /// Start a new broker on free ports in a new temporary directory.
    pub fn start() -> Result<RabbitMq, String> {
        Self::start_inner(None)
    }

    /// Start a broker with only these plugins (comma-separated, e.g. `rabbitmq_management`).
    pub fn start_with_plugins(plugins: &str) -> Result<RabbitMq, String> {
        Self::start_inner(Some(plugins.to_owned()))
    }

    fn start_inner(plugins: Option<String>) -> Result<RabbitMq, String> {
        let dir = tempfile::Builder::new()
            .prefix("nerite-rabbitmq-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let [amqp_port, management_port, dist_port, epmd_port] = free_ports::<4>()?;
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let mut rabbit = RabbitMq {
            dir,
            amqp_port,
            management_port,
            dist_port,
            epmd_port,
            http,
            cold_start: Duration::ZERO,
            plugins,
            lifecycle: Mutex::new(()),
        };
        if std::env::var_os("NERITE_KEEP_RABBITMQ").is_some() {
            rabbit.dir.disable_cleanup(true);
        }
        let started = Instant::now();
        rabbit.run_start()?;
        rabbit.cold_start = started.elapsed();
        eprintln!(
            "rabbitmq: broker on amqp {} / management {} ready in {:.1?} (dir {})",
            rabbit.amqp_port,
            rabbit.management_port,
            rabbit.cold_start,
            rabbit.dir.path().display()
        );
        Ok(rabbit)
    }

    fn dir_arg(&self) -> Result<&str, String> {
        self.dir
            .path()
            .to_str()
            .ok_or_else(|| "temp dir path is not UTF-8".to_owned())
    }

    fn run_start(&self) -> Result<(), String> {
        let ports = [
            self.amqp_port,
            self.management_port,
            self.dist_port,
            self.epmd_port,
        ]
        .map(|p| p.to_string());
        let dir = self.dir_arg()?;
        let mut args = vec!["start", dir];
        args.extend(ports.iter().map(String::as_str));
        run_script_with(&args, self.plugins.as_deref()).map(drop)
    }

    /// Kill the broker (data stays in its directory). Idempotent.
    pub fn stop(&self) -> Result<(), String> {
        let _guard = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        run_script(&["stop", self.dir_arg()?]).map(drop)
    }

    /// Start the broker again after [`RabbitMq::stop`], same directory and ports. Returns how
    /// long it took.
    pub fn start_again(&self) -> Result<Duration, String> {
        let _guard = self.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        self.run_start()?;
        Ok(started.elapsed())
    }

    /// True when the broker runs and its management API answers.
    pub fn is_running(&self) -> bool {
        self.dir_arg()
            .and_then(|dir| run_script(&["status", dir]))
            .is_ok()
    }

    /// Base URL of the management API, e.g. `http://127.0.0.1:35672`.
    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }

    /// The broker's AMQP URL, e.g. `amqp://127.0.0.1:35672` (no credentials, no vhost).
    pub fn amqp_url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.amqp_port)
    }

    /// Connections open at the broker for this user whose client named them with this
    /// prefix (AMQP `connection_name`), as the management API lists them.
    pub fn connections_of(&self, user: &str, prefix: &str) -> Result<usize, String> {
        let list = self.call(reqwest::Method::GET, "connections", None)?;
        let list = list
            .as_array()
            .ok_or_else(|| format!("connections: not a list: {list}"))?;
        Ok(list
            .iter()
            .filter(|c| {
                c["user"].as_str() == Some(user)
                    && c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .count())
    }

    /// Directory holding the broker's files (logs under `log/`).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/{path}", self.management_url())
    }

    /// One management API call as guest; a JSON body when the answer has one.
    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut req = self
            .http
            .request(method.clone(), self.url(path))
            .basic_auth(USER, Some(PASSWORD));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .map_err(|e| format!("{method} /api/{path}: {e}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .map_err(|e| format!("{method} /api/{path}: reading body: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} /api/{path}: HTTP {status}: {text}"));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| format!("{method} /api/{path}: bad JSON: {e}"))
    }

    pub fn add_vhost(&self, name: &str) -> Result<(), String> {
        self.call(reqwest::Method::PUT, &format!("vhosts/{}", enc(name)), None)?;
        // guest administers the broker but needs permissions to use queues in a new vhost.
        self.set_permissions(name, USER, ".*", ".*", ".*")
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), String> {
        self.call(
            reqwest::Method::DELETE,
            &format!("vhosts/{}", enc(name)),
            None,
        )
        .map(drop)
    }

    /// `tags`: comma-separated, e.g. `"monitoring"`, `"management"`, `""`.
    pub fn add_user(&self, name: &str, password: &str, tags: &str) -> Result<(), String> {
        self.call(
            reqwest::Method::PUT,
            &format!("users/{}", enc(name)),
            Some(&json!({ "password": password, "tags": tags })),
        )
        .map(drop)
    }

    pub fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), String> {
        self.call(
            reqwest::Method::PUT,
            &format!("permissions/{}/{}", enc(vhost), enc(user)),
            Some(&json!({ "configure": configure, "write": write, "read": read })),
        )
        .map(drop)
    }

    /// A durable classic queue.
    pub fn declare_queue(&self, vhost: &str, name: &str) -> Result<(), String> {
        self.declare_queue_of(vhost, name, QueueKind::Classic)
    }

    pub fn declare_quorum_queue(&self, vhost: &str, name: &str) -> Result<(), String> {
        self.declare_queue_of(vhost, name, QueueKind::Quorum)
    }

    pub fn declare_queue_of(&self, vhost: &str, name: &str, kind: QueueKind) -> Result<(), String> {
        let arguments = match kind {
            QueueKind::Classic => json!({}),
            QueueKind::Quorum => json!({ "x-queue-type": "quorum" }),
        };
        self.call(
            reqwest::Method::PUT,
            &format!("queues/{}/{}", enc(vhost), enc(name)),
            Some(&json!({ "durable": true, "auto_delete": false, "arguments": arguments })),
        )
        .map(drop)
    }

    pub fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), String> {
        self.call(
            reqwest::Method::DELETE,
            &format!("queues/{}/{}", enc(vhost), enc(name)),
            None,
        )
        .map(drop)
    }

    /// Publish `n` persistent messages to `queue` through the default exchange. Requests run on
    /// a few threads so 1,000 messages take a second or two.
    pub fn publish(&self, vhost: &str, queue: &str, n: usize) -> Result<(), String> {
        const THREADS: usize = 4;
        let path = format!("exchanges/{}/amq.default/publish", enc(vhost));
        let publish_one = |i: usize| -> Result<(), String> {
            let body = json!({
                "properties": { "delivery_mode": 2 },
                "routing_key": queue,
                "payload": format!("message {i}"),
                "payload_encoding": "string",
            });
            let answer = self.call(reqwest::Method::POST, &path, Some(&body))?;
            if answer.get("routed") == Some(&Value::Bool(true)) {
                Ok(())
            } else {
                Err(format!(
                    "message {i} to {vhost}/{queue} was not routed: {answer}"
                ))
            }
        };
        if n < THREADS * 4 {
            return (0..n).try_for_each(publish_one);
        }
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| s.spawn(move || (t..n).step_by(THREADS).try_for_each(publish_one)))
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| "publisher thread panicked".to_owned())?
            })
        })
    }

    pub fn purge(&self, vhost: &str, queue: &str) -> Result<(), String> {
        self.call(
            reqwest::Method::DELETE,
            &format!("queues/{}/{}/contents", enc(vhost), enc(queue)),
            None,
        )
        .map(drop)
    }

    /// Consume and acknowledge up to `n` messages; returns how many there were.
    pub fn get(&self, vhost: &str, queue: &str, n: usize) -> Result<usize, String> {
        let answer = self.call(
            reqwest::Method::POST,
            &format!("queues/{}/{}/get", enc(vhost), enc(queue)),
            Some(&json!({
                "count": n,
                "ackmode": "ack_requeue_false",
                "encoding": "auto",
                "truncate": 50,
            })),
        )?;
        answer
            .as_array()
            .map(Vec::len)
            .ok_or_else(|| format!("get from {vhost}/{queue}: not a list: {answer}"))
    }

    /// A durable queue with extra arguments (e.g. `{"x-max-length": 5}`).
    pub fn declare_queue_with_args(
        &self,
        vhost: &str,
        name: &str,
        arguments: Value,
    ) -> Result<(), String> {
        self.call(
            reqwest::Method::PUT,
            &format!("queues/{}/{}", enc(vhost), enc(name)),
            Some(&json!({ "durable": true, "auto_delete": false, "arguments": arguments })),
        )
        .map(drop)
    }

    /// Take up to `n` messages and settle them with `ackmode` (`ack_requeue_false`,
    /// `reject_requeue_false`, `reject_requeue_true`); returns their payloads.
    pub fn take(
        &self,
        vhost: &str,
        queue: &str,
        n: usize,
        ackmode: &str,
    ) -> Result<Vec<String>, String> {
        let answer = self.call(
            reqwest::Method::POST,
            &format!("queues/{}/{}/get", enc(vhost), enc(queue)),
            Some(&json!({
                "count": n,
                "ackmode": ackmode,
                "encoding": "auto",
            })),
        )?;
        let list = answer
            .as_array()
            .ok_or_else(|| format!("get from {vhost}/{queue}: not a list: {answer}"))?;
        Ok(list
            .iter()
            .map(|m| m["payload"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// Any management API GET as guest (path after `/api/`).
    pub fn api_get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None)
    }

    /// `PUT /api/policies/{vhost}/{name}`.
    pub fn put_policy(
        &self,
        vhost: &str,
        name: &str,
        pattern: &str,
        definition: Value,
        priority: i64,
    ) -> Result<(), String> {
        self.call(
            reqwest::Method::PUT,
            &format!("policies/{}/{}", enc(vhost), enc(name)),
            Some(&json!({
                "pattern": pattern,
                "apply-to": "queues",
                "priority": priority,
                "definition": definition,
            })),
        )
        .map(drop)
    }

    /// Names of the vhost's policies.
    pub fn policy_names(&self, vhost: &str) -> Result<Vec<String>, String> {
        let v = self.call(
            reqwest::Method::GET,
            &format!("policies/{}", enc(vhost)),
            None,
        )?;
        Ok(v.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Messages in a queue right now (`messages`, as the management API shows it).
    pub fn depth(&self, vhost: &str, queue: &str) -> Result<i64, String> {
        let info = self.queue_info(vhost, queue)?;
        info["messages"]
            .as_i64()
            .ok_or_else(|| format!("{vhost}/{queue}: no message count yet"))
    }

    /// The queue as the management API shows it (all fields).
    pub fn queue_info(&self, vhost: &str, queue: &str) -> Result<Value, String> {
        self.call(
            reqwest::Method::GET,
            &format!("queues/{}/{}", enc(vhost), enc(queue)),
            None,
        )
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("rabbitmq: stopping the broker failed: {e}");
        }
    }
}

const POLL: Duration = Duration::from_millis(100);

/// Poll `condition` until it holds or `timeout` passes; returns how long it took.
pub fn wait_until(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if condition() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return Err(format!("condition not met within {timeout:?}"));
        }
        std::thread::sleep(POLL);
    }
}

/// Poll `attempt` until it returns `Ok`, or `timeout` passes; the error then carries the last
/// attempt's message. Returns the value and how long it took.
pub fn wait_for<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let started = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok((value, started.elapsed())),
            Err(last) if started.elapsed() >= timeout => {
                return Err(format!("not reached within {timeout:?}; last: {last}"));
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// A consumer process (`e2e/tools/consumer.py`, pika) with a given prefetch and a processing
/// delay per message. Killed on drop.
pub struct Consumer {
    child: std::process::Child,
}

impl Consumer {
    /// Start consuming `queue` on the broker's AMQP port; returns once it consumes.
    pub fn start(
        amqp_port: u16,
        queue: &str,
        prefetch: u32,
        delay: Duration,
    ) -> Result<Consumer, String> {
        use std::io::{BufRead, BufReader};
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let venv = Command::new("bash")
            .arg(root.join("venv.sh"))
            .output()
            .map_err(|e| format!("venv.sh: {e}"))?;
        if !venv.status.success() {
            return Err(format!(
                "venv.sh failed: {}",
                String::from_utf8_lossy(&venv.stderr)
            ));
        }
        let venv = String::from_utf8_lossy(&venv.stdout).trim().to_owned();
        let mut child = Command::new(format!("{venv}/bin/python"))
            .arg(root.join("tools/consumer.py"))
            .arg(amqp_port.to_string())
            .arg(queue)
            .arg(prefetch.to_string())
            .arg(format!("{}", delay.as_secs_f64()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| format!("consumer.py: {e}"))?;
        let stdout = child.stdout.take().ok_or("consumer.py: no stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("consumer.py did not start: {line:?} {read:?}"));
        }
        Ok(Consumer { child })
    }

    /// Process id (to stop it by pid).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
