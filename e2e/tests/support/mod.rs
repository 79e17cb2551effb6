//! Shared fixtures for the end-to-end trials.

pub use nerite_testkit::{cluster, kafka, moto, ops, rabbitmq};

pub mod probe;

use std::sync::{Arc, OnceLock};

/// Servers shared by trials, started on first use and stopped when the run ends.
#[derive(Clone, Default)]
pub struct Env {
    rabbit: Arc<OnceLock<Result<Arc<rabbitmq::RabbitMq>, String>>>,
    moto: Arc<OnceLock<Result<Arc<moto::Moto>, String>>>,
    kafka: Arc<OnceLock<Result<Arc<kafka::Kafka>, String>>>,
}

impl Env {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared RabbitMQ, started on first use.
    pub fn rabbitmq(&self) -> Result<Arc<rabbitmq::RabbitMq>, String> {
        self.rabbit
            .get_or_init(|| rabbitmq::RabbitMq::start().map(Arc::new))
            .clone()
    }

    /// The shared Kafka-protocol broker (tansu), started on first use.
    pub fn kafka(&self) -> Result<Arc<kafka::Kafka>, String> {
        self.kafka
            .get_or_init(|| kafka::Kafka::start().map(Arc::new))
            .clone()
    }

    /// The shared moto (SQS) server, started on first use.
    pub fn moto(&self) -> Result<Arc<moto::Moto>, String> {
        self.moto
            .get_or_init(|| moto::Moto::start().map(Arc::new))
            .clone()
    }
}

/// A private copy of the nerite binary of this build, checked to be this build (another
/// build in the same target directory may replace the original while trials run).
pub fn binary_copy() -> Result<(tempfile::TempDir, std::path::PathBuf), String> {
    let dir = tempfile::Builder::new()
        .prefix("nerite-bin-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let binary = dir.path().join("nerite");
    std::fs::copy(env!("CARGO_BIN_EXE_nerite"), &binary)
        .map_err(|e| format!("copy nerite: {e}"))?;
    let crd = std::process::Command::new(&binary)
        .arg("crd")
        .output()
        .map_err(|e| format!("nerite crd: {e}"))?;
    let ours = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crds/scaledconsumers.nerite.dev.yaml"),
    )
    .map_err(|e| format!("read crds/: {e}"))?;
    if String::from_utf8_lossy(&crd.stdout).trim() != ours.trim() {
        return Err(
            "the nerite binary in the build directory is not this build (another build in the \
             same target directory replaced it); run the suite again"
                .into(),
        );
    }
    Ok((dir, binary))
}

/// Run a trial's future on a two-thread runtime of its own.
/// `Ok` when `ok(got)` holds, else an error naming `what` and showing `got`.
pub fn expect<T: std::fmt::Debug>(
    what: &str,
    got: &T,
    ok: impl FnOnce(&T) -> bool,
) -> Result<(), String> {
    if ok(got) {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}"))
    }
}

pub fn run(fut: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(fut)
}

/// The status and Events of a ScaledConsumer, for failure messages.
pub async fn dump(cluster: &cluster::Cluster, ns: &str, name: &str) -> String {
    let status = cluster
        .status(ns, name)
        .await
        .map(|s| serde_json::to_string(&s).unwrap_or_default())
        .unwrap_or_else(|e| e);
    let events: Vec<String> = cluster
        .events_for(ns, name)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect();
    format!("\n  status: {status}\n  events: {events:#?}")
}
