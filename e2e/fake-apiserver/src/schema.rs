//! Custom resource schemas: pruning, defaulting, structural validation and CEL rules
//! (`x-kubernetes-validations`, evaluated with kube-cel).

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::resources::ResourceInfo;

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn is_embedded(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Drop fields the schema does not know and fill in `default`s, like the real server.
pub fn prune_and_default(schema: &Value, v: &mut Value, root: bool) {
    match v {
        Value::Object(m) => {
            let keep_meta = root || is_embedded(schema);
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let preserve = preserves_unknown(schema);
                m.retain(|k, _| {
                    props.contains_key(k)
                        || preserve
                        || (keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                });
                for (k, sub) in props {
                    if root && k == "metadata" {
                        continue;
                    }
                    if !m.contains_key(k)
                        && let Some(d) = sub.get("default")
                    {
                        m.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = m.get_mut(k) {
                        prune_and_default(sub, child, false);
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for child in m.values_mut() {
                    prune_and_default(additional, child, false);
                }
            } else if !preserves_unknown(schema)
                && schema.get("type").and_then(Value::as_str) == Some("object")
            {
                m.retain(|k, _| {
                    keep_meta && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                });
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune_and_default(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn invalid(field: &str, reason: &str, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        message,
        field: field.into(),
    }
}

/// Structural checks: types, required, enum, bounds, lengths, pattern, item counts.
fn check(schema: &Value, v: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    if v.is_null() && schema.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !matches!(type_name(v), "integer" | "string") {
            out.push(invalid(
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer-or-string",
                    type_name(v)
                ),
            ));
        }
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(v);
        let ok = got == want || (want == "number" && got == "integer");
        if !ok {
            out.push(invalid(
                path,
                "FieldValueTypeInvalid",
                format!(
                    "Invalid value: \"{got}\": {path} in body must be of type {want}: \"{got}\""
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        out.push(invalid(
            path,
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    match v {
        Value::Object(m) => check_object(schema, m, path, root, out),
        Value::Array(items) => {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                out.push(invalid(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                out.push(invalid(
                    path,
                    "FieldValueTooMany",
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                out.push(invalid(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {v}: {path} in body should be at least {min} chars long"
                    ),
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                out.push(invalid(
                    path,
                    "FieldValueTooLong",
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if re.is_match(s) => {}
                    _ => out.push(invalid(
                        path,
                        "FieldValueInvalid",
                        format!("Invalid value: {v}: {path} in body should match '{pattern}'"),
                    )),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let excl_min = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
            let excl_max = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && (x < min || (excl_min && x == min))
            {
                let rel = if excl_min {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                out.push(invalid(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {n}: {path} in body should be {rel} {}",
                        schema["minimum"]
                    ),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && (x > max || (excl_max && x == max))
            {
                let rel = if excl_max {
                    "less than"
                } else {
                    "less than or equal to"
                };
                out.push(invalid(
                    path,
                    "FieldValueInvalid",
                    format!(
                        "Invalid value: {n}: {path} in body should be {rel} {}",
                        schema["maximum"]
                    ),
                ));
            }
        }
        _ => {}
    }
}

fn check_object(
    schema: &Value,
    m: &Map<String, Value>,
    path: &str,
    root: bool,
    out: &mut Vec<Cause>,
) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for r in required.iter().filter_map(Value::as_str) {
            if !m.contains_key(r) {
                out.push(invalid(
                    &join(path, r),
                    "FieldValueRequired",
                    "Required value".into(),
                ));
            }
        }
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && (m.len() as u64) < min
    {
        out.push(invalid(
            path,
            "FieldValueInvalid",
            format!(
                "Invalid value: {}: {path} in body should have at least {min} properties",
                m.len()
            ),
        ));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && (m.len() as u64) > max
    {
        out.push(invalid(
            path,
            "FieldValueTooMany",
            format!("Too many: {}: must have at most {max} items", m.len()),
        ));
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, child) in m {
        if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let sub = props.and_then(|p| p.get(k)).or(additional);
        if let Some(sub) = sub {
            check(sub, child, &join(path, k), false, out);
        }
    }
}

/// Resolve a kube-cel field path like `spec.items[1].name` to its value.
fn value_at<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for idx in indexes.split('[').filter(|s| !s.is_empty()) {
            let i: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// Prune and default `obj` by the resource's schema, then (when `validate`) check it
/// structurally and with its CEL rules. Errors are 422 `Invalid`.
pub fn process(
    info: &ResourceInfo,
    obj: &mut Value,
    old: Option<&Value>,
    validate: bool,
) -> ApiResult<()> {
    let Some(schema) = &info.schema else {
        return Ok(());
    };
    prune_and_default(schema, obj, true);
    if !validate {
        return Ok(());
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut causes = Vec::new();
    check(schema, obj, "", true, &mut causes);
    if causes.is_empty() {
        let ctx = kube_cel::RootContext {
            api_version: info.api_version(),
            api_group: info.group.clone(),
            kind: info.kind.clone(),
        };
        let validator = kube_cel::Validator::new();
        for e in validator.validate_with_context(schema, obj, old, Some(&ctx)) {
            let field = e.field_path.trim_start_matches('.').to_string();
            let shown = value_at(obj, &field)
                .map(short)
                .unwrap_or_else(|| "\"object\"".into());
            causes.push(Cause {
                reason: e
                    .reason
                    .clone()
                    .unwrap_or_else(|| "FieldValueInvalid".into()),
                message: format!("Invalid value: {shown}: {}", e.message),
                field,
            });
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&info.kind, &info.group, &name, causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(schema: Value) -> ResourceInfo {
        let mut all = crate::resources::builtins();
        let mut i = all.remove(0);
        i.kind = "Thing".into();
        i.group = "nerite.dev".into();
        i.schema = Some(schema);
        i
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["queue"],
                    "x-kubernetes-validations": [
                        {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
                        {"rule": "!has(self.poll) || duration(self.poll) >= duration('1s')", "message": "poll too short"},
                        {"rule": "[has(self.queue)].filter(x, x).size() == 1", "message": "one source"},
                        {"rule": "!has(self.url) || self.url.startsWith('http://')", "message": "url scheme"}
                    ],
                    "properties": {
                        "queue": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
                        "minReplicas": {"type": "integer", "minimum": 0, "default": 1},
                        "maxReplicas": {"type": "integer", "maximum": 100, "default": 10},
                        "mode": {"type": "string", "enum": ["A", "B"]},
                        "poll": {"type": "string"},
                        "url": {"type": "string"}
                    }
                }
            }
        });
        let i = info(schema);
        let mut ok = json!({"apiVersion": "nerite.dev/v1", "kind": "Thing", "metadata": {"name": "x"},
            "spec": {"queue": "jobs", "junk": true, "poll": "5s", "url": "http://x"}});
        assert!(process(&i, &mut ok, None, true).is_ok());
        assert_eq!(ok["spec"]["minReplicas"], 1);
        assert!(ok["spec"].get("junk").is_none());

        let mut bad = json!({"metadata": {"name": "x"}, "spec": {"queue": "jobs", "minReplicas": 5, "maxReplicas": 2}});
        let err = process(&i, &mut bad, None, true).err().map(|e| e.message);
        assert_eq!(
            err.as_deref(),
            Some(
                "Thing.nerite.dev \"x\" is invalid: spec: Invalid value: \"object\": minReplicas must not exceed maxReplicas"
            )
        );
        let mut bad = json!({"metadata": {"name": "x"}, "spec": {"queue": "jobs", "poll": "10ms", "url": "ftp://x"}});
        let err = process(&i, &mut bad, None, true)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(
            err.contains("poll too short") && err.contains("url scheme"),
            "{err}"
        );
        let mut bad = json!({"metadata": {"name": "x"}, "spec": {"minReplicas": "a", "mode": "C"}});
        let err = process(&i, &mut bad, None, true)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(err.contains("spec.queue: Required value"), "{err}");
        assert!(
            err.contains("spec.minReplicas in body must be of type integer"),
            "{err}"
        );
        assert!(err.contains("Unsupported value: \"C\""), "{err}");
        assert!(process(&i, &mut bad, None, false).is_ok());
    }
}
