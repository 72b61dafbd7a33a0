"""The prod overlay's ServiceMonitor and PrometheusRule, and the load-test Job."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import yaml

from tests.deploy.manifests import K8S, ROOT, Doc, find, one, pod_spec, selects

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"


def render_rules() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_rules", K8S / "render_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheus_rule_is_the_alerts_file(prod: list[Doc]) -> None:
    rule = one(prod, "PrometheusRule", "blackboard")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_prometheus_rule_file_is_regenerated() -> None:
    module = render_rules()
    assert module.TARGET.read_text() == module.render(), "run 'make k8s-rules'"


def test_service_monitor_scrapes_one_service_as_job_blackboard(prod: list[Doc]) -> None:
    monitor = one(prod, "ServiceMonitor", "blackboard")
    services = [
        s
        for s in find(prod, "Service")
        if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))
    ]
    assert len(services) == 1, "each server would be scraped once per matching Service"
    (service,) = services
    # The alert rules and the dashboard select job="blackboard".
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "blackboard"
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    deployment = one(prod, "Deployment", "blackboard")
    (container,) = pod_spec(deployment)["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == int(
        next(d for d in find(prod, "ConfigMap") if "BB_METRICS_PORT" in d["data"])["data"][
            "BB_METRICS_PORT"
        ]
    )
    assert endpoint["path"] == "/metrics"


def test_load_test_job_targets_the_service_and_keeps_its_reports(
    manifests: dict[str, list[Doc]],
) -> None:
    docs = manifests["loadtest"]
    job = one(docs, "Job", "blackboard-loadtest")
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["command"] == ["bb-loadtest"]
    args = container["args"]
    host, _, port = args[args.index("--address") + 1].partition(":")
    service = one(manifests["prod"], "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    for flag in ("--json", "--html"):
        path = args[args.index(flag) + 1]
        directory = path.rsplit("/", 1)[0]
        assert mounts[directory] in claims, f"{flag} {path} is not on a PersistentVolume"
        assert "$(POD_NAME)" in path, "each run writes its own report"
    claim = one(docs, "PersistentVolumeClaim", claims[mounts[directory]])
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert job["spec"]["backoffLimit"] == 0, "a failed run is a result, not something to retry"
    assert job["metadata"]["namespace"] == one(manifests["prod"], "Namespace")["metadata"]["name"]


def test_load_test_job_arguments_are_bb_loadtests(manifests: dict[str, list[Doc]]) -> None:
    """The Job's command line, read by bb-loadtest's own parser: against the Service,
    not a server of its own, with both reports written."""
    from loadtest.cli import parser

    job = one(manifests["loadtest"], "Job", "blackboard-loadtest")
    (container,) = pod_spec(job)["containers"]
    args = [arg.replace("$(POD_NAME)", "blackboard-loadtest-x1y2z") for arg in container["args"]]
    parsed = parser().parse_args(args)
    assert parsed.address == "blackboard:50051"
    assert parsed.json.endswith(".json") and parsed.html.endswith(".html")
    assert parsed.duration > 0


def test_prod_load_test_trusts_a_mounted_ca(manifests: dict[str, list[Doc]]) -> None:
    from loadtest.cli import parser

    job = one(manifests["loadtest-prod"], "Job", "blackboard-loadtest")
    spec = pod_spec(job)
    (container,) = spec["containers"]
    parsed = parser().parse_args(container["args"])
    assert parsed.address == "blackboard:50051"
    directory, _, file_name = parsed.tls_ca.rpartition("/")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert file_name in [item["path"] for item in volume["secret"]["items"]]
