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
    /// Behind a TLS front: its port and the CA file the driver trusts.
    tls: Option<(u16, PathBuf)>,
}

fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_script(args: &[&str]) -> Result<String, String> {
    run_script_with(args, None)
}

fn run_script_with(args: &[&str], advertised: Option<&str>) -> Result<String, String> {
    let script = e2e_dir().join("kafka.sh");
    let mut cmd = Command::new("bash");
    if let Some(a) = advertised {
        cmd.env("NERITE_KAFKA_ADVERTISED", a);
    }
    let out = cmd
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
        Self::start_full(users, None)
    }

    /// Start a broker reachable only through a TLS front (a TLS-terminating proxy on its
    /// own port, which the broker advertises): clients must speak TLS and trust
    /// [`TlsFront::ca_pem`]. tansu 0.6 cannot serve TLS itself (its `--cert` and `--key`
    /// flags exclude each other).
    pub fn start_behind_tls() -> Result<(Kafka, TlsFront), String> {
        let mut front = TlsFront::prepare()?;
        let mut kafka = Self::start_full(&[], Some(&front))?;
        front.serve(kafka.port)?;
        kafka.tls = Some((front.port, front.dir.path().join("ca.crt")));
        Ok((kafka, front))
    }

    fn start_full(users: &[(&str, &str)], front: Option<&TlsFront>) -> Result<Kafka, String> {
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
        let advertised = front.map(|f| format!("127.0.0.1:{}", f.port));
        run_script_with(&args, advertised.as_deref())?;
        eprintln!(
            "kafka: tansu on 127.0.0.1:{port} ready in {:.1?}",
            started.elapsed()
        );
        Ok(Kafka {
            dir,
            port,
            tls: None,
        })
    }

    /// Where clients bootstrap (the TLS front when there is one).
    pub fn bootstrap(&self) -> String {
        match &self.tls {
            Some((port, _)) => format!("127.0.0.1:{port}"),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// The driver's environment: the CA to trust behind a TLS front.
    fn driver_env(&self, cmd: &mut Command) {
        if let Some((_, ca)) = &self.tls {
            cmd.env("NERITE_KAFKA_CA", ca);
        }
    }

    /// Directory with the broker's log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Run one driver command against this broker; its JSON answer (blocking).
    pub fn driver(&self, cmd: &str, args: &[&str]) -> Result<Value, String> {
        let mut command = Command::new(python()?);
        self.driver_env(&mut command);
        let out = command
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
        let mut command = Command::new(python()?);
        self.driver_env(&mut command);
        let mut child = command
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

/// A TLS-terminating front for a broker: accepts TLS on its port with a certificate for
/// `127.0.0.1` and `localhost` signed by a throwaway CA, and forwards the bytes to the broker.
pub struct TlsFront {
    pub port: u16,
    /// The CA that signed the front's certificate (PEM).
    pub ca_pem: String,
    /// Another CA, which did not (for the wrong-CA trial).
    pub other_ca_pem: String,
    dir: tempfile::TempDir,
    /// Bound when the front is prepared (so no other process takes the port before the
    /// broker behind it is up); taken by `serve`.
    listener: Option<std::net::TcpListener>,
}

fn openssl(dir: &std::path::Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl TlsFront {
    fn prepare() -> Result<TlsFront, String> {
        let dir = tempfile::Builder::new()
            .prefix("nerite-tls-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=nerite test {ca}"),
                ],
            )?;
        }
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        )?;
        std::fs::write(d.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
            .map_err(|e| e.to_string())?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        )?;
        let read = |f: &str| std::fs::read_to_string(d.join(f)).map_err(|e| format!("{f}: {e}"));
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| format!("bind the TLS front: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        Ok(TlsFront {
            port,
            ca_pem: read("ca.crt")?,
            other_ca_pem: read("other-ca.crt")?,
            dir,
            listener: Some(listener),
        })
    }

    /// Accept TLS on `self.port` and forward to the broker on `upstream`, in a thread of its
    /// own until the process exits.
    fn serve(&mut self, upstream: u16) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let d = self.dir.path();
        let certs = CertificateDer::pem_file_iter(d.join("server.crt"))
            .map_err(|e| e.to_string())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_file(d.join("server.key")).map_err(|e| e.to_string())?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = self
            .listener
            .take()
            .ok_or("the TLS front is served already")?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(mut broker) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    });
                }
            });
        });
        Ok(())
    }
}
