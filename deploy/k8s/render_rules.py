"""Writes prod/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

The alert rules have one source, deploy/prometheus/alerts.yaml; the
PrometheusRule the prod overlay applies is generated from it (`make k8s-rules`)
and a test fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "prometheus" / "alerts.yaml"
TARGET = HERE / "prod" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yaml by `make k8s-rules`: edit that\n"
    "# file and regenerate; tests/deploy fails when this one is out of date.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as literal blocks, as in the source."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render(source: Path = SOURCE) -> str:
    rules = yaml.safe_load(source.read_text())
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "blackboard",
            "labels": {
                "app.kubernetes.io/name": "blackboard",
                "app.kubernetes.io/component": "server",
            },
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.dump(resource, Dumper=_Dumper, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render())
    sys.stdout.write(f"wrote {TARGET}\n")
