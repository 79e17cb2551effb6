//! The fake API server driven by the real `kube::Client` and kube-runtime watcher.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::watcher;
use kube::{Client, Discovery};
use nerite_fake_apiserver::{FakeApiServer, Handle};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.nerite.dev
spec:
  group: test.nerite.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wg]
    categories: [nerite]
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - name: Min
      type: integer
      jsonPath: .spec.minReplicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [minReplicas, maxReplicas]
            x-kubernetes-validations:
            - rule: self.minReplicas <= self.maxReplicas
              message: minReplicas must not exceed maxReplicas
            - rule: "!has(self.pollInterval) || duration(self.pollInterval) >= duration('1s')"
              message: pollInterval must be at least 1s
            properties:
              minReplicas: {type: integer, minimum: 0}
              maxReplicas: {type: integer, minimum: 1}
              replicas: {type: integer}
              pollInterval: {type: string, default: 10s}
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
"#;

async fn server() -> Result<(Handle, Client), Box<dyn std::error::Error>> {
    start(FakeApiServer::builder()).await
}

async fn start(
    builder: nerite_fake_apiserver::Builder,
) -> Result<(Handle, Client), Box<dyn std::error::Error>> {
    let handle = builder.start().await?;
    let config = kube::Config::new(handle.url().parse()?);
    let client = Client::try_from(config)?;
    Ok((handle, client))
}

fn deployment(name: &str, replicas: i32) -> Result<Deployment, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]}
            }
        }
    }))
}

fn configmap(name: &str, labels: serde_json::Value) -> Result<ConfigMap, serde_json::Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn deployment_crud() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    let created = api
        .create(&PostParams::default(), &deployment("web", 2)?)
        .await?;
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("apps"));

    let dup = api
        .create(&PostParams::default(), &deployment("web", 2)?)
        .await;
    assert_eq!(api_error(dup).reason, "AlreadyExists");

    let mut current = api.get("web").await?;
    // The emulated controller made every replica ready.
    let status = current.status.clone().unwrap_or_default();
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(status.observed_generation, Some(1));

    if let Some(spec) = current.spec.as_mut() {
        spec.replicas = Some(4);
    }
    let replaced = api.replace("web", &PostParams::default(), &current).await?;
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(api.list(&ListParams::default()).await?.items.len(), 1);

    // Listing across namespaces.
    let all: Api<Deployment> = Api::all(client);
    assert_eq!(all.list(&ListParams::default()).await?.items.len(), 1);

    api.delete("web", &DeleteParams::default()).await?;
    let gone = api.get("web").await;
    assert_eq!(api_error(gone).code, 404);
    Ok(())
}

#[tokio::test]
async fn generate_name_and_finalizers() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm = configmap("", json!({}))?;
    cm.metadata.name = None;
    cm.metadata.generate_name = Some("gen-".into());
    cm.metadata.finalizers = Some(vec!["nerite.dev/cleanup".into()]);
    let created = api.create(&PostParams::default(), &cm).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");

    api.delete(&name, &DeleteParams::default()).await?;
    let held = api.get(&name).await?;
    assert!(held.metadata.deletion_timestamp.is_some());

    let patch = json!({"metadata": {"finalizers": null}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(api_error(api.get(&name).await).code, 404);
    Ok(())
}

#[tokio::test]
async fn watch_from_resource_version() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &configmap("a", json!({}))?)
        .await?;
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    api.create(&PostParams::default(), &configmap("b", json!({}))?)
        .await?;
    let patch = json!({"data": {"k": "changed"}});
    api.patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await?
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match stream.try_next().await? {
            Some(WatchEvent::Added(cm)) => {
                seen.push(format!("added {}", cm.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Modified(cm)) => {
                seen.push(format!("modified {}", cm.metadata.name.unwrap_or_default()))
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(seen, vec!["added b", "modified a"]);

    // Live events arrive too.
    let live = api.watch(&WatchParams::default().timeout(5), &rv).await?;
    let mut live = live.boxed();
    api.delete("b", &DeleteParams::default()).await?;
    let mut deleted = false;
    while let Some(ev) = live.try_next().await? {
        if let WatchEvent::Deleted(cm) = ev {
            deleted = cm.metadata.name.as_deref() == Some("b");
            break;
        }
    }
    assert!(deleted);
    Ok(())
}

#[tokio::test]
async fn watch_from_compacted_resource_version_is_expired() -> TestResult {
    let (_server, client) = start(FakeApiServer::builder().watch_history(3)).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..6 {
        api.create(
            &PostParams::default(),
            &configmap(&format!("cm{i}"), json!({}))?,
        )
        .await?;
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), "2")
        .await?
        .boxed();
    match stream.try_next().await? {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    assert!(stream.try_next().await?.is_none());
    Ok(())
}

#[tokio::test]
async fn scale_subresource() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &deployment("web", 2)?)
        .await?;
    let scale = api.get_scale("web").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let status = scale.status.unwrap_or_default();
    assert_eq!(status.replicas, 2);
    assert_eq!(status.selector.as_deref(), Some("app=web"));

    let patch = json!({"spec": {"replicas": 5}});
    let scaled = api
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(scaled.spec.and_then(|s| s.replicas), Some(5));
    let d = api.get("web").await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(5));
    assert_eq!(d.status.and_then(|s| s.available_replicas), Some(5));
    assert_eq!(d.metadata.generation, Some(2));

    // Resources without a scale subresource answer 404.
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &configmap("c", json!({}))?)
        .await?;
    assert_eq!(api_error(cms.get_scale("c").await).code, 404);
    Ok(())
}

#[tokio::test]
async fn status_apply_keeps_generation() -> TestResult {
    let (_server, client) = start(FakeApiServer::builder().emulate_workloads(false)).await?;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &deployment("web", 1)?)
        .await?;
    let status = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "status": {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1}
    });
    let patched = api
        .patch_status("web", &PatchParams::apply("nerite"), &Patch::Apply(&status))
        .await?;
    assert_eq!(patched.status.and_then(|s| s.ready_replicas), Some(1));
    assert_eq!(patched.metadata.generation, Some(1));
    let entries = patched.metadata.managed_fields.unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e.manager.as_deref() == Some("nerite")
                && e.operation.as_deref() == Some("Apply")
                && e.subresource.as_deref() == Some("status"))
    );

    // Status in a main-resource write is ignored; spec changes bump the generation.
    let patch = json!({"spec": {"replicas": 3}, "status": {"replicas": 99}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(d.metadata.generation, Some(2));
    assert_eq!(d.status.and_then(|s| s.replicas), Some(1));

    // Label changes do not.
    let patch = json!({"metadata": {"labels": {"extra": "yes"}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(d.metadata.generation, Some(2));
    Ok(())
}

#[tokio::test]
async fn server_side_apply_conflicts() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<Deployment> = Api::namespaced(client, "default");
    let mut desired = serde_json::to_value(deployment("web", 2)?)?;
    let created = api
        .patch(
            "web",
            &PatchParams::apply("nerite"),
            &Patch::Apply(&desired),
        )
        .await?;
    assert_eq!(created.spec.and_then(|s| s.replicas), Some(2));

    // Another manager changing the same field conflicts.
    let user = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 3}
    });
    let err = api_error(
        api.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&user))
            .await,
    );
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"nerite\" using apps/v1: .spec.replicas"
    );
    // The same value is shared, not a conflict.
    let same = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 2}
    });
    api.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&same))
        .await?;

    let forced = api
        .patch(
            "web",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&user),
        )
        .await?;
    assert_eq!(forced.spec.and_then(|s| s.replicas), Some(3));

    // Now nerite's apply of replicas conflicts with kubectl; a scale write takes ownership too.
    let err = api_error(
        api.patch(
            "web",
            &PatchParams::apply("nerite"),
            &Patch::Apply(&desired),
        )
        .await,
    );
    assert!(
        err.message.contains("conflict with \"kubectl\""),
        "{}",
        err.message
    );
    let patch = json!({"spec": {"replicas": 7}});
    let pp = PatchParams {
        field_manager: Some("kubectl-scale".into()),
        ..Default::default()
    };
    api.patch_scale("web", &pp, &Patch::Merge(&patch)).await?;
    let err = api_error(
        api.patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&user))
            .await,
    );
    assert!(
        err.message
            .contains("conflict with \"kubectl-scale\" with subresource \"scale\" using apps/v1: .spec.replicas"),
        "{}",
        err.message
    );

    // Fields a manager stops applying are removed.
    desired["metadata"]["labels"] = json!({});
    if let Some(spec) = desired["spec"].as_object_mut() {
        spec.remove("replicas");
    }
    let d = api
        .patch(
            "web",
            &PatchParams::apply("nerite"),
            &Patch::Apply(&desired),
        )
        .await?;
    assert_eq!(
        d.metadata.labels.clone().unwrap_or_default().get("app"),
        None
    );
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(7));
    Ok(())
}

#[tokio::test]
async fn stale_replace_conflicts() -> TestResult {
    let (_server, client) = start(FakeApiServer::builder().emulate_workloads(false)).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let created = api
        .create(&PostParams::default(), &configmap("c", json!({}))?)
        .await?;
    let mut first = created.clone();
    first.data = Some([("k".to_string(), "one".to_string())].into());
    api.replace("c", &PostParams::default(), &first).await?;
    let mut stale = created;
    stale.data = Some([("k".to_string(), "two".to_string())].into());
    let err = api_error(api.replace("c", &PostParams::default(), &stale).await);
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "Conflict");
    Ok(())
}

#[tokio::test]
async fn label_selectors() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    for (name, labels) in [
        ("a", json!({"app": "x", "tier": "web"})),
        ("b", json!({"app": "y"})),
        ("c", json!({"app": "z", "tier": "db"})),
    ] {
        api.create(&PostParams::default(), &configmap(name, labels)?)
            .await?;
    }
    let names = |list: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    };
    let lp = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(api.list(&lp("app=x")).await?), vec!["a"]);
    assert_eq!(names(api.list(&lp("app!=x")).await?), vec!["b", "c"]);
    assert_eq!(names(api.list(&lp("tier")).await?), vec!["a", "c"]);
    assert_eq!(names(api.list(&lp("!tier")).await?), vec!["b"]);
    assert_eq!(names(api.list(&lp("app in (x,y)")).await?), vec!["a", "b"]);
    let by_name = ListParams::default().fields("metadata.name=c");
    assert_eq!(names(api.list(&by_name).await?), vec!["c"]);
    Ok(())
}

#[tokio::test]
async fn crd_discovery_and_validation() -> TestResult {
    let (_server, client) = server().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_yaml::from_str(WIDGET_CRD)?;
    let created = crds.create(&PostParams::default(), &crd).await?;
    let established = created
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);

    let discovery = Discovery::new(client.clone()).run().await?;
    let gvk = GroupVersionKind::gvk("test.nerite.dev", "v1alpha1", "Widget");
    let (ar, caps) = discovery.resolve_gvk(&gvk).ok_or("Widget not discovered")?;
    assert_eq!(ar.plural, "widgets");
    let subs: Vec<String> = caps
        .subresources
        .iter()
        .map(|(r, _)| r.plural.clone())
        .collect();
    assert!(
        subs.contains(&"status".to_string()) && subs.contains(&"scale".to_string()),
        "{subs:?}"
    );

    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let bad =
        DynamicObject::new("bad", &ar).data(json!({"spec": {"minReplicas": 5, "maxReplicas": 2}}));
    let err = api_error(widgets.create(&PostParams::default(), &bad).await);
    assert_eq!(err.code, 422);
    assert_eq!(err.reason, "Invalid");
    assert_eq!(
        err.message,
        "Widget.test.nerite.dev \"bad\" is invalid: spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas"
    );
    let bad = DynamicObject::new("bad", &ar)
        .data(json!({"spec": {"minReplicas": 1, "maxReplicas": 2, "pollInterval": "10ms"}}));
    let err = api_error(widgets.create(&PostParams::default(), &bad).await);
    assert!(
        err.message.contains("pollInterval must be at least 1s"),
        "{}",
        err.message
    );

    let good = DynamicObject::new("good", &ar)
        .data(json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "replicas": 2, "unknown": 1}}));
    let created = widgets.create(&PostParams::default(), &good).await?;
    assert_eq!(created.data["spec"]["pollInterval"], "10s");
    assert!(created.data["spec"].get("unknown").is_none());

    // The scale subresource follows the CRD's paths.
    let scale = widgets.get_scale("good").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    let patch = json!({"spec": {"replicas": 3}});
    widgets
        .patch_scale("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    assert_eq!(widgets.get("good").await?.data["spec"]["replicas"], 3);

    // Deleting the CRD unregisters it.
    crds.delete("widgets.test.nerite.dev", &DeleteParams::default())
        .await?;
    assert_eq!(api_error(widgets.get("good").await).code, 404);
    Ok(())
}

#[tokio::test]
async fn schema_validation_can_be_disabled() -> TestResult {
    let (server, client) = start(FakeApiServer::builder().validate_schemas(false)).await?;
    server.register_crd_yaml(WIDGET_CRD)?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.nerite.dev", "v1alpha1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let bad =
        DynamicObject::new("bad", &ar).data(json!({"spec": {"minReplicas": 5, "maxReplicas": 2}}));
    widgets.create(&PostParams::default(), &bad).await?;
    Ok(())
}

#[tokio::test]
async fn runtime_watcher_sees_init_and_changes() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &configmap("first", json!({}))?)
        .await?;
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut init = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await??
            .ok_or("watcher ended")?;
        match ev {
            watcher::Event::Init => init.push("Init".to_string()),
            watcher::Event::InitApply(cm) => init.push(format!(
                "InitApply {}",
                cm.metadata.name.unwrap_or_default()
            )),
            watcher::Event::InitDone => {
                init.push("InitDone".to_string());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, vec!["Init", "InitApply first", "InitDone"]);
    api.create(&PostParams::default(), &configmap("second", json!({}))?)
        .await?;
    let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await??
        .ok_or("watcher ended")?;
    match ev {
        watcher::Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("second")),
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn streaming_list_watcher() -> TestResult {
    let (_server, client) = server().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &configmap("first", json!({}))?)
        .await?;
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(api, config).boxed();
    let mut kinds = Vec::new();
    while kinds.last() != Some(&"InitDone") {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await??
            .ok_or("watcher ended")?;
        kinds.push(match ev {
            watcher::Event::Init => "Init",
            watcher::Event::InitApply(_) => "InitApply",
            watcher::Event::InitDone => "InitDone",
            _ => "other",
        });
    }
    assert_eq!(kinds, vec!["Init", "InitApply", "InitDone"]);
    Ok(())
}

/// The project's real CRD, when it has been generated: its CEL rules must work here.
#[tokio::test]
async fn project_crd_cel_rules() -> TestResult {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/scaledconsumers.nerite.dev.yaml"
    );
    if !std::path::Path::new(path).exists() {
        println!("note: {path} not found; skipping");
        return Ok(());
    }
    let (server, client) = server().await?;
    server.register_crd_file(path)?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nerite.dev", "v1alpha1", "ScaledConsumer"),
        "scaledconsumers",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let spec = |extra: serde_json::Value| {
        let mut spec = json!({
            "minReplicas": 1, "maxReplicas": 3,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "objective": {"backlogPerReplica": 10},
            "source": {"rabbitmq": {"managementUrl": "http://rmq:15672", "queue": "jobs",
                                    "credentialsSecretRef": {"name": "creds"}}},
        });
        json_patch::merge(&mut spec, &extra);
        spec
    };
    let pp = PatchParams::apply("test");
    let ok = DynamicObject::new("ok", &ar).data(json!({"spec": spec(json!({}))}));
    api.patch("ok", &pp, &Patch::Apply(&ok)).await?;
    for (extra, message) in [
        (
            json!({"minReplicas": 5}),
            "minReplicas must not exceed maxReplicas",
        ),
        (
            json!({"objective": {"maxDrainTime": "10ms"}}),
            "maxDrainTime must be at least 1s",
        ),
        (
            json!({"source": {"rabbitmq": {"managementUrl": "ftp://x"}}}),
            "managementUrl must be an http:// or https:// URL",
        ),
        (
            json!({"source": {"rabbitmq": null}}),
            "exactly one source must be set",
        ),
        (
            json!({"fallback": {"mode": "Fixed"}}),
            "fallback.replicas is required when mode is Fixed",
        ),
    ] {
        let bad = DynamicObject::new("bad", &ar).data(json!({"spec": spec(extra)}));
        let err = api_error(api.patch("bad", &pp, &Patch::Apply(&bad)).await);
        assert_eq!(err.code, 422);
        assert!(err.message.contains(message), "{}", err.message);
    }
    Ok(())
}
