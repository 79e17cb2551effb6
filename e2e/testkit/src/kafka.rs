//! A throwaway Kafka-protocol broker (tansu) started through `e2e/kafka.sh`, and the Python
//! test driver (`e2e/tools/kafka_driver.py`, confluent-kafka) for producing, committing and
//! running group members.
//!
//! Each broker lives in its own temporary directory on a free port bound to 127.0.0.1 and is
//! stopped when dropped (or by the script's watchdog when this process exits). [`Kafka::start`]
//! and the driver calls block: call them outside an async runtime or through
//! `cluster::blocking`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::rabbitmq::free_ports;

pub struct Kafka {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_script(args: &[&str]) -> Result<String, String> {
    let script = e2e_dir().join("kafka.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("NERITE_KAFKA_OWNER_PID", std::process::id().to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stderr)
    } else {
        Err(format!(
            "kafka.sh {} failed ({}):\n{stderr}",
            args.first().copied().unwrap_or_default(),
            out.status
        ))
    }
}

fn python() -> Result<String, String> {
    let out = Command::new("bash")
        .arg(e2e_dir().join("venv.sh"))
        .arg("path")
        .output()
        .map_err(|e| format!("venv.sh: {e}"))?;
    Ok(format!(
        "{}/bin/python",
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

impl Kafka {
    /// Start a broker (building tansu when missing).
    pub fn start() -> Result<Kafka, String> {
        Self::start_with_users(&[])
    }

    /// Start a broker that requires SASL (SCRAM-SHA-512) with these `(user, password)`s.
    pub fn start_with_users(users: &[(&str, &str)]) -> Result<Kafka, String> {
        let dir = tempfile::Builder::new()
            .prefix("nerite-kafka-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let [port] = free_ports::<1>()?;
        let path = dir.path().to_str().ok_or("temp dir is not UTF-8")?;
        let started = Instant::now();
        let port_s = port.to_string();
        let logins: Vec<String> = users.iter().map(|(u, p)| format!("{u}:{p}")).collect();
        let mut args = vec!["start", path, port_s.as_str()];
        args.extend(logins.iter().map(String::as_str));
        run_script(&args)?;
        eprintln!(
            "kafka: tansu on 127.0.0.1:{port} ready in {:.1?}",
            started.elapsed()
        );
        Ok(Kafka { dir, port })
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Directory with the broker's log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Run one driver command against this broker; its JSON answer (blocking).
    pub fn driver(&self, cmd: &str, args: &[&str]) -> Result<Value, String> {
        let out = Command::new(python()?)
            .arg(e2e_dir().join("tools/kafka_driver.py"))
            .arg(cmd)
            .arg(self.bootstrap())
            .args(args)
            .output()
            .map_err(|e| format!("kafka driver: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kafka driver {cmd} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(last).map_err(|e| format!("kafka driver {cmd}: {e}: {text}"))
    }

    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), String> {
        self.driver("create", &[topic, &partitions.to_string()])
            .map(drop)
    }

    /// Produce `counts[p]` records to partition `p`.
    pub fn produce(&self, topic: &str, counts: &[i64]) -> Result<(), String> {
        let c: Vec<String> = counts.iter().map(i64::to_string).collect();
        self.driver("produce", &[topic, &c.join(",")]).map(drop)
    }

    /// Produce `n` records with unique keys `PREFIX-i` and a header, partitioned by key.
    pub fn produce_keyed(&self, topic: &str, n: usize, prefix: &str) -> Result<(), String> {
        let v = self.driver("produce-keyed", &[topic, &n.to_string(), prefix])?;
        match v.get("errors").and_then(Value::as_array) {
            Some(e) if !e.is_empty() => Err(format!("produce errors: {e:?}")),
            _ => Ok(()),
        }
    }

    /// Commit `(partition, offset)`s for a group.
    pub fn commit(&self, group: &str, topic: &str, offsets: &[(i32, i64)]) -> Result<(), String> {
        let o: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        self.driver("commit", &[group, topic, &o.join(",")])
            .map(drop)
    }

    /// Every record of a topic.
    pub fn dump(&self, topic: &str) -> Result<Vec<Value>, String> {
        let v = self.driver("dump", &[topic])?;
        Ok(v.get("records")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Start `n` members of a group (the second joins three seconds after the first: a
    /// rebalance). They never commit.
    pub fn members(&self, group: &str, topic: &str, n: usize) -> Result<Members, String> {
        let mut child = Command::new(python()?)
            .arg(e2e_dir().join("tools/kafka_driver.py"))
            .args(["members", &self.bootstrap(), group, topic, &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("kafka driver members: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Members {
            child,
            stdin,
            lines,
        })
    }
}

/// Running group members.
pub struct Members {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Members {
    /// What the members printed so far (assignments and revocations).
    pub fn events(&self) -> Vec<Value> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stop the members and wait for them to leave the group.
    pub fn stop(mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(path) = self.dir.path().to_str()
            && let Err(e) = run_script(&["stop", path])
        {
            eprintln!("kafka: stopping the broker failed: {e}");
        }
    }
}
