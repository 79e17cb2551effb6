//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Simplification: ownership is tracked on leaf paths made of object field names, plus
//! `k:{"name":"..."}` segments for the pod-template lists that the real API server merges by
//! name (`containers`, `initContainers`, `ephemeralContainers`, `env`, `volumes`: see
//! [`ASSOCIATIVE`]). Every other list is atomic (owned as one leaf), including lists marked
//! `x-kubernetes-list-type: map` in CRDs; `FieldsV1` is written in the real `f:`/`k:` format.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A leaf field path, e.g. `["spec", "replicas"]`; an item of an associative list is a
/// `k:{"name":"consumer"}` segment.
pub type Path = Vec<String>;

/// Lists merged by their items' `name` (as built-in pod templates declare them), wherever they
/// appear.
pub const ASSOCIATIVE: [&str; 5] = [
    "containers",
    "initContainers",
    "ephemeralContainers",
    "env",
    "volumes",
];

/// The `k:` segment of an associative-list item, when the list is associative and the item has
/// a string `name`.
fn item_key(list_field: Option<&String>, item: &Value) -> Option<String> {
    let field = list_field?;
    if !ASSOCIATIVE.contains(&field.as_str()) {
        return None;
    }
    let name = item.get("name")?.as_str()?;
    Some(format!("k:{}", json!({ "name": name })))
}

/// True when every item of `items` (under `list_field`) has a key.
fn keyed(list_field: Option<&String>, items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|i| item_key(list_field, i).is_some())
}

/// Merge `patch` into `target` like a JSON merge patch, except that associative lists are
/// merged item by item (matched by name) instead of replaced.
pub fn merge(target: &mut Value, patch: &Value) {
    fn walk(target: &mut Value, patch: &Value, field: Option<&String>) {
        match (target, patch) {
            (Value::Array(have), Value::Array(want))
                if keyed(field, want) && (have.is_empty() || keyed(field, have)) =>
            {
                for item in want {
                    let key = item_key(field, item);
                    match have.iter_mut().find(|h| item_key(field, h) == key) {
                        Some(existing) => walk(existing, item, None),
                        None => have.push(item.clone()),
                    }
                }
            }
            (t @ Value::Object(_), Value::Object(p)) => {
                let Value::Object(m) = t else { return };
                for (k, v) in p {
                    if v.is_null() {
                        m.remove(k);
                    } else {
                        let slot = m.entry(k.clone()).or_insert(Value::Null);
                        if !slot.is_object() && !v.is_object() && !v.is_array() {
                            *slot = v.clone();
                        } else {
                            walk(slot, v, Some(k));
                        }
                    }
                }
            }
            (t, p) => {
                let mut p = p.clone();
                strip_nulls(&mut p);
                *t = p;
            }
        }
    }
    walk(target, patch, None);
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        for x in m.values_mut() {
            strip_nulls(x);
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: BTreeSet<Path>,
}

/// Who writes, and how.
#[derive(Debug, Clone)]
pub struct Writer {
    pub manager: String,
    pub api_version: String,
    pub subresource: Option<String>,
    pub time: String,
}

impl Entry {
    fn same_slot(&self, manager: &str, operation: &str, subresource: &Option<String>) -> bool {
        self.manager == manager && self.operation == operation && &self.subresource == subresource
    }

    /// `"kubectl" with subresource "scale" using apps/v1`, as in real conflict messages.
    pub fn describe(&self) -> String {
        match &self.subresource {
            Some(s) => format!(
                "\"{}\" with subresource \"{s}\" using {}",
                self.manager, self.api_version
            ),
            None => format!("\"{}\" using {}", self.manager, self.api_version),
        }
    }
}

pub fn display_path(p: &Path) -> String {
    p.iter().map(|s| format!(".{s}")).collect()
}

/// The part of an object whose fields are owned: everything except `apiVersion`, `kind`
/// and server-managed metadata.
pub fn tracked(obj: &Value) -> Value {
    let mut out = Map::new();
    if let Some(m) = obj.as_object() {
        for (k, v) in m {
            match k.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    let mut meta = Map::new();
                    if let Some(mm) = v.as_object() {
                        for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
                            if let Some(x) = mm.get(key) {
                                meta.insert(key.to_string(), x.clone());
                            }
                        }
                    }
                    if !meta.is_empty() {
                        out.insert(k.clone(), Value::Object(meta));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// Leaf paths of a value with their values (objects and associative lists are descended,
/// all else is a leaf).
pub fn leaves(v: &Value) -> BTreeMap<Path, Value> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeMap<Path, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Array(items) if keyed(prefix.last(), items) => {
                let field = prefix.last().cloned();
                for item in items {
                    if let Some(key) = item_key(field.as_ref(), item) {
                        prefix.push(key);
                        walk(item, prefix, out);
                        prefix.pop();
                    }
                }
            }
            _ => {
                if !prefix.is_empty() {
                    out.insert(prefix.clone(), v.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    let mut field: Option<&String> = None;
    for seg in p {
        cur = match cur {
            Value::Array(items) if seg.starts_with("k:") => items
                .iter()
                .find(|i| item_key(field, i).as_deref() == Some(seg.as_str()))?,
            _ => cur.get(seg)?,
        };
        field = Some(seg);
    }
    Some(cur)
}

/// Remove a leaf and any parents it leaves empty (top-level keys stay).
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    // An associative-list item's key goes with the item (every owner of the item owns it).
    if last == "name" && parents.last().is_some_and(|s| s.starts_with("k:")) {
        remove_path(v, parents);
        return;
    }
    let mut cur = &mut *v;
    let mut field: Option<String> = None;
    for seg in parents {
        let next = if seg.starts_with("k:") && cur.is_array() {
            cur.as_array_mut().and_then(|items| {
                items
                    .iter_mut()
                    .find(|i| item_key(field.as_ref(), i).as_deref() == Some(seg.as_str()))
            })
        } else {
            cur.get_mut(seg)
        };
        match next {
            Some(next) => cur = next,
            None => return,
        }
        field = Some(seg.clone());
    }
    let now_empty = match cur {
        Value::Array(items) if last.starts_with("k:") => {
            items.retain(|i| item_key(field.as_ref(), i).as_deref() != Some(last.as_str()));
            items.is_empty()
        }
        Value::Object(m) => {
            m.remove(last);
            // An associative-list item left with only its key is gone too.
            m.is_empty()
                || (m.len() == 1
                    && m.contains_key("name")
                    && parents.last().is_some_and(|s| s.starts_with("k:")))
        }
        _ => false,
    };
    if now_empty && parents.len() > 1 {
        remove_path(v, parents);
    }
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    a.len() <= b.len() && b[..a.len()] == *a
}

fn fields_to_v1(fields: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut cur = &mut root;
        for seg in p {
            let name = if seg.starts_with("k:") {
                seg.clone()
            } else {
                format!("f:{seg}")
            };
            let entry = cur.entry(name).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            let Value::Object(next) = entry else {
                return Value::Object(root);
            };
            cur = next;
        }
    }
    Value::Object(root)
}

fn fields_from_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.as_str() != ".").collect())
            .unwrap_or_default();
        let named: Vec<_> = children
            .iter()
            .filter_map(|(k, c)| {
                k.strip_prefix("f:")
                    .or_else(|| k.starts_with("k:").then_some(k.as_str()))
                    .map(|n| (n, *c))
            })
            .collect();
        if named.is_empty() || named.len() != children.len() {
            // A leaf, or a list keyed by `k:`/`v:`/`i:` entries: owned atomically.
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (name, child) in named {
            prefix.push(name.to_string());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Read `metadata.managedFields` of an object.
pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                fields: e.get("fieldsV1").map(fields_from_v1).unwrap_or_default(),
            })
        })
        .collect()
}

/// Write entries to `metadata.managedFields` (removed when empty).
pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Drop owned paths that are no longer leaves of `obj`, and entries left empty
/// (apply entries are kept).
fn cleanup(entries: &mut Vec<Entry>, obj: &Value) {
    let present = leaves(&tracked(obj));
    for e in entries.iter_mut() {
        e.fields.retain(|p| present.contains_key(p));
    }
    entries.retain(|e| !e.fields.is_empty() || e.operation == "Apply");
}

/// Record a non-apply write: the writer takes the fields it changed (operation `Update`).
pub fn record_update(entries: &mut Vec<Entry>, old: Option<&Value>, new: &Value, w: &Writer) {
    let old_leaves = old.map(|o| leaves(&tracked(o))).unwrap_or_default();
    let new_leaves = leaves(&tracked(new));
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|(p, v)| old_leaves.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    if !changed.is_empty() {
        for e in entries.iter_mut() {
            e.fields.retain(|p| !changed.contains(p));
        }
        match entries
            .iter_mut()
            .find(|e| e.same_slot(&w.manager, "Update", &w.subresource))
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = w.time.clone();
                e.api_version = w.api_version.clone();
            }
            None => entries.push(Entry {
                manager: w.manager.clone(),
                operation: "Update".into(),
                api_version: w.api_version.clone(),
                time: w.time.clone(),
                subresource: w.subresource.clone(),
                fields: changed,
            }),
        }
    }
    cleanup(entries, new);
}

/// Server-side apply of `applied` (already limited to the writer's scope) onto `current`.
///
/// Returns the new object, or the conflicts as `(manager description, field path)`.
pub fn apply(
    entries: &mut Vec<Entry>,
    current: &Value,
    applied: &Value,
    w: &Writer,
    force: bool,
) -> Result<Value, Vec<(String, String)>> {
    let applied_leaves: BTreeMap<Path, Value> = leaves(&tracked(applied))
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect();
    let current_tracked = tracked(current);
    let applied_tracked = tracked(applied);

    // Conflicts with other managers that own a field the apply sets to a different value.
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        // Like the real server, the applier's own `Update` entries can conflict too.
        if e.same_slot(&w.manager, "Apply", &w.subresource) {
            continue;
        }
        for owned in &e.fields {
            for a in applied_leaves.keys() {
                let shorter = if is_prefix(owned, a) {
                    owned
                } else if is_prefix(a, owned) {
                    a
                } else {
                    continue;
                };
                let cur = get_path(&current_tracked, shorter);
                let new = get_path(&applied_tracked, shorter);
                if cur != new {
                    conflicts.push((i, owned.clone()));
                    break;
                }
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts
                .iter()
                .map(|(i, p)| (entries[*i].describe(), display_path(p)))
                .collect());
        }
        for (i, p) in &conflicts {
            entries[*i].fields.remove(p);
        }
    }

    // Fields this manager applied before but omits now are removed, unless co-owned.
    let previous: BTreeSet<Path> = entries
        .iter()
        .find(|e| e.same_slot(&w.manager, "Apply", &w.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut new = current.clone();
    for p in &previous {
        let still_applied = applied_leaves.keys().any(|a| is_prefix(p, a));
        let co_owned = entries
            .iter()
            .filter(|e| !e.same_slot(&w.manager, "Apply", &w.subresource))
            .any(|e| e.fields.contains(p));
        if !still_applied && !co_owned {
            remove_path(&mut new, p);
        }
    }
    let mut to_merge = applied.clone();
    if let Some(m) = to_merge.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
    }
    merge(&mut new, &to_merge);

    let fields: BTreeSet<Path> = applied_leaves.into_keys().collect();
    match entries
        .iter_mut()
        .find(|e| e.same_slot(&w.manager, "Apply", &w.subresource))
    {
        Some(e) => {
            e.fields = fields;
            e.time = w.time.clone();
            e.api_version = w.api_version.clone();
        }
        None => entries.push(Entry {
            manager: w.manager.clone(),
            operation: "Apply".into(),
            api_version: w.api_version.clone(),
            time: w.time.clone(),
            subresource: w.subresource.clone(),
            fields,
        }),
    }
    cleanup(entries, &new);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(m: &str) -> Writer {
        Writer {
            manager: m.into(),
            api_version: "apps/v1".into(),
            subresource: None,
            time: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn fields_v1_round_trip() {
        let obj = json!({"spec": {"replicas": 1, "template": {"x": [1, 2]}}, "metadata": {"labels": {"a": "b"}}});
        let set: BTreeSet<Path> = leaves(&tracked(&obj)).into_keys().collect();
        let v1 = fields_to_v1(&set);
        assert_eq!(v1["f:spec"]["f:replicas"], json!({}));
        assert_eq!(fields_from_v1(&v1), set);
    }

    #[test]
    fn env_of_one_container_is_applied_alone() {
        let mut entries = Vec::new();
        let created = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "MODE", "value": "x"}]},
            {"name": "sidecar", "image": "s:1"}
        ]}}}});
        record_update(&mut entries, None, &created, &writer("kubectl"));
        let env = |v: &str| {
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "env": [{"name": "PREFETCH", "value": v}]}
            ]}}}})
        };
        let obj = apply(
            &mut entries,
            &created,
            &env("8"),
            &writer("nerite-prefetch"),
            false,
        )
        .unwrap_or_default();
        let containers = &obj["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "a:1");
        assert_eq!(containers[1]["name"], "sidecar");
        assert_eq!(containers[0]["env"][0]["name"], "MODE");
        assert_eq!(
            containers[0]["env"][1],
            json!({"name": "PREFETCH", "value": "8"})
        );
        // The same manager changes its value without conflict.
        let obj = apply(
            &mut entries,
            &obj,
            &env("16"),
            &writer("nerite-prefetch"),
            false,
        )
        .unwrap_or_default();
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"],
            "16"
        );
        // Another manager setting a different value conflicts; the same value does not.
        let err = apply(&mut entries, &obj, &env("4"), &writer("other"), false);
        assert!(err.is_err());
        assert!(apply(&mut entries, &obj, &env("16"), &writer("other"), false).is_ok());
        // FieldsV1 round-trips the k: segments.
        let set: BTreeSet<Path> = leaves(&tracked(&obj)).into_keys().collect();
        assert_eq!(fields_from_v1(&fields_to_v1(&set)), set);
        assert!(
            fields_to_v1(&set)["f:spec"]["f:template"]["f:spec"]["f:containers"]
                .get(r#"k:{"name":"app"}"#)
                .is_some()
        );
    }

    #[test]
    fn dropping_an_applied_env_removes_only_it() {
        let mut entries = Vec::new();
        let created = json!({"spec": {"containers": [{"name": "app", "image": "a:1"}]}});
        record_update(&mut entries, None, &created, &writer("kubectl"));
        let with_env = json!({"spec": {"containers": [{"name": "app", "env": [{"name": "P", "value": "1"}]}]}});
        let obj =
            apply(&mut entries, &created, &with_env, &writer("op"), false).unwrap_or_default();
        let without = json!({"spec": {"containers": [{"name": "app"}]}});
        let obj = apply(&mut entries, &obj, &without, &writer("op"), false).unwrap_or_default();
        assert_eq!(obj["spec"]["containers"][0]["image"], "a:1");
        assert!(obj["spec"]["containers"][0].get("env").is_none(), "{obj}");
    }

    #[test]
    fn apply_conflicts_and_removal() {
        let mut entries = Vec::new();
        let base = json!({"metadata": {"name": "x"}});
        let a1 = json!({"spec": {"replicas": 2, "paused": false}});
        let obj = apply(&mut entries, &base, &a1, &writer("op"), false).unwrap_or_default();
        assert_eq!(obj["spec"]["replicas"], 2);
        let mut edited = obj.clone();
        edited["spec"]["replicas"] = json!(5);
        record_update(&mut entries, Some(&obj), &edited, &writer("kubectl"));
        let err = apply(&mut entries, &edited, &a1, &writer("op"), false);
        assert_eq!(
            err.err(),
            Some(vec![(
                "\"kubectl\" using apps/v1".to_string(),
                ".spec.replicas".to_string()
            )])
        );
        // Omitting a field removes it; forcing takes ownership.
        let a2 = json!({"spec": {"replicas": 3}});
        let forced = apply(&mut entries, &edited, &a2, &writer("op"), true).unwrap_or_default();
        assert_eq!(forced["spec"], json!({"replicas": 3}));
        assert!(entries.iter().all(|e| e.manager == "op"));
    }
}
