"""The prod NetworkPolicies, evaluated: the flows Blackboard needs are allowed, others not.

A small evaluator of the NetworkPolicy rules (pod and namespace selectors, ports,
policy types): a pod selected by a policy of a direction is isolated in that
direction and gets only what some such policy allows; a connection needs the
source's egress and the destination's ingress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.deploy.manifests import Doc, find, one, pod_spec, selects


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def peer_matches(peer: Doc, pod: Pod, policy_namespace: str) -> bool:
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], pod.namespace_labels)
    else:
        in_namespace = pod.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), pod.labels)


def port_matches(ports: list[Doc] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports)


def admits(policies: list[Doc], pod: Pod, other: Pod, port: int, protocol: str, way: str) -> bool:
    """Whether `pod`'s policies of direction `way` (Ingress, Egress) let `other` through."""
    applicable = [
        p
        for p in policies
        if way in p["spec"]["policyTypes"]
        and p["metadata"]["namespace"] == pod.namespace
        and selects(p["spec"]["podSelector"], pod.labels)
    ]
    if not applicable:
        return True
    key, peers_key = ("ingress", "from") if way == "Ingress" else ("egress", "to")
    for policy in applicable:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            reached = not peers or any(
                peer_matches(peer, other, policy["metadata"]["namespace"]) for peer in peers
            )
            if reached and port_matches(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(
    policies: list[Doc], source: Pod, target: Pod, port: int, protocol: str = "TCP"
) -> bool:
    return admits(policies, source, target, port, protocol, "Egress") and admits(
        policies, target, source, port, protocol, "Ingress"
    )


@pytest.fixture(scope="module")
def world(manifests: dict[str, list[Doc]]) -> tuple[list[Doc], dict[str, Pod]]:
    prod, loadtest = manifests["prod"], manifests["loadtest"]
    namespace = one(prod, "Namespace")["metadata"]["name"]

    def pod_of(docs: list[Doc], kind: str, name: str) -> Pod:
        workload = one(docs, kind, name)
        assert pod_spec(workload)
        return Pod(namespace, dict(workload["spec"]["template"]["metadata"]["labels"]))

    pods = {
        "server": pod_of(prod, "Deployment", "blackboard"),
        "redis": pod_of(prod, "StatefulSet", "blackboard-redis"),
        "etcd": pod_of(prod, "StatefulSet", "blackboard-etcd"),
        "loadtest": pod_of(loadtest, "Job", "blackboard-loadtest"),
        "neighbour": Pod(namespace, {"app": "something-else"}),
        "agent": Pod("agents", {"blackboard-client": "true"}),
        "stranger": Pod("agents", {"app": "web"}),
        "prometheus": Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}),
        "dns": Pod("kube-system", {"k8s-app": "kube-dns"}),
    }
    policies = [*find(prod, "NetworkPolicy"), *find(loadtest, "NetworkPolicy")]
    return policies, pods


NEEDED = [
    ("agent", "server", 50051, "TCP"),
    ("loadtest", "server", 50051, "TCP"),
    ("prometheus", "server", 9090, "TCP"),
    ("server", "redis", 6379, "TCP"),
    ("server", "etcd", 2379, "TCP"),
    ("etcd", "etcd", 2380, "TCP"),
    ("server", "dns", 53, "UDP"),
    ("server", "dns", 53, "TCP"),
    ("etcd", "dns", 53, "UDP"),
    ("loadtest", "dns", 53, "UDP"),
]

REFUSED = [
    ("stranger", "server", 50051, "TCP"),
    ("neighbour", "server", 50051, "TCP"),
    ("agent", "server", 9090, "TCP"),
    ("agent", "server", 8081, "TCP"),
    ("agent", "redis", 6379, "TCP"),
    ("agent", "etcd", 2379, "TCP"),
    ("loadtest", "redis", 6379, "TCP"),
    ("loadtest", "etcd", 2379, "TCP"),
    ("prometheus", "redis", 6379, "TCP"),
    ("server", "etcd", 2380, "TCP"),
    ("server", "agent", 443, "TCP"),
    ("redis", "server", 50051, "TCP"),
    ("redis", "dns", 53, "UDP"),
    ("etcd", "redis", 6379, "TCP"),
    ("neighbour", "redis", 6379, "TCP"),
]


@pytest.mark.parametrize(("source", "target", "port", "protocol"), NEEDED)
def test_needed_flows_are_allowed(
    world: tuple[list[Doc], dict[str, Pod]], source: str, target: str, port: int, protocol: str
) -> None:
    policies, pods = world
    assert allowed(policies, pods[source], pods[target], port, protocol)


@pytest.mark.parametrize(("source", "target", "port", "protocol"), REFUSED)
def test_other_flows_are_refused(
    world: tuple[list[Doc], dict[str, Pod]], source: str, target: str, port: int, protocol: str
) -> None:
    policies, pods = world
    assert not allowed(policies, pods[source], pods[target], port, protocol)


def test_every_pod_in_the_namespace_is_isolated(world: tuple[list[Doc], dict[str, Pod]]) -> None:
    policies, _ = world
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny[0]["spec"].get("ingress") and not deny[0]["spec"].get("egress")
