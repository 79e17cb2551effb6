//! The resource types the server serves: built-ins and those registered by CRDs.

use serde_json::Value;

use crate::error::{ApiError, ApiResult, Cause};

/// Where a scale subresource reads and writes its numbers (JSON paths like `.spec.replicas`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleSpec {
    pub spec_replicas_path: String,
    pub status_replicas_path: String,
    /// For built-ins the selector is a `LabelSelector` object at `.spec.selector`;
    /// for CRDs it is a string at `labelSelectorPath`.
    pub label_selector_path: Option<String>,
    pub selector_is_object: bool,
}

impl ScaleSpec {
    fn builtin() -> Self {
        Self {
            spec_replicas_path: ".spec.replicas".into(),
            status_replicas_path: ".status.replicas".into(),
            label_selector_path: Some(".spec.selector".into()),
            selector_is_object: true,
        }
    }
}

/// A printer column from a CRD (`additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
    pub description: String,
    pub format: String,
}

/// One served resource in one group-version.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScaleSpec>,
    /// `openAPIV3Schema` for custom resources.
    pub schema: Option<Value>,
    pub printer_columns: Vec<PrinterColumn>,
    /// Name of the CRD that registered it, if any.
    pub crd: Option<String>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage key shared by all versions of one resource.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    pub fn verbs() -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// Whether writes to this kind should get Deployment-like status emulation.
    pub fn is_workload(&self) -> bool {
        self.group == "apps"
            && matches!(
                self.plural.as_str(),
                "deployments" | "statefulsets" | "replicasets"
            )
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    categories: &[&str],
    status: bool,
    scale: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        status,
        scale: scale.then(ScaleSpec::builtin),
        schema: None,
        printer_columns: Vec::new(),
        crd: None,
    }
}

/// The built-in resources the server serves.
pub fn builtins() -> Vec<ResourceInfo> {
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            &[],
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "secrets",
            "secret",
            "Secret",
            true,
            &[],
            &[],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            &[],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            &[],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "pods",
            "pod",
            "Pod",
            true,
            &["po"],
            &["all"],
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "services",
            "service",
            "Service",
            true,
            &["svc"],
            &["all"],
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            &["sa"],
            &[],
            false,
            false,
        ),
        builtin(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            true,
            &["deploy"],
            &["all"],
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "statefulsets",
            "statefulset",
            "StatefulSet",
            true,
            &["sts"],
            &["all"],
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            true,
            &["rs"],
            &["all"],
            true,
            true,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            &[],
            false,
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            &[],
            false,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            &["api-extensions"],
            true,
            false,
        ),
    ]
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn strings_at(v: &Value, path: &[&str]) -> Vec<String> {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return Vec::new(),
        }
    }
    cur.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn crd_invalid(name: &str, field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        name,
        vec![Cause {
            reason: "FieldValueRequired".into(),
            message: message.into(),
            field: field.into(),
        }],
    )
}

/// The resources (one per served version) a CRD object defines.
pub fn from_crd(crd: &Value) -> ApiResult<Vec<ResourceInfo>> {
    let name = str_at(crd, &["metadata", "name"]).unwrap_or_default();
    let spec = crd
        .get("spec")
        .ok_or_else(|| crd_invalid(name, "spec", "Required value"))?;
    let group = str_at(spec, &["group"])
        .filter(|g| !g.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.group", "Required value"))?;
    let plural = str_at(spec, &["names", "plural"])
        .filter(|p| !p.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.names.plural", "Required value"))?;
    let kind = str_at(spec, &["names", "kind"])
        .filter(|k| !k.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.names.kind", "Required value"))?;
    let expected = format!("{plural}.{group}");
    if name != expected {
        return Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                ),
                field: "metadata.name".into(),
            }],
        ));
    }
    let singular = str_at(spec, &["names", "singular"])
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = str_at(spec, &["names", "listKind"])
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let namespaced = str_at(spec, &["scope"]).unwrap_or("Namespaced") != "Cluster";
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.versions", "Required value"))?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let Some(version) = v.get("name").and_then(Value::as_str) else {
            return Err(crd_invalid(name, "spec.versions[].name", "Required value"));
        };
        let subresources = v.get("subresources");
        let status = subresources.and_then(|s| s.get("status")).is_some();
        let scale = subresources
            .and_then(|s| s.get("scale"))
            .map(|s| ScaleSpec {
                spec_replicas_path: str_at(s, &["specReplicasPath"])
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                status_replicas_path: str_at(s, &["statusReplicasPath"])
                    .unwrap_or(".status.replicas")
                    .to_string(),
                label_selector_path: str_at(s, &["labelSelectorPath"]).map(str::to_string),
                selector_is_object: false,
            });
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some(PrinterColumn {
                            name: c.get("name")?.as_str()?.to_string(),
                            type_: str_at(c, &["type"]).unwrap_or("string").to_string(),
                            json_path: c.get("jsonPath")?.as_str()?.to_string(),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            description: str_at(c, &["description"]).unwrap_or("").to_string(),
                            format: str_at(c, &["format"]).unwrap_or("").to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceInfo {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: singular.clone(),
            kind: kind.to_string(),
            list_kind: list_kind.clone(),
            namespaced,
            short_names: strings_at(spec, &["names", "shortNames"]),
            categories: strings_at(spec, &["names", "categories"]),
            status,
            scale,
            schema: v
                .get("schema")
                .and_then(|s| s.get("openAPIV3Schema"))
                .cloned(),
            printer_columns,
            crd: Some(name.to_string()),
        });
    }
    Ok(out)
}
