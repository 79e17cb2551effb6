//! A throwaway SQS-compatible server (moto) started through `e2e/moto.sh`, and SQS helpers
//! for the trials.
//!
//! Each server lives in its own temporary directory on a free port bound to 127.0.0.1 and
//! is stopped when dropped (or by the script's watchdog when this process exits). Queues are
//! addressed with AWS-style URLs (`https://sqs.REGION.amazonaws.com/123456789012/NAME`)
//! while requests go to the moto endpoint, as with a real VPC endpoint override.
//!
//! [`Moto::start`] and [`Moto::enforce_auth`] block: call them outside an async runtime (or
//! through `cluster::blocking`). The SQS helpers are async; build a [`Sqs`] inside the
//! runtime that uses it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::rabbitmq::free_ports;

/// moto's default account.
pub const ACCOUNT: &str = "123456789012";
/// The region trials use.
pub const REGION: &str = "us-east-1";

pub struct Moto {
    dir: tempfile::TempDir,
    pub port: u16,
    /// Script start to first answer.
    pub cold_start: Duration,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../moto.sh")
}

fn run_script(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .env("NERITE_MOTO_OWNER_PID", std::process::id().to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(format!(
            "moto.sh {} failed ({}):\n{stderr}",
            args.first().copied().unwrap_or_default(),
            out.status
        ))
    }
}

impl Moto {
    /// Start a new server (installing moto into the project's virtualenv when missing).
    pub fn start() -> Result<Moto, String> {
        let dir = tempfile::Builder::new()
            .prefix("nerite-moto-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let [port] = free_ports::<1>()?;
        let started = Instant::now();
        let path = dir.path().to_str().ok_or("temp dir is not UTF-8")?;
        run_script(&["start", path, &port.to_string()])?;
        let moto = Moto {
            dir,
            port,
            cold_start: started.elapsed(),
        };
        eprintln!(
            "moto: SQS on {} ready in {:.1?}",
            moto.endpoint(),
            moto.cold_start
        );
        Ok(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, check every request's signature and IAM permissions (blocking).
    pub fn enforce_auth(&self) -> Result<(), String> {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/moto-api/reset-auth", self.endpoint()))
            .body("0")
            .send()
            .map_err(|e| format!("reset-auth: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("reset-auth: HTTP {}", resp.status()))
        }
    }

    /// Run a Python snippet with boto3 from the project's virtualenv against this server
    /// (`ENDPOINT` is set in its environment); returns its stdout (blocking).
    pub fn python(&self, code: &str) -> Result<String, String> {
        let venv = Command::new("bash")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../venv.sh"))
            .arg("path")
            .output()
            .map_err(|e| format!("venv.sh: {e}"))?;
        let venv = String::from_utf8_lossy(&venv.stdout).trim().to_string();
        let out = Command::new(format!("{venv}/bin/python"))
            .arg("-c")
            .arg(code)
            .env("ENDPOINT", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", REGION)
            .output()
            .map_err(|e| format!("python: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "python failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// An SQS client for this server with static credentials.
    pub fn sqs(&self) -> Sqs {
        Sqs::new(&self.endpoint(), REGION, "test", "test")
    }

    /// Directory with the server's log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(path) = self.dir.path().to_str()
            && let Err(e) = run_script(&["stop", path])
        {
            eprintln!("moto: stopping the server failed: {e}");
        }
    }
}

/// An AWS-style queue URL for `name` (moto routes by the last path segment).
pub fn queue_url(region: &str, name: &str) -> String {
    format!("https://sqs.{region}.amazonaws.com/{ACCOUNT}/{name}")
}

pub fn queue_arn(region: &str, name: &str) -> String {
    format!("arn:aws:sqs:{region}:{ACCOUNT}:{name}")
}

/// A received message, as the trials check it.
#[derive(Clone, Debug)]
pub struct Received {
    pub body: String,
    pub attributes: HashMap<String, String>,
    pub group_id: Option<String>,
}

/// SQS test helpers (async).
#[derive(Clone)]
pub struct Sqs {
    pub client: Client,
}

fn err(what: &str, e: impl std::fmt::Debug) -> String {
    let text = format!("{what}: {e:?}");
    text.chars().take(600).collect()
}

impl Sqs {
    pub fn new(endpoint: &str, region: &str, key: &str, secret: &str) -> Sqs {
        let conf = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(key, secret, None, None, "test"))
            .http_client(nerite::brokers::sqs::https_client())
            .build();
        Sqs {
            client: Client::from_conf(conf),
        }
    }

    /// Create a queue with attributes; returns its URL.
    pub async fn create_queue(&self, name: &str, attrs: &[(&str, &str)]) -> Result<String, String> {
        let mut req = self.client.create_queue().queue_name(name);
        for (k, v) in attrs {
            req = req.attributes(QueueAttributeName::from(*k), *v);
        }
        let out = req.send().await.map_err(|e| err("create_queue", e))?;
        Ok(out.queue_url().unwrap_or_default().to_string())
    }

    pub async fn attributes(&self, url: &str) -> Result<HashMap<String, String>, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| err("get_queue_attributes", e))?;
        Ok(out
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn set_attribute(&self, url: &str, name: &str, value: &str) -> Result<(), String> {
        self.client
            .set_queue_attributes()
            .queue_url(url)
            .attributes(QueueAttributeName::from(name), value)
            .send()
            .await
            .map(drop)
            .map_err(|e| err("set_queue_attributes", e))
    }

    /// (visible, in flight, delayed).
    pub async fn depth(&self, url: &str) -> Result<(i64, i64, i64), String> {
        let a = self.attributes(url).await?;
        let n = |k: &str| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(-1);
        Ok((
            n("ApproximateNumberOfMessages"),
            n("ApproximateNumberOfMessagesNotVisible"),
            n("ApproximateNumberOfMessagesDelayed"),
        ))
    }

    /// Send messages in batches of 10; `group`: FIFO group of each message (dedup ids are
    /// derived from the body).
    pub async fn send(
        &self,
        url: &str,
        bodies: &[String],
        attribute: Option<(&str, &str)>,
        group: Option<&dyn Fn(usize) -> String>,
        delay: Option<i32>,
    ) -> Result<(), String> {
        for (c, chunk) in bodies.chunks(10).enumerate() {
            let mut entries = Vec::new();
            for (i, body) in chunk.iter().enumerate() {
                let n = c * 10 + i;
                let mut e = SendMessageBatchRequestEntry::builder()
                    .id(format!("e{i}"))
                    .message_body(body);
                if let Some((k, v)) = attribute {
                    e = e.message_attributes(
                        k,
                        MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(v)
                            .build()
                            .map_err(|e| err("attribute", e))?,
                    );
                }
                if let Some(g) = group {
                    e = e
                        .message_group_id(g(n))
                        .message_deduplication_id(format!("d{n}-{}", body.len()));
                }
                if let Some(d) = delay {
                    e = e.delay_seconds(d);
                }
                entries.push(e.build().map_err(|e| err("entry", e))?);
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| err("send_message_batch", e))?;
            if !out.failed().is_empty() {
                return Err(format!("send_message_batch: {:?}", out.failed()));
            }
        }
        Ok(())
    }

    /// Receive up to `max` messages (in batches of 10) without deleting them.
    pub async fn receive(&self, url: &str, max: usize, visibility: i32) -> Result<usize, String> {
        let mut got = 0;
        while got < max {
            let want = i32::try_from((max - got).min(10)).unwrap_or(10);
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(want)
                .visibility_timeout(visibility)
                .send()
                .await
                .map_err(|e| err("receive_message", e))?;
            if out.messages().is_empty() {
                break;
            }
            got += out.messages().len();
        }
        Ok(got)
    }

    /// Receive and delete everything currently visible, in order of receipt.
    pub async fn drain(&self, url: &str) -> Result<Vec<Received>, String> {
        let mut all = Vec::new();
        let mut empty = 0;
        while empty < 2 {
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| err("receive_message", e))?;
            if out.messages().is_empty() {
                empty += 1;
                continue;
            }
            empty = 0;
            let mut deletes = Vec::new();
            for (i, m) in out.messages().iter().enumerate() {
                all.push(Received {
                    body: m.body().unwrap_or_default().to_string(),
                    attributes: m
                        .message_attributes()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.string_value().unwrap_or_default().to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    group_id: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                        .cloned(),
                });
                if let Some(r) = m.receipt_handle() {
                    deletes.push(
                        DeleteMessageBatchRequestEntry::builder()
                            .id(format!("d{i}"))
                            .receipt_handle(r)
                            .build()
                            .map_err(|e| err("delete entry", e))?,
                    );
                }
            }
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(deletes))
                .send()
                .await
                .map_err(|e| err("delete_message_batch", e))?;
            if !out.failed().is_empty() {
                return Err(format!("delete_message_batch: {:?}", out.failed()));
            }
        }
        Ok(all)
    }
}
