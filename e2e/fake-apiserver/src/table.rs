//! `meta.k8s.io/v1` `Table` output for `kubectl get` (printer columns via simple JSONPath).

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, ResourceInfo};

fn col(name: &str, type_: &str, json_path: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        priority: 0,
        description: String::new(),
        format: String::new(),
    }
}

/// Columns after `Name`.
fn columns(info: &ResourceInfo) -> Vec<PrinterColumn> {
    if !info.printer_columns.is_empty() {
        return info.printer_columns.clone();
    }
    let age = col("Age", "date", ".metadata.creationTimestamp");
    match (info.group.as_str(), info.plural.as_str()) {
        ("apps", "deployments") => vec![
            col("Ready", "ready", ""),
            col("Up-to-date", "integer", ".status.updatedReplicas"),
            col("Available", "integer", ".status.availableReplicas"),
            age,
        ],
        ("apps", "statefulsets") => vec![col("Ready", "ready", ""), age],
        ("apps", "replicasets") => vec![
            col("Desired", "integer", ".spec.replicas"),
            col("Current", "integer", ".status.replicas"),
            col("Ready", "integer", ".status.readyReplicas"),
            age,
        ],
        ("", "namespaces") => vec![col("Status", "string", ".status.phase"), age],
        ("", "configmaps") => vec![col("Data", "count", ".data"), age],
        ("", "secrets") => vec![
            col("Type", "string", ".type"),
            col("Data", "count", ".data"),
            age,
        ],
        ("coordination.k8s.io", "leases") => {
            vec![col("Holder", "string", ".spec.holderIdentity"), age]
        }
        _ => vec![age],
    }
}

/// Evaluate a simple JSONPath: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`, optionally in `{...}`.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = vec![obj];
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            current = current.into_iter().filter_map(|v| v.get(name)).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let inner = &r[..end];
            rest = &r[end + 1..];
            if inner == "*" {
                current = current
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .collect();
            } else if let Ok(i) = inner.parse::<usize>() {
                current = current.into_iter().filter_map(|v| v.get(i)).collect();
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let Some((key, want)) = filter.split_once("==") else {
                    return Vec::new();
                };
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                let key = key.trim();
                current = current
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .filter(|item| {
                        json_path(item, &format!(".{key}"))
                            .first()
                            .is_some_and(|v| scalar_text(v) == want)
                    })
                    .collect();
            } else {
                return Vec::new();
            }
        } else {
            return Vec::new();
        }
    }
    current
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 3 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn cell(obj: &Value, c: &PrinterColumn) -> Value {
    if c.type_ == "ready" {
        let ready = obj["status"]["readyReplicas"].as_i64().unwrap_or(0);
        let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        return json!(format!("{ready}/{want}"));
    }
    let found = json_path(obj, &c.json_path);
    if c.type_ == "count" {
        return json!(
            found
                .first()
                .and_then(|v| v.as_object())
                .map_or(0, |m| m.len())
        );
    }
    let Some(first) = found.first() else {
        // Like the real server: no value, no cell content (kubectl shows `<none>`).
        return Value::Null;
    };
    match (c.type_.as_str(), first) {
        ("date", Value::String(s)) => json!(age(s)),
        (_, Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
            if found.len() > 1 {
                let parts: Vec<String> = found
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect();
                json!(parts.join(","))
            } else {
                (*first).clone()
            }
        }
        (_, other) => json!(other.to_string()),
    }
}

fn table(info: &ResourceInfo, items: &[Value], rv: &Value) -> Value {
    let cols = columns(info);
    let mut defs = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for c in &cols {
        let type_ = match c.type_.as_str() {
            "ready" | "date" => "string",
            "count" => "integer",
            t => t,
        };
        defs.push(json!({
            "name": c.name, "type": type_, "format": c.format,
            "description": c.description, "priority": c.priority,
        }));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut cells = vec![obj["metadata"]["name"].clone()];
            cells.extend(cols.iter().map(|c| cell(obj, c)));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

pub fn render_list(info: &ResourceInfo, list: &Value) -> Value {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    table(info, &items, &list["metadata"]["resourceVersion"])
}

pub fn render_one(info: &ResourceInfo, obj: &Value) -> Value {
    table(
        info,
        std::slice::from_ref(obj),
        &obj["metadata"]["resourceVersion"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_forms() {
        let obj = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]},
            "spec": {"replicas": 3}});
        assert_eq!(json_path(&obj, ".spec.replicas"), vec![&json!(3)]);
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![&json!("True")]
        );
        assert_eq!(
            json_path(&obj, "{.status.conditions[1].type}"),
            vec![&json!("Other")]
        );
    }
}
