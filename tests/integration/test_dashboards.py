"""The Grafana dashboard and the alert rules parse, and use only metrics a real
server exposes: every name they query is in a scrape of /metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_observability import scrape_text
from tests.servers import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "blackboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
# Series Prometheus makes itself for every target, not in any /metrics.
SYNTHETIC = {"up"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def metric_names(expr: str) -> set[str]:
    """Our metric names in a PromQL expression (label values and strings removed)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names = set(re.findall(r"\b(?:grpc_server|blackboard)_[a-z_]+\b", bare))
    if re.search(r"\bup\s*\{", bare):
        names.add("up")
    return names


def exposed(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


async def test_dashboard_and_alerts_use_only_exposed_metrics(make_server: Any) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert {a["alert"] for a in alerts} >= {
        "BlackboardDown",
        "BlackboardErrorRatioHigh",
        "BlackboardDeliveryLagP99High",
        "BlackboardSlowSubscribers",
        "BlackboardRedisErrors",
        "BlackboardEtcdErrors",
    }
    used = {name: "dashboard" for e in dashboard_exprs(dashboard) for name in metric_names(e)}
    used |= {name: a["alert"] for a in alerts for name in metric_names(a["expr"])}
    async with make_server(metrics_port=free_port()) as running:
        text = await asyncio.to_thread(scrape_text, running.metrics_port)
    available = exposed(text) | SYNTHETIC
    missing = {name: where for name, where in used.items() if name not in available}
    assert not missing
    # Each panel queries something, and the file covers every family the server exposes.
    assert all(p.get("targets") for p in dashboard["panels"] if p["type"] != "row")
    families = {f.name for f in text_string_to_metric_families(text)}
    families = {f for f in families if not f.endswith("_created")}  # client-library extras
    unused = {f for f in families if not any(n.startswith(f) for n in used)}
    assert not unused


def test_metric_names_ignore_label_values() -> None:
    expr = 'sum(rate(blackboard_writes_total{kind="blackboard_fake_total"}[5m])) / up{job="x"}'
    assert metric_names(expr) == {"blackboard_writes_total", "up"}
