"""Every Prometheus metric of a server, in one registry of its own.

A registry per server, not the process-wide default, so that several servers in
one process (tests, the bench) each count their own calls. No label names a
conversation, agent, key or session: label values come from small fixed sets
(RPC names, status codes, write kinds, backend operations), so the number of
series is bounded whatever the traffic.

The gRPC metrics follow go-grpc-prometheus: the names, the labels and their
values, so existing dashboards and alerts work unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

GRPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")
# Seconds: a Redis round trip is ~0.1-1 ms; lock waits and streams run far longer.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
LAG_EVENT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # --- gRPC, as go-grpc-prometheus names them -------------------------------
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*GRPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            GRPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Messages received from clients.",
            GRPC_LABELS,
            registry=r,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total", "Messages sent to clients.", GRPC_LABELS, registry=r
        )
        # --- writes ---------------------------------------------------------------
        self.writes = Counter(
            "blackboard_writes_total",
            "Write RPCs by kind (put, delete, append, patch, txn) and outcome "
            "(ok, replayed, conflict, fenced, error).",
            ("kind", "outcome"),
            registry=r,
        )
        self.cas_conflicts = Counter(
            "blackboard_cas_conflicts_total",
            "Writes refused because a compare (expected version or revision) did not hold.",
            ("kind",),
            registry=r,
        )
        self.fenced = Counter(
            "blackboard_fenced_rejections_total",
            "Writes refused because their fencing token was not the current holder's.",
            ("kind",),
            registry=r,
        )
        self.replays = Counter(
            "blackboard_idempotent_replays_total",
            "Writes answered with the stored result of an earlier call with the same request id.",
            ("kind",),
            registry=r,
        )
        # --- subscribers ----------------------------------------------------------
        self.subscribers = Gauge(
            "blackboard_subscribers", "Open Subscribe streams on this replica.", registry=r
        )
        self.subscriber_lag = Histogram(
            "blackboard_subscriber_lag_events",
            "How far behind the conversation's head a subscriber was, in revisions, "
            "each time it was sent a batch (its queue depth).",
            buckets=LAG_EVENT_BUCKETS,
            registry=r,
        )
        self.slow_disconnects = Counter(
            "blackboard_slow_subscriber_disconnects_total",
            "Subscribe streams ended with SLOW_SUBSCRIBER (too far behind, or a stalled write).",
            registry=r,
        )
        self.delivery_lag = Histogram(
            "blackboard_delivery_lag_seconds",
            "Time from an event's commit to its delivery to a subscriber, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # --- the change log ---------------------------------------------------------
        self.changelog_length = Histogram(
            "blackboard_changelog_length_events",
            "Events retained in a conversation's change log (head minus compact revision), "
            "each time a head is read.",
            buckets=LAG_EVENT_BUCKETS,
            registry=r,
        )
        self.changelog_retention = Gauge(
            "blackboard_changelog_retention_events",
            "The configured number of events kept per conversation.",
            registry=r,
        )
        # --- coordination -----------------------------------------------------------
        self.sessions_opened = Counter(
            "blackboard_sessions_opened_total", "Sessions opened.", registry=r
        )
        self.sessions_closed = Counter(
            "blackboard_sessions_closed_total", "Sessions closed by their agent.", registry=r
        )
        self.acquired = Counter(
            "blackboard_acquisitions_total",
            "Locks acquired (kind=lock) and elections won (kind=election).",
            ("kind",),
            registry=r,
        )
        self.released = Counter(
            "blackboard_releases_total",
            "Locks released (kind=lock) and leaders resigned (kind=election).",
            ("kind",),
            registry=r,
        )
        self.sessions = Gauge(
            "blackboard_sessions",
            "Live sessions across the deployment, as last counted (every replica counts all).",
            registry=r,
        )
        self.locks_held = Gauge(
            "blackboard_locks_held",
            "Locks with a holder across the deployment, as last counted.",
            registry=r,
        )
        self.leaders = Gauge(
            "blackboard_leaders",
            "Election roles with a leader across the deployment, as last counted.",
            registry=r,
        )
        # --- backends -----------------------------------------------------------------
        self.backend_seconds = Histogram(
            "blackboard_backend_call_seconds",
            "Calls to the store (redis, memory) and coordinator (etcd, memory), by operation.",
            ("backend", "operation"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "blackboard_backend_errors_total",
            "Backend calls that failed (unavailable, timed out, or an unexpected error).",
            ("backend", "operation"),
            registry=r,
        )

    def watch_subscribers(self, count: Callable[[], int]) -> None:
        self.subscribers.set_function(count)


class MetricsServer:
    """/metrics over HTTP on its own thread (prometheus_client's WSGI server)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
