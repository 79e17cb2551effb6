//! kubectl against the fake API server. The kubectl is the one `e2e/kubectl.sh` finds
//! (on PATH, or Debian's kubernetes-client unpacked into the cache); the test fails when
//! there is none.

use std::path::{Path, PathBuf};
use std::process::Command;

use nerite_fake_apiserver::FakeApiServer;

/// The kubectl `e2e/kubectl.sh` provides.
fn kubectl() -> Result<PathBuf, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kubectl.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "no kubectl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

const MANIFESTS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.test.nerite.dev
spec:
  group: test.nerite.dev
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - {rule: "self.size <= 10", message: "size must be at most 10"}
            properties:
              size: {type: integer}
"#;

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: main, image: busybox}]}
---
apiVersion: test.nerite.dev/v1
kind: Gadget
metadata: {name: g1}
spec: {size: 4}
"#;

struct Kubectl<'a> {
    bin: &'a Path,
    kubeconfig: &'a Path,
    /// Before 1.27 kubectl validates objects against `/openapi/v2`, which the fake API
    /// server does not serve (Debian's kubernetes-client is 1.20): create and apply then
    /// skip the client-side check (the server still validates).
    old: bool,
}

/// The client's minor version, from `kubectl version --client -o json`.
fn client_minor(bin: &Path) -> Option<u32> {
    let out = Command::new(bin)
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["clientVersion"]["minor"]
        .as_str()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let skip_validation = self.old && matches!(args.first(), Some(&"create") | Some(&"apply"));
        let out = Command::new(self.bin)
            .arg("--kubeconfig")
            .arg(self.kubeconfig)
            .args(args)
            .args(skip_validation.then_some("--validate=false"))
            .env(
                "HOME",
                self.kubeconfig.parent().unwrap_or(Path::new("/tmp")),
            )
            .output();
        match out {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{out}");
        out
    }
}

#[test]
fn kubectl_get_apply_scale_delete() -> Result<(), Box<dyn std::error::Error>> {
    let kubectl = kubectl()?;
    // A synchronous caller: the server runs on its own thread and runtime.
    let server = FakeApiServer::builder().start_blocking()?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig_yaml())?;
    let crd = dir.path().join("crd.yaml");
    std::fs::write(&crd, MANIFESTS)?;
    let workloads = dir.path().join("workloads.yaml");
    std::fs::write(&workloads, WORKLOADS)?;
    let minor = client_minor(&kubectl).ok_or("cannot read kubectl's version")?;
    let k = Kubectl {
        bin: &kubectl,
        kubeconfig: &kubeconfig,
        old: minor < 27,
    };
    let crd = crd.to_string_lossy();
    let workloads = workloads.to_string_lossy();

    // kubectl 1.2x prints "Server Version: v1.33.0"; 1.20 prints a version.Info struct.
    assert!(k.ok(&["version"]).contains("v1.33.0"));
    k.ok(&["create", "-f", &crd]);
    let out = k.ok(&["apply", "--server-side", "-f", &workloads]);
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );

    let out = k.ok(&["get", "deploy,gadgets", "-A"]);
    assert!(
        out.contains("deployment.apps/web") && out.contains("2/2"),
        "{out}"
    );
    assert!(
        out.contains("gadget.test.nerite.dev/g1") && out.contains("SIZE"),
        "{out}"
    );

    let out = k.ok(&["scale", "deploy/web", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    let out = k.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(out.trim(), "3");

    // Re-applying replicas: 2 now conflicts with the scale, like a cluster.
    let (ok, out) = k.run(&["apply", "--server-side", "-f", &workloads]);
    assert!(
        !ok && out.contains("conflict with \"kubectl\" with subresource \"scale\""),
        "{out}"
    );
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &workloads,
    ]);

    let out = k.ok(&["get", "gd", "g1", "-o", "yaml"]);
    assert!(
        out.contains("size: 4") && out.contains("kind: Gadget"),
        "{out}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: test.nerite.dev/v1\nkind: Gadget\nmetadata: {name: big}\nspec: {size: 11}\n",
    )?;
    let (ok, out) = k.run(&["create", "-f", &bad.to_string_lossy()]);
    assert!(!ok && out.contains("size must be at most 10"), "{out}");

    let out = k.ok(&["delete", "-f", &workloads]);
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    let out = k.ok(&["get", "deploy", "-A"]);
    assert!(out.contains("No resources found"), "{out}");
    drop(server);
    Ok(())
}
