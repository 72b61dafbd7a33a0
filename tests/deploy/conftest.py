"""The overlays, rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import Doc, kustomize, load_all

OVERLAYS = ("dev", "prod")
# Everything rendered: the overlays, the load tests, the managed-backends example.
RENDERS = {
    "dev": "dev",
    "prod": "prod",
    "loadtest": "loadtest/dev",
    "loadtest-prod": "loadtest/prod",
    "managed": "examples/managed-backends",
}


@pytest.fixture(scope="session")
def rendered() -> dict[str, str]:
    """The YAML `kubectl kustomize` makes of each overlay and of the load test."""
    return {name: kustomize(path) for name, path in RENDERS.items()}


@pytest.fixture(scope="session")
def manifests(rendered: dict[str, str]) -> dict[str, list[Doc]]:
    return {name: load_all(text) for name, text in rendered.items()}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(manifests: dict[str, list[Doc]], overlay: str) -> list[Doc]:
    return manifests[overlay]


@pytest.fixture
def prod(manifests: dict[str, list[Doc]]) -> list[Doc]:
    return manifests["prod"]
