#!/usr/bin/env python3
"""Render one Portcullis chart with the Helm library and print its objects as a JSON v1 List.

    python3 helm/render.py portcullis-agent --release edge --namespace portcullis-system \\
        [--values-file helm/ci/agent-nondefault.yaml] [--set-json '{"clusterName": "c1"}'] \\
        [--kinds ServiceAccount,ClusterRole,ClusterRoleBinding,Role,RoleBinding]

What it prints can be applied as it is (`| kubectl apply --server-side -f -`). The Kubernetes
integration tests (`integration/tests/kube_*.rs`) apply it to a real API server, so the
objects they test are exactly the chart's. Values given with `--set-json` are merged over the
values file; `--kinds` keeps only objects of those kinds. NOTES.txt is left out; hooks are
included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import helm_python as helm
    import yaml
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"render.py: {e}. Install the dependencies first:\n"
        "    python3 -m pip install helm-python-sdk kubernetes-validate"
    )

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check import HELM_DIR, deep_merge  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "chart", help="portcullis-agent, portcullis-control-plane, or a packaged chart's .tgz"
    )
    parser.add_argument("--release", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--values-file", type=Path)
    parser.add_argument("--set-json", default="{}", help="values as a JSON object")
    parser.add_argument("--kinds", default="", help="only these kinds (comma-separated)")
    args = parser.parse_args()

    # A chart of this directory by name, or a packaged chart (`NAME-VERSION.tgz`).
    chart_dir = HELM_DIR / args.chart
    if args.chart.endswith(".tgz") and Path(args.chart).is_file():
        chart_dir = Path(args.chart)
    elif not (chart_dir / "Chart.yaml").is_file():
        print(f"render.py: no chart {args.chart!r} in {HELM_DIR}", file=sys.stderr)
        return 2
    values = helm.values_from_yaml(args.values_file.read_text()) if args.values_file else {}
    values = deep_merge(values, json.loads(args.set_json))
    try:
        with helm.Chart.load(chart_dir) as chart:
            manifests = chart.render(
                values, name=args.release, namespace=args.namespace, is_install=True
            )
    except helm.HelmError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    objects = []
    for template, text in sorted(manifests.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    if args.kinds:
        kinds = set(args.kinds.split(","))
        objects = [o for o in objects if o.get("kind") in kinds]
    json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
