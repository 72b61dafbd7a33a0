"""The rules the rendered manifests must keep: probes, drain, disruption budgets,
security, resources, images, and server settings that are real and complete."""

from __future__ import annotations

import dataclasses
import re

import pytest

from blackboard_server.config import Settings
from tests.deploy.conftest import RENDERS
from tests.deploy.dockerfile import env_of, stages
from tests.deploy.manifests import (
    ROOT,
    Doc,
    containers,
    find,
    one,
    pod_spec,
    redis_config,
    selects,
    server_settings,
    workloads,
)

SETTING_NAMES = {"BB_" + f.name.upper() for f in dataclasses.fields(Settings)}


def server_container(docs: list[Doc]) -> Doc:
    (container,) = pod_spec(one(docs, "Deployment", "blackboard"))["containers"]
    return container


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def loaded(docs: list[Doc]) -> Settings:
    return Settings.load([], server_settings(docs))


def test_probes_are_grpc_probes_on_the_health_port(docs: list[Doc]) -> None:
    container = server_container(docs)
    health_port = port_of(loaded(docs).health_listen)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named["health"] == health_port
    assert health_port != port_of(loaded(docs).listen)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        assert set(spec) & {"httpGet", "tcpSocket", "exec"} == set(), probe
        assert spec["grpc"]["port"] == health_port, probe


def test_termination_grace_outlasts_prestop_and_drain(docs: list[Doc]) -> None:
    spec = pod_spec(one(docs, "Deployment", "blackboard"))
    pre_stop = server_container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = loaded(docs).shutdown_grace_s
    assert pre_stop > 0
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain


def replicas_of(docs: list[Doc], workload: Doc) -> int:
    autoscalers = [
        h
        for h in find(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]
        and h["spec"]["scaleTargetRef"]["kind"] == workload["kind"]
    ]
    if autoscalers:
        return int(autoscalers[0]["spec"].get("minReplicas", 1))
    return int(workload["spec"].get("replicas", 1))


def test_disruption_budgets_allow_a_disruption(docs: list[Doc]) -> None:
    for budget in find(docs, "PodDisruptionBudget"):
        matched = [w for w in workloads(docs) if selects(budget["spec"]["selector"], pod_labels(w))]
        assert len(matched) == 1, budget["metadata"]["name"]
        replicas = replicas_of(docs, matched[0])
        spec = budget["spec"]
        if "maxUnavailable" in spec:
            assert int(spec["maxUnavailable"]) >= 1
        else:
            assert int(spec["minAvailable"]) < replicas
        assert replicas >= 2, "a budget on one replica blocks every drain"


def pod_labels(workload: Doc) -> dict[str, str]:
    if workload["kind"] == "Pod":
        return dict(workload["metadata"].get("labels", {}))
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def test_prod_has_budgets_for_the_servers_and_etcd(prod: list[Doc]) -> None:
    names = {
        w["metadata"]["name"]
        for b in find(prod, "PodDisruptionBudget")
        for w in workloads(prod)
        if selects(b["spec"]["selector"], pod_labels(w))
    }
    assert names == {"blackboard", "blackboard-etcd"}


@pytest.mark.parametrize("name", RENDERS)
def test_containers_are_locked_down(manifests: dict[str, list[Doc]], name: str) -> None:
    for workload in workloads(manifests[name]):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for container in containers(spec):
            context = container["securityContext"]
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert context.get("runAsUser", pod.get("runAsUser", 0)) != 0, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            assert not context.get("privileged", False), where


def test_server_runs_as_the_images_user(docs: list[Doc]) -> None:
    _, found = stages((ROOT / "deploy" / "docker" / "Dockerfile").read_text())
    uid, _, gid = found[-1].all("USER")[-1].args.partition(":")
    pod = pod_spec(one(docs, "Deployment", "blackboard"))["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_has_requests_and_limits(
    manifests: dict[str, list[Doc]], name: str
) -> None:
    for workload in workloads(manifests[name]):
        for container in containers(pod_spec(workload)):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert set(resources[kind]) >= {"cpu", "memory"}, container["name"]


@pytest.mark.parametrize("name", RENDERS)
def test_images_are_pinned(manifests: dict[str, list[Doc]], name: str) -> None:
    for workload in workloads(manifests[name]):
        for container in containers(pod_spec(workload)):
            image = container["image"]
            if "@sha256:" in image:
                continue
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, f"{image}: no tag"
            assert tag != "latest", image


def test_server_image_tag_is_the_package_version(docs: list[Doc]) -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert server_container(docs)["image"].endswith(f"blackboard-server:{version}")


def test_configmap_keys_are_exactly_server_settings(docs: list[Doc]) -> None:
    settings = server_settings(docs)
    assert set(settings) <= SETTING_NAMES, set(settings) - SETTING_NAMES
    assert all(isinstance(v, str) for v in settings.values())
    s = loaded(docs)  # every value parses and validates
    assert s.redis_url.startswith("redis://") and not s.embedded
    assert s.listen.startswith("0.0.0.0:") and s.health_listen.startswith("0.0.0.0:")
    assert s.metrics_port and s.log_format == "json"


def test_server_ports_are_the_settings_ports(docs: list[Doc]) -> None:
    s = loaded(docs)
    named = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert named == {
        "grpc": port_of(s.listen),
        "health": port_of(s.health_listen),
        "metrics": s.metrics_port,
    }


def test_server_finds_redis_through_its_service(docs: list[Doc]) -> None:
    match = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", loaded(docs).redis_url)
    assert match
    service = one(docs, "Service", match.group(1))
    assert int(match.group(2)) in [p["port"] for p in service["spec"]["ports"]]
    redis = one(docs, "StatefulSet", match.group(1))
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(redis))


def test_server_lists_every_etcd_member(docs: list[Doc]) -> None:
    etcd = one(docs, "StatefulSet", "blackboard-etcd")
    members = {
        f"blackboard-etcd-{i}.{etcd['spec']['serviceName']}:2379"
        for i in range(etcd["spec"]["replicas"])
    }
    assert set(loaded(docs).etcd) == members


def etcd_flags(docs: list[Doc]) -> tuple[dict[str, str], Doc]:
    etcd = one(docs, "StatefulSet", "blackboard-etcd")
    (container,) = pod_spec(etcd)["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    flags = {}
    for arg in container["args"]:
        name, _, value = arg.removeprefix("--").partition("=")
        flags[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)
    return flags, etcd


def test_etcd_members_find_each_other(docs: list[Doc]) -> None:
    flags, etcd = etcd_flags(docs)
    headless = one(docs, "Service", etcd["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert selects({"matchLabels": headless["spec"]["selector"]}, pod_labels(etcd))
    suffix = f".{headless['metadata']['name']}.$(POD_NAMESPACE).svc"
    expected = ",".join(
        f"blackboard-etcd-{i}=http://blackboard-etcd-{i}{suffix}:2380"
        for i in range(etcd["spec"]["replicas"])
    )
    assert flags["initial-cluster"] == expected
    assert flags["name"] == "$(POD_NAME)"
    assert flags["initial-advertise-peer-urls"] == f"http://$(POD_NAME){suffix}:2380"
    assert flags["advertise-client-urls"] == f"http://$(POD_NAME){suffix}:2379"
    assert flags["listen-peer-urls"] == "http://0.0.0.0:2380"
    assert flags["listen-client-urls"] == "http://0.0.0.0:2379"
    assert flags["initial-cluster-state"] == "new" and flags["initial-cluster-token"]
    mounts = {m["mountPath"] for m in pod_spec(etcd)["containers"][0]["volumeMounts"]}
    assert any(flags["data-dir"].startswith(m + "/") for m in mounts)
    assert [t["metadata"]["name"] for t in etcd["spec"]["volumeClaimTemplates"]] == ["data"]


def test_prod_etcd_has_three_members_on_three_nodes(prod: list[Doc]) -> None:
    _, etcd = etcd_flags(prod)
    assert etcd["spec"]["replicas"] == 3
    assert etcd["spec"]["podManagementPolicy"] == "Parallel"
    (term,) = pod_spec(etcd)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert selects(term["labelSelector"], pod_labels(etcd))


def test_redis_keeps_an_fsynced_aof_on_a_volume(docs: list[Doc]) -> None:
    redis = one(docs, "StatefulSet", "blackboard-redis")
    (container,) = pod_spec(redis)["containers"]
    file_name, text, config_volume = redis_config(docs)
    directives = dict(
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "always"
    assert directives["maxmemory-policy"] == "noeviction"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == directives["dir"]
    assert "data" in [t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]]
    assert container["command"][-1] == f"{mounts[config_volume['name']]}/{file_name}"


def test_a_clusterip_and_a_headless_service_reach_the_servers(docs: list[Doc]) -> None:
    labels = pod_labels(one(docs, "Deployment", "blackboard"))
    grpc_port = port_of(loaded(docs).listen)
    services = [
        s
        for s in find(docs, "Service")
        if selects({"matchLabels": s["spec"].get("selector", {})}, labels)
    ]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    normal = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(normal) == 1
    for service in services:
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["targetPort"] == "grpc" and grpc["port"] == grpc_port
    assert not headless[0]["spec"].get("publishNotReadyAddresses", False)


def test_prod_scales_on_cpu_from_three_replicas_spread_over_zones_and_nodes(
    prod: list[Doc],
) -> None:
    deployment = one(prod, "Deployment", "blackboard")
    # The autoscaler owns the count: an apply that set replicas would undo its work.
    assert "replicas" not in deployment["spec"]
    hpa = one(prod, "HorizontalPodAutoscaler", "blackboard")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "blackboard",
    }
    assert (
        hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    )
    (metric,) = hpa["spec"]["metrics"]
    assert (
        metric["resource"]["name"] == "cpu"
        and metric["resource"]["target"]["type"] == "Utilization"
    )
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in spread:
        assert selects(constraint["labelSelector"], pod_labels(deployment))
    # Rolling updates never drop below the serving count.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_prod_sends_old_connections_away(prod: list[Doc]) -> None:
    s = loaded(prod)
    assert s.max_connection_age_s > 0
    assert s.max_connection_age_grace_s > 0


def test_image_defaults_are_overridden_consistently(docs: list[Doc]) -> None:
    """The image's BB_* defaults and the ConfigMap agree where both are set."""
    _, found = stages((ROOT / "deploy" / "docker" / "Dockerfile").read_text())
    image = {k: v for k, v in env_of(found[-1]).items() if k.startswith("BB_")}
    settings = server_settings(docs)
    for key, value in image.items():
        assert settings.get(key, value) == value, key


def test_managed_backends_example_drops_the_bundled_ones(
    manifests: dict[str, list[Doc]],
) -> None:
    docs = manifests["managed"]
    names = {d["metadata"]["name"] for d in docs}
    assert not {n for n in names if n.startswith(("blackboard-redis", "blackboard-etcd"))}
    s = loaded(docs)
    assert s.redis_url.startswith("rediss://") and len(s.etcd) == 3
    assert {d["metadata"]["name"] for d in find(docs, "PodDisruptionBudget")} == {"blackboard"}
    policy = one(docs, "NetworkPolicy", "blackboard-server")
    blocks = [
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    ]
    assert len(blocks) == 2
    # Everything else of prod is still there.
    assert one(docs, "HorizontalPodAutoscaler", "blackboard") and one(docs, "ServiceMonitor")


# Keys of the Secrets created out of band (docs/deploy.md): kubernetes.io/tls, and
# the JWT keys document.
EXTERNAL_SECRET_KEYS = {
    "blackboard-tls": {"tls.crt", "tls.key", "ca.crt"},
    "blackboard-jwt": {"jwks.json"},
}


def secret_files(docs: list[Doc]) -> dict[str, tuple[str, set[str]]]:
    """Each *_FILE setting: the Secret its path lies in, and that Secret's keys."""
    spec = pod_spec(one(docs, "Deployment", "blackboard"))
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    out = {}
    for key, path in server_settings(docs).items():
        if not key.endswith("_FILE"):
            continue
        directory, _, file_name = path.rpartition("/")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
        assert mount.get("readOnly") is True, key
        secret_name = volumes[mount["name"]]["secret"]["secretName"]
        generated = [s for s in find(docs, "Secret") if s["metadata"]["name"] == secret_name]
        keys = set(generated[0]["data"]) if generated else EXTERNAL_SECRET_KEYS[secret_name]
        assert file_name in keys, f"{key}: {secret_name} has no key {file_name}"
        out[key] = (secret_name, keys)
    return out


def test_every_file_setting_is_a_key_of_a_mounted_secret(docs: list[Doc]) -> None:
    files = secret_files(docs)
    assert files, "credentials come from Secrets"
    s = loaded(docs)
    assert s.auth_methods, "off loopback the server needs authentication"


def test_prod_serves_tls_and_checks_jwts(prod: list[Doc]) -> None:
    s = loaded(prod)
    assert s.tls and s.auth_methods == ["jwt"]
    assert s.jwt_audience and s.jwt_issuer
    assert "HS256" not in s.jwt_algorithms, "a shared secret would let any holder mint tokens"
    files = secret_files(prod)
    assert files["BB_TLS_CERT_FILE"][0] == files["BB_TLS_KEY_FILE"][0] == "blackboard-tls"
    assert files["BB_JWT_KEYS_FILE"][0] == "blackboard-jwt"


def test_dev_token_secret_matches_the_token_file(manifests: dict[str, list[Doc]]) -> None:
    """The load test's token (dev) is one the dev server accepts."""
    import base64
    import hashlib
    import json

    dev = manifests["dev"]
    assert loaded(dev).auth_methods == ["tokens"]
    token_secret = one(dev, "Secret", "blackboard-loadtest")
    token = base64.b64decode(token_secret["data"]["token"])
    (tokens_secret_name, keys) = secret_files(dev)["BB_AUTH_TOKENS_FILE"]
    (file_name,) = keys
    tokens = json.loads(base64.b64decode(one(dev, "Secret", tokens_secret_name)["data"][file_name]))
    assert hashlib.sha256(token).hexdigest() in [t["sha256"] for t in tokens["tokens"]]
    job = one(manifests["loadtest"], "Job", "blackboard-loadtest")
    (container,) = pod_spec(job)["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["BB_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "blackboard-loadtest",
        "key": "token",
    }
