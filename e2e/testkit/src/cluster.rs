//! A Kubernetes API for the trials: the in-repo fake API server (always), or a real cluster
//! when `NERITE_E2E_KUBECONFIG` names one. Plus the nerite operator running in-process
//! against it, and helpers to create the objects a trial needs and wait for outcomes.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use nerite::runtime::{self, OperatorConfig};
use nerite::spec::api::{ScaledConsumer, ScaledConsumerStatus};
use nerite_fake_apiserver::{FakeApiServer, Handle};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The repository's top directory (this crate lives in `e2e/testkit`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running API server (fake or real) and a client for it.
pub struct Cluster {
    pub client: Client,
    _server: Option<Handle>,
}

impl Cluster {
    /// The in-repo fake API server with nerite's CRDs registered. `validate_schemas: false`
    /// admits objects a real server would refuse, to exercise nerite's own validation.
    pub async fn fake(validate_schemas: bool) -> Result<Cluster, String> {
        let server = FakeApiServer::builder()
            .crds_dir(repo_root().join("crds"))
            .validate_schemas(validate_schemas)
            .start()
            .await
            .map_err(|e| format!("fake API server: {e}"))?;
        let url = server
            .url()
            .parse()
            .map_err(|e| format!("fake API server URL: {e}"))?;
        let client = Client::try_from(Config::new(url)).map_err(|e| e.to_string())?;
        Ok(Cluster {
            client,
            _server: Some(server),
        })
    }

    /// The fake API server's URL (`None` for a real cluster).
    pub fn url(&self) -> Option<String> {
        self._server.as_ref().map(|s| s.url().to_string())
    }

    /// A kubeconfig for the fake API server, for kubectl (`None` for a real cluster).
    pub fn kubeconfig_yaml(&self) -> Option<String> {
        self._server.as_ref().map(|s| s.kubeconfig_yaml())
    }

    /// A real cluster from `NERITE_E2E_KUBECONFIG`, with the CRD applied.
    pub async fn real(kubeconfig: &str) -> Result<Cluster, String> {
        let client = nerite::runtime::client::connect(Some(std::path::Path::new(kubeconfig)))
            .await
            .map_err(|e| e.to_string())?;
        let crd: Value =
            serde_yaml::from_str(&nerite::spec::crdgen::crd_yaml().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(client.clone());
        api.patch(
            "scaledconsumers.nerite.dev",
            &PatchParams::apply("nerite-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| format!("applying the CRD: {e}"))?;
        Ok(Cluster {
            client,
            _server: None,
        })
    }

    /// Start the operator in this process; it stops when the returned guard drops.
    pub fn start_operator(&self, namespace: &str) -> Operator {
        self.start_operator_with(Self::operator_config(namespace))
    }

    /// Start the operator with a zero status heartbeat: it writes the status on every poll
    /// even when nothing changed, so a trial can count polls through
    /// `status.lastObservation.observedAt` (by default an unchanged status is not rewritten).
    pub fn start_operator_writing_every_poll(&self, namespace: &str) -> Operator {
        self.start_operator_with(OperatorConfig {
            status_heartbeat: Duration::ZERO,
            ..Self::operator_config(namespace)
        })
    }

    /// The settings [`Cluster::start_operator`] uses: one namespace, short timeouts.
    pub fn operator_config(namespace: &str) -> OperatorConfig {
        OperatorConfig {
            namespace: Some(namespace.to_string()),
            source_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(4),
            ..OperatorConfig::default()
        }
    }

    /// Start the operator in this process with these settings (for example with
    /// `metrics_addr` set); it stops when the returned guard drops.
    pub fn start_operator_with(&self, cfg: OperatorConfig) -> Operator {
        let (tx, rx) = oneshot::channel::<()>();
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            runtime::run(client, cfg, async move {
                let _ = rx.await;
            })
            .await;
        });
        Operator {
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn namespace(&self, name: &str) -> Result<(), String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .map_err(|e| e.to_string())?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(format!("namespace {name}: {e}")),
        }
    }

    /// Make the fake API server refuse the next `times` matching requests with `code` (a
    /// no-op against a real cluster, where the trial should not run).
    pub fn fail_requests(&self, method: &str, path_suffix: &str, code: u16, times: u32) {
        if let Some(s) = &self._server {
            s.fail_requests(method, path_suffix, code, times);
        }
    }

    /// Delete a namespace (and with it everything in it, on a real cluster).
    pub async fn delete_namespace(&self, name: &str) -> Result<(), String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.delete(name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!("deleting namespace {name}: {e}")),
        }
    }

    pub async fn secret(
        &self,
        ns: &str,
        name: &str,
        user: &str,
        password: &str,
    ) -> Result<(), String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_string());
        s.data = Some(
            [
                ("username".to_string(), ByteString(user.as_bytes().to_vec())),
                (
                    "password".to_string(),
                    ByteString(password.as_bytes().to_vec()),
                ),
            ]
            .into(),
        );
        api.create(&PostParams::default(), &s)
            .await
            .map(|_| ())
            .map_err(|e| format!("secret {name}: {e}"))
    }

    pub async fn deployment(&self, ns: &str, name: &str, replicas: i32) -> Result<(), String> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "consumer", "image": "registry.k8s.io/pause:3.9"}]}
                }
            }
        }))
        .map_err(|e| e.to_string())?;
        api.create(&PostParams::default(), &d)
            .await
            .map(|_| ())
            .map_err(|e| format!("deployment {name}: {e}"))
    }

    /// The Deployment's `spec.replicas` as read through `/scale`.
    pub async fn replicas(&self, ns: &str, name: &str) -> Result<i32, String> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let scale = api.get_scale(name).await.map_err(|e| e.to_string())?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    /// Create a ScaledConsumer from JSON (fields under `spec`).
    pub async fn scaled_consumer(
        &self,
        ns: &str,
        name: &str,
        spec: Value,
    ) -> Result<(), kube::Error> {
        let api: Api<ScaledConsumer> = Api::namespaced(self.client.clone(), ns);
        let obj: ScaledConsumer = serde_json::from_value(json!({
            "apiVersion": "nerite.dev/v1alpha1",
            "kind": "ScaledConsumer",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .map_err(kube::Error::SerdeError)?;
        api.create(&PostParams::default(), &obj).await.map(|_| ())
    }

    /// Create an object the Rust type would not even express (raw JSON), for bad-input trials.
    pub async fn raw_scaled_consumer(
        &self,
        ns: &str,
        name: &str,
        spec: Value,
    ) -> Result<(), String> {
        let ar = kube::core::ApiResource::erase::<ScaledConsumer>(&());
        let api: Api<kube::core::DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &ar);
        let obj: kube::core::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "nerite.dev/v1alpha1",
            "kind": "ScaledConsumer",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .map_err(|e| e.to_string())?;
        api.create(&PostParams::default(), &obj)
            .await
            .map(|_| ())
            .map_err(|e| format!("create {name}: {e}"))
    }

    /// Merge-patch a ScaledConsumer (e.g. `{"spec": {...}}` or `{"metadata": {"annotations": ...}}`).
    pub async fn patch_scaled_consumer(
        &self,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> Result<(), String> {
        let api: Api<ScaledConsumer> = Api::namespaced(self.client.clone(), ns);
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
            .map_err(|e| format!("patch {name}: {e}"))
    }

    /// A Deployment as JSON (pod template, generation, managedFields).
    pub async fn deployment_json(&self, ns: &str, name: &str) -> Result<Value, String> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let d = api.get(name).await.map_err(|e| e.to_string())?;
        serde_json::to_value(d).map_err(|e| e.to_string())
    }

    pub async fn status(&self, ns: &str, name: &str) -> Result<ScaledConsumerStatus, String> {
        let api: Api<ScaledConsumer> = Api::namespaced(self.client.clone(), ns);
        let sc = api.get(name).await.map_err(|e| e.to_string())?;
        Ok(sc.status.unwrap_or_default())
    }

    /// Events about the named object (events.k8s.io/v1).
    pub async fn events_for(&self, ns: &str, name: &str) -> Result<Vec<Event>, String> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect())
    }
}

/// The operator task; stopped on drop.
pub struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The condition of that type, if any.
pub fn condition<'a>(
    s: &'a ScaledConsumerStatus,
    type_: &str,
) -> Option<&'a nerite::spec::api::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

/// Poll `check` until it returns `Some`, or fail after `timeout` with the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let start = Instant::now();
    let mut last;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met".into(),
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run blocking broker helpers off the async runtime.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("helper task failed: {e}"))
}
