//! An in-memory fake Kubernetes API server for nerite's tests.
//!
//! It speaks the real HTTP/JSON protocol, so `kube::Client`, kube-runtime controllers and
//! `kubectl` run against it unchanged. It is a test harness, not a cluster: there is no
//! authentication, no admission chain beyond CRD schema/CEL validation, and no controllers
//! except an optional emulation that marks every desired workload replica ready.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nerite_fake_apiserver::Error> {
//! use nerite_fake_apiserver::FakeApiServer;
//! let server = FakeApiServer::builder().crds_dir("crds").start().await?;
//! let url = server.url(); // http://127.0.0.1:PORT, no auth
//! let kubeconfig = server.kubeconfig_yaml();
//! # let _ = (url, kubeconfig);
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! From synchronous code, [`Builder::start_blocking`] runs the server on its own thread
//! with its own tokio runtime; dropping the [`Handle`] stops it.

mod api;
mod discovery;
mod error;
mod fields;
mod openapi;
mod resources;
mod routes;
mod schema;
mod selector;
mod store;
mod table;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use error::ApiError;

use api::Shared;
use store::{Config, Store};

/// Errors starting the server or registering CRDs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid YAML in {source_name}: {message}")]
    Yaml {
        source_name: String,
        message: String,
    },
    #[error("rejected by the API: {0}")]
    Api(#[from] ApiError),
    #[error("the server thread stopped before it started serving")]
    ThreadGone,
}

/// Entry point: `FakeApiServer::builder()`.
pub struct FakeApiServer;

impl FakeApiServer {
    pub fn builder() -> Builder {
        Builder::default()
    }
}

/// Configures and starts a server.
#[derive(Debug, Default)]
pub struct Builder {
    config: Config,
    port: u16,
    crd_dirs: Vec<PathBuf>,
    crd_docs: Vec<(String, String)>,
}

impl Builder {
    /// Port to bind on 127.0.0.1 (default 0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Register every CustomResourceDefinition in the `*.yaml`/`*.yml`/`*.json` files of `dir`.
    pub fn crds_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.crd_dirs.push(dir.into());
        self
    }

    /// Register the CRD(s) in a YAML (or JSON) string, possibly with several documents.
    pub fn crd_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.crd_docs.push(("inline CRD".into(), yaml.into()));
        self
    }

    /// Validate custom resources against their CRD schema and CEL rules (default: on).
    /// Pruning and defaulting happen either way.
    pub fn validate_schemas(mut self, on: bool) -> Self {
        self.config.validate_schemas = on;
        self
    }

    /// Mark every desired Deployment/StatefulSet/ReplicaSet replica ready (default: on).
    pub fn emulate_workloads(mut self, on: bool) -> Self {
        self.config.emulate_workloads = on;
        self
    }

    /// How many events watches can replay (default 10 000). Watches from an older
    /// resourceVersion get `410 Expired`.
    pub fn watch_history(mut self, events: usize) -> Self {
        self.config.history_limit = events.max(1);
        self
    }

    /// How often watches that allow bookmarks get one (default 30 s).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.config.bookmark_interval = every;
        self
    }

    /// How long a watch without `timeoutSeconds` stays open (default 290 s).
    pub fn default_watch_timeout(mut self, timeout: Duration) -> Self {
        self.config.default_watch_timeout = timeout;
        self
    }

    /// Start serving on the current tokio runtime.
    pub async fn start(self) -> Result<Handle, Error> {
        let shared: Shared = Arc::new(Mutex::new(Store::new(self.config.clone())));
        seed_namespaces(&shared)?;
        for dir in &self.crd_dirs {
            register_crds_in_dir(&shared, dir)?;
        }
        for (name, doc) in &self.crd_docs {
            register_crd_docs(&shared, name, doc)?;
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let state = routes::AppState {
            shared: shared.clone(),
            shutdown: rx.clone(),
            addr: addr.to_string(),
        };
        let app = routes::router(state);
        let mut stop = rx;
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|stopped| *stopped).await;
                })
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "fake API server stopped with an error");
            }
        });
        tracing::info!(%addr, "fake API server listening");
        Ok(Handle {
            url: format!("http://{addr}"),
            shared,
            shutdown: Arc::new(tx),
            server: Some(server),
            thread: None,
        })
    }

    /// Start serving on a new thread with its own tokio runtime, for synchronous callers.
    /// Dropping the returned handle stops the server and joins the thread.
    pub fn start_blocking(self) -> Result<Handle, Error> {
        let (tx, rx) = std::sync::mpsc::channel::<Result<Handle, Error>>();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match self.start().await {
                        Ok(mut handle) => {
                            let server = handle.server.take();
                            let mut stopped = handle.shutdown.subscribe();
                            let _ = tx.send(Ok(handle));
                            let _ = stopped.wait_for(|s| *s).await;
                            if let Some(server) = server {
                                let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let mut handle = rx.recv().map_err(|_| Error::ThreadGone)??;
        handle.thread = Some(thread);
        Ok(handle)
    }
}

/// A running server. Dropping it stops the server.
pub struct Handle {
    url: String,
    shared: Shared,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    server: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("url", &self.url).finish()
    }
}

impl Handle {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig (no auth) whose current context points at this server, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        kubeconfig_yaml(&self.url)
    }

    /// Register (create or update) the CRD(s) in a YAML/JSON string.
    pub fn register_crd_yaml(&self, yaml: &str) -> Result<(), Error> {
        register_crd_docs(&self.shared, "inline CRD", yaml)
    }

    /// Register (create or update) the CRD(s) in a file.
    pub fn register_crd_file(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)?;
        register_crd_docs(&self.shared, &path.display().to_string(), &text)
    }

    /// Refuse the next `times` requests with `method` whose path ends with `path_suffix`
    /// (e.g. `PATCH`, `/deployments/web/scale`), answering `code` — for tests of how a
    /// client handles API failures.
    pub fn fail_requests(&self, method: &str, path_suffix: &str, code: u16, times: u32) {
        api::lock(&self.shared).failures.push(store::Failure {
            method: method.to_string(),
            path_suffix: path_suffix.to_string(),
            code,
            times,
        });
    }

    /// Stop serving and wait (briefly) for open connections to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A kubeconfig (no auth) pointing at `url`.
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: nerite-fake\n  cluster:\n    server: {url}\n\
         contexts:\n- name: nerite-fake\n  context:\n    cluster: nerite-fake\n    user: nerite-fake\n    namespace: default\n\
         current-context: nerite-fake\nusers:\n- name: nerite-fake\n  user: {{}}\npreferences: {{}}\n"
    )
}

/// The namespaces every cluster has. Others need not exist to be used.
fn seed_namespaces(shared: &Shared) -> Result<(), Error> {
    let info = api::lock(shared)
        .find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let req = api::Request {
            info: info.clone(),
            namespace: None,
            name: None,
            sub: None,
            query: HashMap::from([("fieldManager".to_string(), "kube-apiserver".to_string())]),
            content_type: "application/json".into(),
            user_agent: String::new(),
            body: body.to_string().into_bytes(),
        };
        api::create(shared, &req)?;
    }
    Ok(())
}

fn register_crds_in_dir(shared: &Shared, dir: &Path) -> Result<(), Error> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p)?;
        register_crd_docs(shared, &p.display().to_string(), &text)?;
    }
    Ok(())
}

fn register_crd_docs(shared: &Shared, source_name: &str, text: &str) -> Result<(), Error> {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| Error::Yaml {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        if value.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
            continue;
        }
        apply_crd(shared, &value)?;
    }
    Ok(())
}

fn apply_crd(shared: &Shared, crd: &Value) -> Result<(), Error> {
    let info = api::lock(shared)
        .find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("CRDs are not served"))?;
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("the CRD has no metadata.name"))?
        .to_string();
    let query = HashMap::from([
        (
            "fieldManager".to_string(),
            "nerite-fake-apiserver".to_string(),
        ),
        ("force".to_string(), "true".to_string()),
    ]);
    let req = api::Request {
        info,
        namespace: None,
        name: Some(name),
        sub: None,
        query,
        content_type: "application/apply-patch+yaml".into(),
        user_agent: String::new(),
        body: serde_json::to_vec(crd).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    api::patch(shared, &req)?;
    Ok(())
}
