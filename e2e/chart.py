#!/usr/bin/env python3
"""Helm chart checks through the Helm SDK (PyPI helm-python-sdk), offline.

  python chart.py lint CHART [VALUES_JSON]          -> lint report as JSON; exit 1 on any
                                                       warning or error (strict)
  python chart.py render CHART VALUES_JSON NAME NS  -> CRDs, then every rendered manifest,
                                                       as one YAML stream
"""
import json
import sys

import helm_python as helm

KUBE_VERSION = "v1.33.0"


def lint(chart, values):
    report = helm.lint(chart, values, strict=True, kube_version=KUBE_VERSION)
    print(json.dumps(report, indent=2))
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    return 1 if bad or report.get("errors") else 0


def render(chart_dir, values, name, namespace):
    chart = helm.Chart.load(chart_dir)
    chart.validate_schema(values)
    docs = []
    for crd in chart.crds:
        docs.append(crd["data"])
    manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        text = manifests[path].strip()
        if text:
            docs.append(f"# Source: {path}\n{text}")
    print("\n---\n".join(d.strip() for d in docs if d.strip()))
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "lint":
        values = json.loads(argv[2]) if len(argv) > 2 else None
        return lint(argv[1], values)
    if len(argv) == 5 and argv[0] == "render":
        return render(argv[1], json.loads(argv[2]), argv[3], argv[4])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
