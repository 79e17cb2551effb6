//! The one place that talks to the Kubernetes API on behalf of the controller: resolving and
//! scaling targets through `/scale`, reading credentials, writing status and Events.
//!
//! It is also the one writer: every write (`/scale`, status, Events, the prefetch value)
//! first asks the [`Leadership`]. A replica that does not lead drops the write and counts it
//! in `nerite_writes_dropped_total`; a background job's writes also carry the [`Guard`] of
//! the term it started in, so a job of a lapsed term can never write, whatever happened
//! since.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

pub mod error;

use crate::core::leadership::{Guard, Leadership};
use crate::core::observation::Credentials;
use crate::spec::api::{ScaleTargetRef, ScaledConsumer, ScaledConsumerStatus, SecretKeysRef};
use error::{Error, Result};

/// Field manager nerite uses for every write.
pub const FIELD_MANAGER: &str = "nerite";

/// Field manager of the prefetch value nerite delivers (one env var of one container, or one
/// ConfigMap key): nothing else is applied under it, so it never takes other fields.
pub const PREFETCH_FIELD_MANAGER: &str = "nerite-prefetch";

/// An environment variable looked up in a workload's pod template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateEnv {
    /// The container is not in the pod template; the names that are.
    ContainerMissing { containers: Vec<String> },
    /// The container exists; the variable's literal value, if set.
    Found(Option<String>),
}

/// How long a resolved kind or a read Secret is reused before asking again.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);
const SECRET_TTL: Duration = Duration::from_secs(60);

/// Replica counts read from a target's `/scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetScale {
    /// `spec.replicas`: what the workload is asked to run.
    pub desired: i32,
    /// `status.replicas`: what it runs.
    pub running: i32,
}

/// A resolved, scalable workload.
#[derive(Clone)]
pub struct Target {
    api: Api<DynamicObject>,
    pub kind: String,
    pub name: String,
}

type SecretCache = HashMap<(String, String), (Instant, Secret)>;

/// Kubernetes access for the controller.
pub struct KubeIo {
    client: Client,
    recorder: Recorder,
    kinds: Mutex<HashMap<(String, String), (Instant, ApiResource)>>,
    secrets: Mutex<SecretCache>,
    leadership: Leadership,
    /// Told of every dropped write (the runtime counts them in a metric).
    on_dropped: DroppedHook,
}

/// Called with each write a replica that does not lead drops.
pub type DroppedHook = std::sync::Arc<dyn Fn(Write) + Send + Sync>;

/// What a write is, for the dropped-writes metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Scale,
    Status,
    Event,
    Prefetch,
}

impl Write {
    pub fn name(self) -> &'static str {
        match self {
            Write::Scale => "scale",
            Write::Status => "status",
            Write::Event => "event",
            Write::Prefetch => "prefetch",
        }
    }
}

impl KubeIo {
    pub fn new(
        client: Client,
        instance: Option<String>,
        leadership: Leadership,
        on_dropped: DroppedHook,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            kinds: Mutex::default(),
            secrets: Mutex::default(),
            leadership,
            on_dropped,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The right to act in the current term (for a background job to carry).
    pub fn guard(&self) -> Guard {
        self.leadership.guard()
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leadership.is_leader()
    }

    /// Whether a write may go out: this replica leads (in the guard's term, when a job
    /// writes). A refused write is counted.
    fn permit(&self, write: Write, guard: Option<&Guard>) -> bool {
        let ok = match guard {
            Some(g) => g.holds(),
            None => self.leadership.is_leader(),
        };
        if !ok {
            (self.on_dropped)(write);
            tracing::debug!(write = write.name(), "not the leader: write dropped");
        }
        ok
    }

    fn permit_or_err(&self, write: Write, guard: Option<&Guard>) -> Result<()> {
        if self.permit(write, guard) {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Resolve `scaleTargetRef` to an API that has a `/scale` subresource.
    pub async fn target(&self, namespace: &str, r: &ScaleTargetRef) -> Result<Target> {
        let ar = self.resolve_kind(&r.api_version, &r.kind).await?;
        Ok(Target {
            api: Api::namespaced_with(self.client.clone(), namespace, &ar),
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
    }

    async fn resolve_kind(&self, api_version: &str, kind: &str) -> Result<ApiResource> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some((at, ar)) = lock(&self.kinds).get(&key)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(ar.clone());
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, kind);
        let unknown = || Error::UnknownTargetKind {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        };
        let (ar, caps) = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok(found) => found,
            Err(kube::Error::Discovery(_)) => return Err(unknown()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(unknown()),
            Err(e) => return Err(Error::Kube(e)),
        };
        if !caps
            .subresources
            .iter()
            .any(|(sub, _)| sub.plural == "scale")
        {
            return Err(Error::TargetNotScalable {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            });
        }
        lock(&self.kinds).insert(key, (Instant::now(), ar.clone()));
        Ok(ar)
    }

    /// Read the target's replica counts.
    pub async fn scale(&self, target: &Target) -> Result<TargetScale> {
        match target.api.get_scale(&target.name).await {
            Ok(scale) => Ok(TargetScale {
                desired: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
                running: scale.status.map(|s| s.replicas).unwrap_or(0),
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::TargetNotFound {
                kind: target.kind.clone(),
                name: target.name.clone(),
                namespace: target.api.namespace().unwrap_or_default().to_string(),
            }),
            Err(e) => Err(Error::Kube(e)),
        }
    }

    /// Set the target's replica count through `/scale`; returns the counts the answer shows.
    pub async fn set_replicas(&self, target: &Target, replicas: i32) -> Result<TargetScale> {
        self.permit_or_err(Write::Scale, None)?;
        let patch = json!({ "spec": { "replicas": replicas } });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let scale = target
            .api
            .patch_scale(&target.name, &pp, &Patch::Merge(&patch))
            .await?;
        Ok(TargetScale {
            desired: scale.spec.and_then(|s| s.replicas).unwrap_or(replicas),
            running: scale.status.map(|s| s.replicas).unwrap_or(0),
        })
    }

    /// Look up `env` of `container` in the target's pod template (`spec.template.spec`).
    pub async fn template_env(
        &self,
        target: &Target,
        container: &str,
        env: &str,
    ) -> Result<TemplateEnv> {
        let obj = match target.api.get(&target.name).await {
            Ok(o) => o,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(Error::TargetNotFound {
                    kind: target.kind.clone(),
                    name: target.name.clone(),
                    namespace: target.api.namespace().unwrap_or_default().to_string(),
                });
            }
            Err(e) => return Err(Error::Kube(e)),
        };
        let containers = obj
            .data
            .pointer("/spec/template/spec/containers")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        let name_of = |c: &serde_json::Value| {
            c.get("name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let Some(c) = containers.iter().find(|c| name_of(c) == container) else {
            return Ok(TemplateEnv::ContainerMissing {
                containers: containers.iter().map(name_of).collect(),
            });
        };
        let value = c
            .get("env")
            .and_then(serde_json::Value::as_array)
            .and_then(|vars| {
                vars.iter()
                    .find(|v| v.get("name").and_then(serde_json::Value::as_str) == Some(env))
            })
            .and_then(|v| v.get("value"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        Ok(TemplateEnv::Found(value))
    }

    /// Set one env var of one container of the target's pod template by server-side apply
    /// under [`PREFETCH_FIELD_MANAGER`], without force: a field another manager owns with a
    /// different value comes back as a 409 conflict and is left alone.
    pub async fn apply_template_env(
        &self,
        target: &Target,
        api_version: &str,
        container: &str,
        env: &str,
        value: &str,
    ) -> Result<()> {
        self.permit_or_err(Write::Prefetch, None)?;
        let patch = json!({
            "apiVersion": api_version,
            "kind": target.kind,
            "metadata": {"name": target.name},
            "spec": {"template": {"spec": {"containers": [
                {"name": container, "env": [{"name": env, "value": value}]}
            ]}}},
        });
        target
            .api
            .patch(
                &target.name,
                &PatchParams::apply(PREFETCH_FIELD_MANAGER),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    /// One key of a ConfigMap (`None` when the ConfigMap or the key is missing).
    pub async fn config_map_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .get_opt(name)
            .await?
            .and_then(|cm| cm.data)
            .and_then(|d| d.get(key).cloned()))
    }

    /// Set one ConfigMap key by server-side apply under [`PREFETCH_FIELD_MANAGER`] (the
    /// ConfigMap is created when missing), without force.
    pub async fn apply_config_map_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        self.permit_or_err(Write::Prefetch, None)?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {key: value},
        });
        api.patch(
            name,
            &PatchParams::apply(PREFETCH_FIELD_MANAGER),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    /// Read credentials from a Secret in `namespace` (cached briefly).
    pub async fn credentials(&self, namespace: &str, keys: &SecretKeysRef) -> Result<Credentials> {
        let mut v = self
            .secret_values(
                namespace,
                &keys.name,
                &[&keys.username_key, &keys.password_key],
            )
            .await?;
        let password = v.pop().unwrap_or_default();
        let username = v.pop().unwrap_or_default();
        Ok(Credentials::new(username, password))
    }

    /// Values of keys of a Secret (cached for a short while), in the order asked.
    pub async fn secret_values(
        &self,
        namespace: &str,
        name: &str,
        keys: &[&str],
    ) -> Result<Vec<String>> {
        let cache_key = (namespace.to_string(), name.to_string());
        let cached = lock(&self.secrets)
            .get(&cache_key)
            .filter(|(at, _)| at.elapsed() < SECRET_TTL)
            .map(|(_, s)| s.clone());
        let secret = match cached {
            Some(s) => s,
            None => {
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let secret = api
                    .get_opt(name)
                    .await?
                    .ok_or_else(|| Error::SecretNotFound {
                        name: name.to_string(),
                        namespace: namespace.to_string(),
                    })?;
                lock(&self.secrets).insert(cache_key, (Instant::now(), secret.clone()));
                secret
            }
        };
        let value = |key: &str| -> Result<String> {
            let missing = || Error::SecretKeyMissing {
                name: name.to_string(),
                namespace: namespace.to_string(),
                key: key.to_string(),
            };
            if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
                return String::from_utf8(bytes.0.clone()).map_err(|_| missing());
            }
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .cloned()
                .ok_or_else(missing)
        };
        keys.iter().map(|k| value(k)).collect()
    }

    /// Drop a cached Secret so the next read sees a rotated value.
    pub fn forget_secret(&self, namespace: &str, name: &str) {
        lock(&self.secrets).remove(&(namespace.to_string(), name.to_string()));
    }

    /// The ScaledConsumer as the API server has it now (not as a watch cache last saw it):
    /// a job that starts or resumes decides on this durable record.
    pub async fn current(&self, sc: &ScaledConsumer) -> Result<ScaledConsumer> {
        let namespace = sc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
        let api: Api<ScaledConsumer> = Api::namespaced(self.client.clone(), &namespace);
        Ok(api.get(&sc.name_any()).await?)
    }

    /// Write the status by server-side apply under nerite's field manager.
    pub async fn apply_status(
        &self,
        sc: &ScaledConsumer,
        status: &ScaledConsumerStatus,
    ) -> Result<()> {
        self.permit_or_err(Write::Status, None)?;
        let namespace = sc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
        let api: Api<ScaledConsumer> = Api::namespaced(self.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": ScaledConsumer::api_version(&()),
            "kind": ScaledConsumer::kind(&()),
            "status": status,
        });
        api.patch_status(
            &sc.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    /// Merge-patch part of the status under its own field manager (a long-running task's
    /// progress, which the tick's server-side apply of the status does not own), as the job
    /// holding `guard`.
    pub async fn merge_status(
        &self,
        guard: &Guard,
        sc: &ScaledConsumer,
        field_manager: &str,
        status: serde_json::Value,
    ) -> Result<()> {
        self.permit_or_err(Write::Status, Some(guard))?;
        let namespace = sc.namespace().ok_or(Error::MissingObjectKey("namespace"))?;
        let api: Api<ScaledConsumer> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PatchParams {
            field_manager: Some(field_manager.to_string()),
            ..PatchParams::default()
        };
        api.patch_status(
            &sc.name_any(),
            &pp,
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
        Ok(())
    }

    /// Publish an Event on the ScaledConsumer. Failures are logged, never returned: an Event
    /// that cannot be written must not stop scaling.
    pub async fn event(
        &self,
        sc: &ScaledConsumer,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if self.permit(Write::Event, None) {
            self.publish(sc, warning, reason, action, note).await;
        }
    }

    /// [`KubeIo::event`] from the job holding `guard`.
    pub async fn job_event(
        &self,
        guard: &Guard,
        sc: &ScaledConsumer,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if self.permit(Write::Event, Some(guard)) {
            self.publish(sc, warning, reason, action, note).await;
        }
    }

    async fn publish(
        &self,
        sc: &ScaledConsumer,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(truncate(note, 1000)),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &sc.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
