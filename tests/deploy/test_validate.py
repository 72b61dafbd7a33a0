"""Every overlay renders with `kubectl kustomize` and validates offline, strictly,
against Kubernetes 1.37 (kubernetes-validate) and the prometheus-operator schemas."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import RENDERS
from tests.deploy.manifests import (
    CRD_SCHEMAS,
    K8S,
    Doc,
    crd_errors,
    is_crd,
    load_all,
    one,
    validate_builtin,
)


def write(docs: list[Doc], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.mark.parametrize("name", RENDERS)
def test_rendered_overlay_is_valid_kubernetes(
    rendered: dict[str, str], name: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(rendered[name])
    result = validate_builtin(path)
    assert result.returncode == 0, result.stdout + result.stderr
    # The only kinds it could not check are the ones checked below.
    unchecked = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    crds = [d for d in load_all(rendered[name]) if is_crd(d)]
    assert len(unchecked) == len(crds), unchecked
    for doc in crds:
        assert crd_errors(doc) == [], doc["kind"]
    if name == "prod":
        assert {(d["apiVersion"], d["kind"]) for d in crds} == set(CRD_SCHEMAS)


def test_the_report_reader_pod_is_valid(tmp_path: Path) -> None:
    result = validate_builtin(K8S / "loadtest" / "reader.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def typo(doc: Doc, path: tuple[str | int, ...], wrong: str) -> Doc:
    """A copy of doc with the field at path renamed to `wrong`."""
    bad = copy.deepcopy(doc)
    parent = bad
    for step in path[:-1]:
        parent = parent[step]
    parent[wrong] = parent.pop(path[-1])  # type: ignore[arg-type]
    return bad


CONTAINER = ("spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    ("path", "wrong"),
    [
        (("spec", "strategy"), "stratgy"),
        ((*CONTAINER, "readinessProbe", "grpc", "port"), "prot"),
        ((*CONTAINER, "securityContext", "readOnlyRootFilesystem"), "readOnlyRootFileSystem"),
        (("spec", "template", "spec", "terminationGracePeriodSeconds"), "terminationGracePeriod"),
    ],
)
def test_a_misspelt_field_fails_validation(
    manifests: dict[str, list[Doc]], path: tuple[str | int, ...], wrong: str, tmp_path: Path
) -> None:
    docs = manifests["prod"]
    deployment = one(docs, "Deployment", "blackboard")
    good = write([deployment], tmp_path / "good.yaml")
    assert validate_builtin(good).returncode == 0
    bad = write([typo(deployment, path, wrong)], tmp_path / "bad.yaml")
    result = validate_builtin(bad)
    assert result.returncode != 0
    # It names the unknown field, or the required one the typo left missing.
    assert wrong in result.stdout or f"'{path[-1]}' is a required" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("kind", "path", "wrong"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "intervall"),
        ("ServiceMonitor", ("spec", "jobLabel"), "joblabel"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "annotations"), "anotations"),
    ],
)
def test_a_misspelt_field_in_a_prometheus_resource_fails(
    manifests: dict[str, list[Doc]], kind: str, path: tuple[str | int, ...], wrong: str
) -> None:
    doc = one(manifests["prod"], kind)
    assert crd_errors(doc) == []
    errors = crd_errors(typo(doc, path, wrong))
    assert errors and any(wrong in error for error in errors), errors
