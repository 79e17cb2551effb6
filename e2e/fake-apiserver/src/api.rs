//! The verbs: get, list, create, replace, patch (incl. server-side apply), delete, and the
//! `/status` and `/scale` subresources. HTTP-free: `routes` parses requests into [`Request`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::fields::{self, Writer};
use crate::resources::{self, ResourceInfo, ScaleSpec};
use crate::schema;
use crate::selector::{FieldSelector, LabelSelector, selector_object_to_string};
use crate::store::Store;

pub type Shared = Arc<Mutex<Store>>;

pub fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    // A panic while holding the lock leaves consistent-enough data for a test harness.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A parsed resource request.
#[derive(Debug, Clone)]
pub struct Request {
    pub info: ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    pub query: HashMap<String, String>,
    pub content_type: String,
    pub user_agent: String,
    pub body: Vec<u8>,
}

impl Request {
    /// The namespace objects are stored under ("" for cluster-scoped resources).
    pub fn ns(&self) -> String {
        if self.info.namespaced {
            self.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        }
    }

    fn name(&self) -> ApiResult<&str> {
        self.name
            .as_deref()
            .ok_or_else(|| ApiError::method_not_allowed("a resource name is required"))
    }

    fn flag(&self, key: &str) -> bool {
        self.query
            .get(key)
            .is_some_and(|v| v == "true" || v == "1" || v.is_empty())
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    fn writer(&self, sub: Option<&str>) -> Writer {
        let manager = self
            .query
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .cloned()
            .unwrap_or_else(|| {
                let ua = self.user_agent.split('/').next().unwrap_or_default();
                if ua.is_empty() {
                    "unknown".into()
                } else {
                    ua.to_string()
                }
            });
        Writer {
            manager,
            api_version: self.info.api_version(),
            subresource: sub.map(str::to_string),
            time: now(),
        }
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    Main,
    Status,
    Scale,
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Set `apiVersion`/`kind` for the version the client asked for.
pub fn present(info: &ResourceInfo, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(info.api_version()));
        m.insert("kind".into(), json!(info.kind));
    }
    obj
}

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if body.starts_with(b"k8s\0") {
        return Err(ApiError::unsupported_media_type(
            "application/vnd.kubernetes.protobuf",
        ));
    }
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?,
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    Ok(v)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn rv_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion").filter(|s| !s.is_empty())
}

fn unknown_sub(req: &Request, sub: &str) -> ApiError {
    ApiError::no_route(&format!(
        "{}/{}",
        crate::error::qualified(&req.info.plural, &req.info.group),
        sub
    ))
}

fn scope_of(req: &Request) -> ApiResult<Scope> {
    match req.sub.as_deref() {
        None => Ok(Scope::Main),
        Some("status") if req.info.status => Ok(Scope::Status),
        Some("scale") if req.info.scale.is_some() => Ok(Scope::Scale),
        Some(other) => Err(unknown_sub(req, other)),
    }
}

// ---------------------------------------------------------------- read

pub fn list(shared: &Shared, req: &Request) -> ApiResult<Value> {
    let labels = req
        .query
        .get("labelSelector")
        .map(|s| LabelSelector::parse(s))
        .transpose()?;
    let fields = req
        .query
        .get("fieldSelector")
        .map(|s| FieldSelector::parse(s))
        .transpose()?;
    let store = lock(shared);
    let ns = req.namespace.as_deref().filter(|_| req.info.namespaced);
    let items: Vec<Value> = store
        .list(&req.info, ns)
        .into_iter()
        .filter(|o| labels.as_ref().is_none_or(|l| l.matches_object(o)))
        .filter(|o| fields.as_ref().is_none_or(|f| f.matches_object(o)))
        .map(|o| present(&req.info, o))
        .collect();
    Ok(json!({
        "kind": req.info.list_kind,
        "apiVersion": req.info.api_version(),
        "metadata": {"resourceVersion": store.current_rv().to_string()},
        "items": items,
    }))
}

fn get_existing(store: &Store, req: &Request) -> ApiResult<Value> {
    let name = req.name()?;
    store
        .get(&req.info, &req.ns(), name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&req.info.plural, &req.info.group, name))
}

pub fn get(shared: &Shared, req: &Request) -> ApiResult<Value> {
    let scope = scope_of(req)?;
    let store = lock(shared);
    let obj = get_existing(&store, req)?;
    Ok(match scope {
        Scope::Scale => scale_of(&req.info, &obj),
        _ => present(&req.info, obj),
    })
}

// ---------------------------------------------------------------- paths like `.spec.replicas`

fn path_parts(path: &str) -> Vec<&str> {
    path.split('.').filter(|p| !p.is_empty()).collect()
}

fn get_dotted<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path_parts(path)
        .into_iter()
        .try_fold(obj, |cur, p| cur.get(p))
}

fn set_dotted(obj: &mut Value, path: &str, value: Value) {
    let parts = path_parts(path);
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
    cur[*last] = value;
}

fn nest_dotted(path: &str, value: Value) -> Value {
    path_parts(path)
        .into_iter()
        .rev()
        .fold(value, |acc, p| json!({ p: acc }))
}

// ---------------------------------------------------------------- scale

fn scale_spec(info: &ResourceInfo) -> ScaleSpec {
    info.scale.clone().unwrap_or_else(|| ScaleSpec {
        spec_replicas_path: ".spec.replicas".into(),
        status_replicas_path: ".status.replicas".into(),
        label_selector_path: None,
        selector_is_object: false,
    })
}

pub fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let spec = scale_spec(info);
    let default_replicas = if info.crd.is_none() { 1 } else { 0 };
    let replicas = get_dotted(obj, &spec.spec_replicas_path)
        .and_then(Value::as_i64)
        .unwrap_or(default_replicas);
    let status_replicas = get_dotted(obj, &spec.status_replicas_path)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = spec
        .label_selector_path
        .as_deref()
        .and_then(|p| get_dotted(obj, p))
        .map(|s| {
            if spec.selector_is_object {
                selector_object_to_string(s)
            } else {
                s.as_str().unwrap_or_default().to_string()
            }
        });
    let meta = &obj["metadata"];
    let mut metadata = json!({
        "name": meta["name"],
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
        "creationTimestamp": meta["creationTimestamp"],
    });
    if let Some(ns) = meta.get("namespace") {
        metadata["namespace"] = ns.clone();
    }
    let mut status = json!({"replicas": status_replicas});
    if let Some(sel) = selector.filter(|s| !s.is_empty()) {
        status["selector"] = json!(sel);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": replicas},
        "status": status,
    })
}

// ---------------------------------------------------------------- the write pipeline

struct Write<'a> {
    req: &'a Request,
    scope: Scope,
    writer: Writer,
    /// Managed fields already computed by server-side apply.
    applied: Option<Vec<fields::Entry>>,
}

/// Everything that decides whether an update changed anything.
fn comparable(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        if let Some(Value::Array(entries)) = meta.get_mut("managedFields") {
            for e in entries {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    v
}

fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

fn has_generation(info: &ResourceInfo) -> bool {
    info.crd.is_some() || info.status || info.plural == "customresourcedefinitions"
}

/// Normalize, validate and store one write; returns the stored object and whether it was created.
fn commit(
    store: &mut Store,
    w: &Write<'_>,
    old: Option<&Value>,
    mut new: Value,
) -> ApiResult<(Value, bool)> {
    let info = &w.req.info;
    let ns = w.req.ns();
    let name = meta_str(&new, "name").unwrap_or_default().to_string();
    new = present(info, new);
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    match old {
        Some(old) => {
            for key in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old["metadata"].get(key) {
                    Some(v) => new["metadata"][key] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(key);
                        }
                    }
                }
            }
        }
        None => {
            let meta = &mut new["metadata"];
            meta["uid"] = json!(store.new_uid());
            meta["creationTimestamp"] = json!(now());
            if info.namespaced {
                meta["namespace"] = json!(ns);
            } else if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
            if let Some(m) = meta.as_object_mut() {
                m.remove("deletionTimestamp");
                m.remove("generation");
            }
        }
    }
    // Each endpoint changes only its part of the object.
    match w.scope {
        Scope::Main if info.status => match old.and_then(|o| o.get("status")) {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        },
        Scope::Status => {
            let mut base = old.cloned().unwrap_or_else(|| new.clone());
            match new.get("status") {
                Some(s) => base["status"] = s.clone(),
                None => {
                    if let Some(m) = base.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new = base;
        }
        _ => {}
    }
    if info.plural == "customresourcedefinitions" && info.group == "apiextensions.k8s.io" {
        resources::from_crd(&new)?;
        if w.scope == Scope::Main {
            new["status"] = crd_status(&new);
        }
    }
    if info.plural == "namespaces" && info.group.is_empty() && old.is_none() {
        new["status"] = json!({"phase": "Active"});
        new["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    schema::process(info, &mut new, old, store.config.validate_schemas)?;

    let mut entries = match &w.applied {
        Some(entries) => entries.clone(),
        None => {
            let mut entries = old.map(fields::read_entries).unwrap_or_default();
            fields::record_update(&mut entries, old, &new, &w.writer);
            entries
        }
    };
    if w.applied.is_some() {
        // Drop ownership of anything normalization removed.
        let mut e2 = entries.clone();
        fields::record_update(&mut e2, Some(&new), &new, &w.writer);
        entries = e2;
    }
    fields::write_entries(&mut new, &entries);

    if has_generation(info) {
        let generation = match old {
            None => 1,
            Some(old) => {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                if w.scope != Scope::Status && spec_part(old) != spec_part(&new) {
                    g + 1
                } else {
                    g
                }
            }
        };
        new["metadata"]["generation"] = json!(generation);
    }

    if let Some(old) = old {
        if comparable(old) == comparable(&new) {
            return Ok((present(info, old.clone()), false));
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    }
    if w.req.dry_run() {
        return Ok((new, old.is_none()));
    }
    let finalizers_empty = new["metadata"]
        .get("finalizers")
        .and_then(Value::as_array)
        .is_none_or(|f| f.is_empty());
    if old.is_some() && new["metadata"].get("deletionTimestamp").is_some() && finalizers_empty {
        store.put(info, &ns, &name, new);
        let gone = store.remove(info, &ns, &name).unwrap_or_default();
        after_delete(store, info, &name, &gone);
        return Ok((gone, false));
    }
    let stored = store.put(info, &ns, &name, new);
    after_write(store, info, &ns, &name, &stored);
    Ok((stored, old.is_none()))
}

fn crd_status(crd: &Value) -> Value {
    let names = crd["spec"]["names"].clone();
    let t = now();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": t,
             "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": t,
             "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ],
    })
}

/// Side effects of a stored write: CRD registration and workload status emulation.
fn after_write(store: &mut Store, info: &ResourceInfo, ns: &str, name: &str, obj: &Value) {
    if info.plural == "customresourcedefinitions" && info.group == "apiextensions.k8s.io" {
        if let Ok(infos) = resources::from_crd(obj) {
            store.set_crd_resources(name, infos);
        }
        return;
    }
    if store.config.emulate_workloads && info.is_workload() {
        emulate_workload(store, info, ns, name, obj);
    }
}

/// Act like the controllers: every desired replica is instantly ready.
fn emulate_workload(store: &mut Store, info: &ResourceInfo, ns: &str, name: &str, obj: &Value) {
    let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    let mut new = obj.clone();
    let status = &mut new["status"];
    if !status.is_object() {
        *status = json!({});
    }
    for key in [
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "updatedReplicas",
    ] {
        if info.plural == "replicasets" && key == "updatedReplicas" {
            continue;
        }
        status[key] = json!(replicas);
    }
    if info.plural == "statefulsets" {
        status["currentReplicas"] = json!(replicas);
    }
    status["observedGeneration"] = obj["metadata"]["generation"].clone();
    if new == *obj {
        return;
    }
    let mut entries = fields::read_entries(obj);
    let writer = Writer {
        manager: "kube-controller-manager".into(),
        api_version: info.api_version(),
        subresource: Some("status".into()),
        time: now(),
    };
    fields::record_update(&mut entries, Some(obj), &new, &writer);
    fields::write_entries(&mut new, &entries);
    store.put(info, ns, name, new);
}

fn after_delete(store: &mut Store, info: &ResourceInfo, name: &str, _obj: &Value) {
    if info.plural == "customresourcedefinitions" && info.group == "apiextensions.k8s.io" {
        let keys: Vec<String> = store
            .resources()
            .iter()
            .filter(|r| r.crd.as_deref() == Some(name))
            .map(ResourceInfo::storage_key)
            .collect();
        store.set_crd_resources(name, Vec::new());
        for key in keys {
            store.remove_all(&key, None);
        }
    } else if info.plural == "namespaces" && info.group.is_empty() {
        for key in store.namespaced_keys() {
            store.remove_all(&key, Some(name));
        }
    }
}

fn check_namespace(req: &Request, obj: &Value) -> ApiResult<()> {
    if req.info.namespaced
        && let Some(ns) = meta_str(obj, "namespace").filter(|n| !n.is_empty())
        && ns != req.ns()
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- create / replace

pub fn create(shared: &Shared, req: &Request) -> ApiResult<Value> {
    if req.sub.is_some() || req.name.is_some() {
        return Err(ApiError::method_not_allowed(
            "POST is only supported on collections",
        ));
    }
    let mut obj = parse_body(&req.body)?;
    check_namespace(req, &obj)?;
    if req.info.namespaced && req.ns().is_empty() {
        return Err(ApiError::bad_request(
            "the namespace must be set for a namespaced resource",
        ));
    }
    let mut store = lock(shared);
    let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
            Some(prefix) => {
                let prefix = prefix.to_string();
                let suffix: String = (0..5)
                    .map(|_| {
                        let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
                        alphabet[(store.random() % alphabet.len() as u64) as usize] as char
                    })
                    .collect();
                format!("{prefix}{suffix}")
            }
            None => {
                return Err(ApiError::invalid(
                    &req.info.kind,
                    &req.info.group,
                    "",
                    vec![crate::error::Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    if store.get(&req.info, &req.ns(), &name).is_some() {
        return Err(ApiError::already_exists(
            &req.info.plural,
            &req.info.group,
            &name,
        ));
    }
    let w = Write {
        req,
        scope: Scope::Main,
        writer: req.writer(None),
        applied: None,
    };
    commit(&mut store, &w, None, obj).map(|(v, _)| v)
}

/// PUT on an object, `/status` or `/scale`.
pub fn replace(shared: &Shared, req: &Request) -> ApiResult<Value> {
    let scope = scope_of(req)?;
    let name = req.name()?.to_string();
    let body = parse_body(&req.body)?;
    let mut store = lock(shared);
    let old = get_existing(&store, req)?;
    if let Some(rv) = rv_of(&body)
        && Some(rv) != rv_of(&old)
    {
        return Err(ApiError::conflict(&req.info.plural, &req.info.group, &name));
    }
    if let Some(body_name) = meta_str(&body, "name")
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    check_namespace(req, &body)?;
    if scope == Scope::Scale {
        let replicas = body["spec"]["replicas"].as_i64().unwrap_or(0);
        return write_scale(&mut store, req, &old, replicas, None);
    }
    let mut new = body;
    new["metadata"]["name"] = json!(name);
    new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
    let w = Write {
        req,
        scope,
        writer: req.writer(req.sub.as_deref()),
        applied: None,
    };
    commit(&mut store, &w, Some(&old), new).map(|(v, _)| v)
}

fn write_scale(
    store: &mut Store,
    req: &Request,
    old: &Value,
    replicas: i64,
    applied: Option<Vec<fields::Entry>>,
) -> ApiResult<Value> {
    let spec = scale_spec(&req.info);
    let mut new = old.clone();
    set_dotted(&mut new, &spec.spec_replicas_path, json!(replicas));
    let w = Write {
        req,
        scope: Scope::Scale,
        writer: req.writer(Some("scale")),
        applied,
    };
    let (stored, _) = commit(store, &w, Some(old), new)?;
    Ok(scale_of(&req.info, &stored))
}

// ---------------------------------------------------------------- patch

enum PatchKind {
    Merge,
    Json,
    Apply,
}

fn patch_kind(content_type: &str) -> ApiResult<PatchKind> {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            Ok(PatchKind::Merge)
        }
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchKind::Apply),
        _ => Err(ApiError::unsupported_media_type(content_type)),
    }
}

fn apply_patch(kind: &PatchKind, target: &Value, body: &[u8]) -> ApiResult<Value> {
    let mut out = target.clone();
    match kind {
        PatchKind::Merge => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::merge(&mut out, &patch);
        }
        PatchKind::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut out, &patch).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchKind::Apply => return Err(ApiError::internal("apply is not a plain patch")),
    }
    Ok(out)
}

pub fn patch(shared: &Shared, req: &Request) -> ApiResult<(Value, bool)> {
    let scope = scope_of(req)?;
    let kind = patch_kind(&req.content_type)?;
    let name = req.name()?.to_string();
    let mut store = lock(shared);
    if let PatchKind::Apply = kind {
        return server_side_apply(&mut store, req, scope, &name);
    }
    let old = get_existing(&store, req)?;
    if scope == Scope::Scale {
        let current = scale_of(&req.info, &old);
        let patched = apply_patch(&kind, &current, &req.body)?;
        if rv_of(&patched) != rv_of(&current) {
            return Err(ApiError::conflict(&req.info.plural, &req.info.group, &name));
        }
        let replicas = patched["spec"]["replicas"].as_i64().unwrap_or(0);
        return write_scale(&mut store, req, &old, replicas, None).map(|v| (v, false));
    }
    let mut new = apply_patch(&kind, &present(&req.info, old.clone()), &req.body)?;
    if rv_of(&new) != rv_of(&old) {
        return Err(ApiError::conflict(&req.info.plural, &req.info.group, &name));
    }
    if meta_str(&new, "name") != Some(name.as_str()) {
        return Err(ApiError::bad_request(
            "the name of an object cannot be changed by a patch",
        ));
    }
    new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
    let w = Write {
        req,
        scope,
        writer: req.writer(req.sub.as_deref()),
        applied: None,
    };
    commit(&mut store, &w, Some(&old), new)
}

fn server_side_apply(
    store: &mut Store,
    req: &Request,
    scope: Scope,
    name: &str,
) -> ApiResult<(Value, bool)> {
    if req.query.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let force = req.flag("force");
    let applied = parse_body(&req.body)?;
    if let Some(n) = meta_str(&applied, "name")
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    check_namespace(req, &applied)?;
    let old = store.get(&req.info, &req.ns(), name).cloned();
    if let (Some(rv), Some(old)) = (rv_of(&applied), &old)
        && Some(rv) != rv_of(old)
    {
        return Err(ApiError::conflict(&req.info.plural, &req.info.group, name));
    }
    let writer = req.writer(match scope {
        Scope::Main => None,
        Scope::Status => Some("status"),
        Scope::Scale => Some("scale"),
    });
    let current = match &old {
        Some(o) => o.clone(),
        None if scope == Scope::Main => {
            let mut skeleton = json!({"metadata": {"name": name}});
            if req.info.namespaced {
                skeleton["metadata"]["namespace"] = json!(req.ns());
            }
            skeleton
        }
        None => return Err(ApiError::not_found(&req.info.plural, &req.info.group, name)),
    };
    // Limit the applied configuration to what this endpoint may change.
    let scoped = match scope {
        Scope::Main => {
            let mut a = applied.clone();
            if req.info.status
                && let Some(m) = a.as_object_mut()
            {
                m.remove("status");
            }
            a
        }
        Scope::Status => json!({"status": applied.get("status").cloned().unwrap_or(json!({}))}),
        Scope::Scale => {
            let replicas = applied["spec"]["replicas"].clone();
            nest_dotted(&scale_spec(&req.info).spec_replicas_path, replicas)
        }
    };
    let mut entries = fields::read_entries(&current);
    let new = fields::apply(&mut entries, &current, &scoped, &writer, force)
        .map_err(|c| ApiError::apply_conflict(&req.info.plural, &req.info.group, name, &c))?;
    if scope == Scope::Scale {
        let replicas = get_dotted(&new, &scale_spec(&req.info).spec_replicas_path)
            .and_then(Value::as_i64)
            .unwrap_or(0);
        return write_scale(store, req, &current, replicas, Some(entries)).map(|v| (v, false));
    }
    let w = Write {
        req,
        scope,
        writer,
        applied: Some(entries),
    };
    commit(store, &w, old.as_ref(), new)
}

// ---------------------------------------------------------------- delete

pub fn delete(shared: &Shared, req: &Request) -> ApiResult<Value> {
    if req.sub.is_some() {
        return Err(ApiError::method_not_allowed(
            "DELETE is not supported on subresources",
        ));
    }
    let name = req.name()?.to_string();
    let mut store = lock(shared);
    let old = get_existing(&store, req)?;
    if !req.body.is_empty()
        && let Ok(opts) = serde_json::from_slice::<Value>(&req.body)
    {
        let pre = &opts["preconditions"];
        let uid_mismatch = pre["uid"]
            .as_str()
            .is_some_and(|u| Some(u) != meta_str(&old, "uid"));
        let rv_mismatch = pre["resourceVersion"]
            .as_str()
            .is_some_and(|r| Some(r) != rv_of(&old));
        if uid_mismatch || rv_mismatch {
            return Err(ApiError::conflict(&req.info.plural, &req.info.group, &name));
        }
    }
    if req.dry_run() {
        return Ok(present(&req.info, old));
    }
    Ok(present(
        &req.info,
        delete_object(&mut store, &req.info, &req.ns(), &name, old),
    ))
}

fn delete_object(
    store: &mut Store,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
    old: Value,
) -> Value {
    let has_finalizers = old["metadata"]
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if old["metadata"].get("deletionTimestamp").is_some() {
            return old;
        }
        let mut new = old;
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if has_generation(info)
            && let Some(g) = new["metadata"]["generation"].as_i64()
        {
            new["metadata"]["generation"] = json!(g + 1);
        }
        return store.put(info, ns, name, new);
    }
    let gone = store.remove(info, ns, name).unwrap_or(old);
    after_delete(store, info, name, &gone);
    gone
}

pub fn delete_collection(shared: &Shared, req: &Request) -> ApiResult<Value> {
    let listed = list(shared, req)?;
    let mut store = lock(shared);
    let ns = req.ns();
    let mut items = Vec::new();
    for item in listed["items"].as_array().cloned().unwrap_or_default() {
        let Some(name) = meta_str(&item, "name").map(str::to_string) else {
            continue;
        };
        let item_ns = meta_str(&item, "namespace").unwrap_or(&ns).to_string();
        if req.dry_run() {
            items.push(item);
        } else if let Some(old) = store.get(&req.info, &item_ns, &name).cloned() {
            items.push(present(
                &req.info,
                delete_object(&mut store, &req.info, &item_ns, &name, old),
            ));
        }
    }
    Ok(json!({
        "kind": req.info.list_kind,
        "apiVersion": req.info.api_version(),
        "metadata": {"resourceVersion": store.current_rv().to_string()},
        "items": items,
    }))
}
