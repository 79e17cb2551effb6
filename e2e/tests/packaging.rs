//! Packaging: the Helm chart (linted and rendered by the real Helm SDK from PyPI
//! `helm-python-sdk`), the kustomize config (`kubectl kustomize`), the rendered manifests
//! validated offline (`kubernetes-validate`), the samples against the CRD schema
//! (`check-jsonschema`), least-privilege RBAC, and the CRD copies against `crds/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libtest_mimic::{Failed, Trial};
use serde_json::{Value, json};

use crate::support::Env;
use crate::support::cluster::repo_root;

const KUBE_VERSION: &str = "1.33.0";
const CRD_FILE: &str = "scaledconsumers.nerite.dev.yaml";

pub fn trials(_env: &Env) -> Vec<Trial> {
    vec![
        Trial::test("packaging::crd_copies_match_crds_dir", crd_copies_match),
        Trial::test("packaging::helm_lint_strict", helm_lint),
        Trial::test(
            "packaging::helm_render_is_valid_kubernetes",
            helm_render_valid,
        ),
        Trial::test(
            "packaging::rbac_grants_nothing_beyond_the_list",
            rbac_least_privilege,
        ),
        Trial::test(
            "packaging::samples_validate_against_the_crd_schema",
            samples_against_schema,
        ),
        Trial::test("packaging::kustomize_renders_offline", kustomize_renders),
        Trial::test("packaging::yaml_lints", yaml_lints),
        Trial::test(
            "packaging::dockerfile_matches_the_deployment",
            dockerfile_matches,
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Tools

/// The Python virtualenv with the test tools (`e2e/venv.sh` installs them once).
fn venv() -> Result<PathBuf, String> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/venv.sh"))
            .output()
            .map_err(|e| format!("e2e/venv.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "e2e/venv.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
}

/// Run a command; stdout on success, everything on failure.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn python(args: &[&str]) -> Result<String, String> {
    let venv = venv()?;
    run(Command::new(venv.join("bin/python"))
        .args(args)
        .current_dir(repo_root()))
}

fn tool(name: &str) -> Result<Command, String> {
    let mut c = Command::new(venv()?.join("bin").join(name));
    c.current_dir(repo_root());
    Ok(c)
}

fn chart_dir() -> String {
    repo_root().join("charts/nerite").display().to_string()
}

/// Render the chart with these values (release `nerite` in `nerite-system`), CRDs first.
fn render(values: &Value) -> Result<Vec<Value>, String> {
    let out = python(&[
        "e2e/chart.py",
        "render",
        &chart_dir(),
        &values.to_string(),
        "nerite",
        "nerite-system",
    ])?;
    parse_docs(&out)
}

fn parse_docs(yaml: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(yaml) {
        let v: Value =
            serde::Deserialize::deserialize(de).map_err(|e| format!("rendered YAML: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

/// Validate the built-in kinds with `kubernetes-validate --strict` (custom kinds such as
/// ServiceMonitor are left to the caller).
fn kubernetes_validate(docs: &[&Value], what: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let f = dir.path().join(format!("{i:02}-{}.json", kind(d)));
        std::fs::write(&f, d.to_string()).map_err(|e| e.to_string())?;
        files.push(f);
    }
    run(tool("kubernetes-validate")?
        .args(["-k", KUBE_VERSION, "--strict", "--quiet"])
        .args(&files))
    .map(|_| ())
    .map_err(|e| format!("{what}: kubernetes-validate: {e}"))
}

fn builtin(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| {
            !d["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .starts_with("monitoring.coreos.com/")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Trials

fn crd_copies_match() -> Result<(), Failed> {
    let root = repo_root();
    let source = std::fs::read_to_string(root.join("crds").join(CRD_FILE))
        .map_err(|e| format!("crds/{CRD_FILE}: {e}"))?;
    for copy in ["charts/nerite/crds", "config/crd"] {
        let path = root.join(copy).join(CRD_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if text != source {
            return Err(
                format!("{copy}/{CRD_FILE} differs from crds/{CRD_FILE}: run `make crds`").into(),
            );
        }
    }
    // And the chart ships exactly that one CRD.
    let docs = render(&json!({}))?;
    let crds = of_kind(&docs, "CustomResourceDefinition");
    let want: Value = serde_yaml::from_str(&source).map_err(|e| e.to_string())?;
    if crds.len() != 1 || *crds[0] != want {
        return Err(format!(
            "the chart's CRDs are not crds/{CRD_FILE} ({} found)",
            crds.len()
        )
        .into());
    }
    Ok(())
}

fn value_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "namespaced",
            json!({"watchNamespaces": ["shop", "billing"]}),
        ),
        (
            "monitoring and prefetch",
            json!({"metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prom"}}},
                   "rbac": {"prefetchApply": true}}),
        ),
        (
            "single replica without leader election",
            json!({"replicaCount": 1, "leaderElection": {"enabled": false},
                   "podDisruptionBudget": {"enabled": false}}),
        ),
    ]
}

fn helm_lint() -> Result<(), Failed> {
    for (name, values) in value_sets() {
        python(&["e2e/chart.py", "lint", &chart_dir(), &values.to_string()])
            .map_err(|e| format!("helm lint --strict ({name}): {e}"))?;
    }
    Ok(())
}

/// The operator Deployment: hardened pod, probes, leader election when replicated.
fn check_deployment(d: &Value, what: &str, replicas: i64, leader: bool) -> Result<(), String> {
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let psc = &pod["securityContext"];
    let checks = [
        (
            "runAsNonRoot",
            sc["runAsNonRoot"] == json!(true) && psc["runAsNonRoot"] == json!(true),
        ),
        (
            "readOnlyRootFilesystem",
            sc["readOnlyRootFilesystem"] == json!(true),
        ),
        (
            "allowPrivilegeEscalation false",
            sc["allowPrivilegeEscalation"] == json!(false),
        ),
        (
            "capabilities drop ALL",
            sc["capabilities"]["drop"] == json!(["ALL"]),
        ),
        (
            "seccomp RuntimeDefault",
            psc["seccompProfile"]["type"] == json!("RuntimeDefault"),
        ),
        (
            "liveness /healthz",
            c["livenessProbe"]["httpGet"]["path"] == json!("/healthz"),
        ),
        (
            "readiness /readyz",
            c["readinessProbe"]["httpGet"]["path"] == json!("/readyz"),
        ),
        ("resources", c["resources"]["requests"].is_object()),
        ("replicas", d["spec"]["replicas"] == json!(replicas)),
    ];
    for (rule, ok) in checks {
        if !ok {
            return Err(format!("{what}: Deployment breaks {rule}: {d}"));
        }
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if args.first() != Some(&"run") || !args.iter().any(|a| a.starts_with("--metrics-addr=")) {
        return Err(format!("{what}: unexpected args {args:?}"));
    }
    if args.contains(&"--leader-elect") != leader {
        return Err(format!(
            "{what}: --leader-elect should be {leader}: {args:?}"
        ));
    }
    let env: Vec<&str> = c["env"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default();
    if !env.contains(&"POD_NAME") || !env.contains(&"POD_NAMESPACE") {
        return Err(format!(
            "{what}: POD_NAME / POD_NAMESPACE not passed: {env:?}"
        ));
    }
    Ok(())
}

fn helm_render_valid() -> Result<(), Failed> {
    // The validator must be able to fail: a Deployment with a misspelled field.
    let broken = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x"}, "spec": {"replicas": 1, "selectr": {}}});
    if kubernetes_validate(&[&broken], "negative control").is_ok() {
        return Err("kubernetes-validate accepted a broken Deployment".into());
    }
    for (name, values) in value_sets() {
        let docs = render(&values)?;
        kubernetes_validate(&builtin(&docs), name)?;
        let deployments = of_kind(&docs, "Deployment");
        let [d] = deployments.as_slice() else {
            return Err(format!("{name}: expected one Deployment").into());
        };
        let replicas = values["replicaCount"].as_i64().unwrap_or(2);
        let leader = values["leaderElection"]["enabled"]
            .as_bool()
            .unwrap_or(true);
        check_deployment(d, name, replicas, leader)?;
        let services = of_kind(&docs, "Service");
        let [svc] = services.as_slice() else {
            return Err(format!("{name}: expected one metrics Service").into());
        };
        if svc["spec"]["ports"][0]["name"] != json!("metrics") {
            return Err(format!("{name}: the Service does not expose the metrics port").into());
        }
        let monitors = of_kind(&docs, "ServiceMonitor");
        let want_monitor = values["metrics"]["serviceMonitor"]["enabled"] == json!(true);
        match (monitors.as_slice(), want_monitor) {
            ([], false) => {}
            ([m], true) => {
                let ep = &m["spec"]["endpoints"][0];
                if ep["port"] != json!("metrics")
                    || ep["path"] != json!("/metrics")
                    || m["spec"]["selector"]["matchLabels"] != svc["spec"]["selector"]
                    || m["metadata"]["labels"]["release"] != json!("prom")
                {
                    return Err(format!(
                        "{name}: ServiceMonitor does not select the metrics Service: {m}"
                    )
                    .into());
                }
            }
            (found, _) => {
                return Err(format!(
                    "{name}: {} ServiceMonitors, wanted {want_monitor}",
                    found.len()
                )
                .into());
            }
        }
        if let Some(ns) = values["watchNamespaces"].as_array() {
            let arg = format!(
                "--namespace={}",
                ns.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            if !d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(arg)))
            {
                return Err(format!("{name}: the operator is not told {arg}").into());
            }
        }
    }
    // Two replicas without leader election would both scale: the chart refuses.
    match render(&json!({"leaderElection": {"enabled": false}})) {
        Err(e) if e.contains("needs leaderElection.enabled") => Ok(()),
        other => Err(format!("replicated without leader election should fail: {other:?}").into()),
    }
}

/// (apiGroup, resource, verb) triples a set of RBAC rules grants; `resourceNames` noted.
fn grants(rules: &Value) -> Result<BTreeSet<(String, String, String)>, String> {
    let mut out = BTreeSet::new();
    for r in rules.as_array().ok_or("rules is not a list")? {
        let list = |k: &str| -> Vec<String> {
            r[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        if r.get("nonResourceURLs").is_some() {
            return Err(format!("rule grants non-resource URLs: {r}"));
        }
        let names = list("resourceNames");
        for g in list("apiGroups") {
            for res in list("resources") {
                for v in list("verbs") {
                    let res = if names.is_empty() {
                        res.clone()
                    } else {
                        format!("{res}[{}]", names.join(","))
                    };
                    out.insert((g.clone(), res, v));
                }
            }
        }
    }
    Ok(out)
}

fn triples(list: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

/// Exactly what nerite may do where it manages ScaledConsumers (default values).
fn allowed_rules(prefetch_apply: bool) -> BTreeSet<(String, String, String)> {
    allowed_rules_with(prefetch_apply, false)
}

/// The same, with the ConfigMap grant for prefetch delivered to a ConfigMap key.
fn allowed_rules_with(
    prefetch_apply: bool,
    config_map: bool,
) -> BTreeSet<(String, String, String)> {
    let mut t = triples(&[
        ("nerite.dev", "scaledconsumers", &["get", "list", "watch"]),
        ("nerite.dev", "scaledconsumers/status", &["patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "secrets", &["get"]),
        ("apps", "deployments/scale", &["get", "update", "patch"]),
        ("apps", "statefulsets/scale", &["get", "update", "patch"]),
    ]);
    if prefetch_apply {
        t.extend(triples(&[
            ("apps", "deployments", &["get", "patch"]),
            ("apps", "statefulsets", &["get", "patch"]),
        ]));
    }
    if config_map {
        t.extend(triples(&[("", "configmaps", &["get", "create", "patch"])]));
    }
    t
}

fn leader_rules() -> BTreeSet<(String, String, String)> {
    triples(&[
        (
            "coordination.k8s.io",
            "leases[nerite-leader]",
            &["get", "update"],
        ),
        ("coordination.k8s.io", "leases", &["create"]),
    ])
}

fn diff(
    what: &str,
    got: &BTreeSet<(String, String, String)>,
    want: &BTreeSet<(String, String, String)>,
) -> Result<(), String> {
    let extra: Vec<_> = got.difference(want).collect();
    let missing: Vec<_> = want.difference(got).collect();
    if extra.is_empty() && missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: grants beyond the list {extra:?}; missing {missing:?}"
        ))
    }
}

/// Check the RBAC objects of one rendering: the ClusterRole (or the Roles of the watched
/// namespaces) and the leader-election Role in the operator's namespace.
fn check_rbac(
    docs: &[Value],
    what: &str,
    watched: &[&str],
    prefetch_apply: bool,
    leader_ns: &str,
) -> Result<(), String> {
    let want = allowed_rules(prefetch_apply);
    let cluster_roles = of_kind(docs, "ClusterRole");
    let roles = of_kind(docs, "Role");
    let (leader, namespaced): (Vec<&Value>, Vec<&Value>) = roles.into_iter().partition(|r| {
        r["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("leader-election"))
    });
    if watched.is_empty() {
        let [cr] = cluster_roles.as_slice() else {
            return Err(format!(
                "{what}: expected one ClusterRole, found {}",
                cluster_roles.len()
            ));
        };
        diff(
            &format!("{what} ClusterRole"),
            &grants(&cr["rules"])?,
            &want,
        )?;
        if !namespaced.is_empty() {
            return Err(format!("{what}: unexpected Roles"));
        }
        if of_kind(docs, "ClusterRoleBinding").len() != 1 {
            return Err(format!("{what}: expected one ClusterRoleBinding"));
        }
    } else {
        if !cluster_roles.is_empty() || !of_kind(docs, "ClusterRoleBinding").is_empty() {
            return Err(format!(
                "{what}: the namespaced variant must grant nothing cluster-wide"
            ));
        }
        let got_ns: BTreeSet<&str> = namespaced
            .iter()
            .filter_map(|r| r["metadata"]["namespace"].as_str())
            .collect();
        if got_ns != watched.iter().copied().collect() {
            return Err(format!("{what}: Roles in {got_ns:?}, watched {watched:?}"));
        }
        for r in &namespaced {
            diff(&format!("{what} Role"), &grants(&r["rules"])?, &want)?;
        }
    }
    let [l] = leader.as_slice() else {
        return Err(format!("{what}: expected one leader-election Role"));
    };
    if l["metadata"]["namespace"] != json!(leader_ns) {
        return Err(format!("{what}: the Lease Role is not in {leader_ns}"));
    }
    diff(
        &format!("{what} leader-election Role"),
        &grants(&l["rules"])?,
        &leader_rules(),
    )
}

fn rbac_least_privilege() -> Result<(), Failed> {
    let docs = render(&json!({}))?;
    check_rbac(&docs, "defaults", &[], false, "nerite-system")?;
    let docs = render(&json!({"watchNamespaces": ["shop", "billing"]}))?;
    check_rbac(
        &docs,
        "namespaced",
        &["shop", "billing"],
        false,
        "nerite-system",
    )?;
    let docs = render(&json!({"rbac": {"prefetchApply": true}}))?;
    check_rbac(&docs, "prefetch Apply", &[], true, "nerite-system")?;
    // Prefetch delivered to a ConfigMap key: ConfigMaps, and nothing else beyond the defaults.
    let docs = render(&json!({"rbac": {"prefetchConfigMap": true}}))?;
    let cr = of_kind(&docs, "ClusterRole");
    let got = grants(&cr.first().ok_or("no ClusterRole")?["rules"])?;
    diff("prefetch ConfigMap", &got, &allowed_rules_with(false, true))?;
    // Scale targets the user lists: /scale on exactly those.
    let docs = render(&json!({"rbac": {"scaleTargets": [
        {"apiGroup": "apps", "resources": ["deployments"]},
        {"apiGroup": "argoproj.io", "resources": ["rollouts"]}
    ]}}))?;
    let cr = of_kind(&docs, "ClusterRole");
    let got = grants(&cr.first().ok_or("no ClusterRole")?["rules"])?;
    let mut want = allowed_rules(false);
    want.retain(|(_, r, _)| r != "statefulsets/scale");
    want.extend(triples(&[(
        "argoproj.io",
        "rollouts/scale",
        &["get", "update", "patch"],
    )]));
    diff("custom scale targets", &got, &want)?;
    // Nothing when RBAC is managed elsewhere.
    let docs = render(&json!({"rbac": {"create": false}}))?;
    if docs.iter().any(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("rbac.authorization.k8s.io/"))
    }) {
        return Err("rbac.create=false still renders RBAC objects".into());
    }
    Ok(())
}

fn samples_against_schema() -> Result<(), Failed> {
    let root = repo_root();
    let crd: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("crds").join(CRD_FILE)).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    if !schema.is_object() {
        return Err("the CRD has no openAPIV3Schema".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let schema_file = dir.path().join("scaledconsumer.schema.json");
    std::fs::write(&schema_file, schema.to_string()).map_err(|e| e.to_string())?;

    let mut custom = Vec::new();
    let mut others = Vec::new();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(root.join("config/samples"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    samples.sort();
    for path in &samples {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        for (i, doc) in parse_docs(&text)?.into_iter().enumerate() {
            let name = format!(
                "{}-{i}.json",
                path.file_stem().unwrap_or_default().to_string_lossy()
            );
            if kind(&doc) == "ScaledConsumer" {
                let f = dir.path().join(name);
                std::fs::write(&f, doc.to_string()).map_err(|e| e.to_string())?;
                custom.push(f);
            } else {
                others.push(doc);
            }
        }
    }
    if custom.is_empty() {
        return Err("no ScaledConsumer samples in config/samples".into());
    }
    let check = |files: &[PathBuf]| {
        run(tool("check-jsonschema")?
            .arg("--schemafile")
            .arg(&schema_file)
            .args(files))
    };
    check(&custom).map_err(|e| format!("samples against the CRD schema: {e}"))?;
    // The check can fail: a sample with a string where the schema wants an integer.
    let bad = dir.path().join("bad.json");
    let mut broken: Value =
        serde_json::from_str(&std::fs::read_to_string(&custom[0]).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    broken["spec"]["maxReplicas"] = json!("ten");
    std::fs::write(&bad, broken.to_string()).map_err(|e| e.to_string())?;
    if check(std::slice::from_ref(&bad)).is_ok() {
        return Err("check-jsonschema accepted maxReplicas: \"ten\"".into());
    }
    println!(
        "  {} ScaledConsumer sample(s) match the CRD schema; {} other object(s) checked by kubernetes-validate",
        custom.len(),
        others.len()
    );
    let refs: Vec<&Value> = others.iter().collect();
    if !refs.is_empty() {
        kubernetes_validate(&refs, "samples")?;
    }
    Ok(())
}

fn kustomize_renders() -> Result<(), Failed> {
    let root = repo_root();
    let kubectl = run(Command::new("bash").arg(root.join("e2e/kubectl.sh")))
        .map(|path| PathBuf::from(path.trim()))
        .map_err(|e| {
            Failed::from(format!(
                "no kubectl on PATH and Debian's kubernetes-client could not be unpacked: {e}"
            ))
        })?;
    let render = |overlay: &str| -> Result<Vec<Value>, String> {
        let out = run(Command::new(&kubectl)
            .arg("kustomize")
            .arg(root.join("config").join(overlay)))?;
        parse_docs(&out)
    };
    let chart = self::render(&json!({}))?;

    let docs = render("default")?;
    kubernetes_validate(&builtin(&docs), "config/default")?;
    check_rbac(&docs, "config/default", &[], false, "nerite-system")?;
    let deployments = of_kind(&docs, "Deployment");
    let [d] = deployments.as_slice() else {
        return Err("config/default: expected one Deployment".into());
    };
    check_deployment(d, "config/default", 2, true)?;
    // Same rights and the same CRD as the chart's defaults.
    let rules = |docs: &[Value]| -> Result<_, String> {
        grants(
            &of_kind(docs, "ClusterRole")
                .first()
                .ok_or("no ClusterRole")?["rules"],
        )
    };
    diff("config/default vs chart", &rules(&docs)?, &rules(&chart)?)?;
    let crds = |docs: &[Value]| -> Vec<Value> {
        of_kind(docs, "CustomResourceDefinition")
            .into_iter()
            .map(|d| numbers_as_written(d.clone()))
            .collect()
    };
    if crds(&docs) != crds(&chart) {
        return Err("config/default and the chart ship different CRDs".into());
    }
    if of_kind(&docs, "Namespace").len() != 1 {
        return Err("config/default: expected the nerite-system Namespace".into());
    }

    let docs = render("namespaced")?;
    kubernetes_validate(&builtin(&docs), "config/namespaced")?;
    check_rbac(
        &docs,
        "config/namespaced",
        &["shop"],
        false,
        "nerite-system",
    )?;
    let deployments = of_kind(&docs, "Deployment");
    let [d] = deployments.as_slice() else {
        return Err("config/namespaced: expected one Deployment".into());
    };
    check_deployment(d, "config/namespaced", 2, true)?;
    if !d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .is_some_and(|a| a.contains(&json!("--namespace=shop")))
    {
        return Err("config/namespaced: the operator does not watch only shop".into());
    }

    let docs = render("prometheus")?;
    if of_kind(&docs, "ServiceMonitor").len() != 1 {
        return Err("config/prometheus: expected one ServiceMonitor".into());
    }
    let version = run(Command::new(&kubectl).args(["version", "--client"]))
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    println!("  rendered config/default, config/namespaced, config/prometheus with {version}");
    Ok(())
}

/// kustomize writes `minimum: 1.0` as `1`: compare whole-number floats as integers.
fn numbers_as_written(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_written).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, numbers_as_written(v)))
                .collect(),
        ),
        other => other,
    }
}

fn yaml_lints() -> Result<(), Failed> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = vec![
        root.join("charts/nerite/Chart.yaml"),
        root.join("charts/nerite/values.yaml"),
    ];
    collect_yaml(&root.join("config"), &mut files)?;
    // Generated CRD copies are checked against crds/ instead.
    files.retain(|f| !f.ends_with(CRD_FILE));
    run(tool("yamllint")?
        .arg("--strict")
        .arg("-c")
        .arg(root.join("e2e/yamllint.yaml"))
        .args(&files))?;
    Ok(())
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e.map_err(|e| e.to_string())?.path();
        if p.is_dir() {
            collect_yaml(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// The image runs as the user the manifests expect, and its entrypoint takes `run`.
fn dockerfile_matches() -> Result<(), Failed> {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("config/docker/Dockerfile"))
        .map_err(|e| format!("config/docker/Dockerfile: {e}"))?;
    let last_stage = text
        .rsplit_once("\nFROM ")
        .map(|(_, s)| s)
        .ok_or("the Dockerfile is not multi-stage")?;
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("charts/nerite/values.yaml"))
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let uid = values["podSecurityContext"]["runAsUser"]
        .as_i64()
        .ok_or("values.yaml: no podSecurityContext.runAsUser")?;
    if !last_stage.contains(&format!("\nUSER {uid}:{uid}")) {
        return Err(format!("the final image stage must run as USER {uid}:{uid}").into());
    }
    if !last_stage.contains("ENTRYPOINT [\"/usr/local/bin/nerite\"]") {
        return Err(
            "the final image stage must have ENTRYPOINT [\"/usr/local/bin/nerite\"]".into(),
        );
    }
    if last_stage.contains("cargo") || last_stage.contains("rust:") {
        return Err("the final image stage must not carry the Rust toolchain".into());
    }
    Ok(())
}
