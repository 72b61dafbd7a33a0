"""What an RPC's outcome means for Blackboard's own counters.

The call observer knows each call's method, response and error reason; this table
turns them into write outcomes, coordination counts and slow-subscriber ends,
so no service has to know about metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from blackboard_server.domain import errors as e
from blackboard_server.metrics import Metrics

WRITE_KINDS = {
    "blackboard.v1.Blackboard/Put": "put",
    "blackboard.v1.Blackboard/Delete": "delete",
    "blackboard.v1.Blackboard/Append": "append",
    "blackboard.v1.Blackboard/Patch": "patch",
    "blackboard.v1.Blackboard/Txn": "txn",
}
# (counter attribute of Metrics, kind label or None) counted when the call succeeds.
COORDINATION = {
    "blackboard.v1.Coordination/OpenSession": ("sessions_opened", None),
    "blackboard.v1.Coordination/CloseSession": ("sessions_closed", None),
    "blackboard.v1.Coordination/AcquireLock": ("acquired", "lock"),
    "blackboard.v1.Coordination/Campaign": ("acquired", "election"),
    "blackboard.v1.Coordination/ReleaseLock": ("released", "lock"),
    "blackboard.v1.Coordination/Resign": ("released", "election"),
}

# Called with the response (None on error) and the error reason ("" on success).
Outcome = Callable[[Any, str], None]
# What a stream's access line adds to its fields (the Write stream's counts of
# writes and failed writes); the handler sets a dict, the call observer reads it.
TALLY: ContextVar[dict[str, int] | None] = ContextVar("blackboard_stream_tally", default=None)


def outcome_for(full_method: str, metrics: Metrics) -> Outcome | None:
    kind = WRITE_KINDS.get(full_method)
    if kind is not None:
        return _write_outcome(kind, metrics)
    counted = COORDINATION.get(full_method)
    if counted is not None:
        attribute, label = counted
        counter = getattr(metrics, attribute)
        child = counter.labels(label) if label else counter

        def coordination(response: Any, reason: str) -> None:
            if response is not None:
                child.inc()

        return coordination
    if full_method == "blackboard.v1.Blackboard/Subscribe":

        def subscribe(response: Any, reason: str) -> None:
            if reason == e.SlowSubscriber.reason:
                metrics.slow_disconnects.inc()

        return subscribe
    return None


def streamed_write_outcomes(metrics: Metrics) -> dict[str, Outcome]:
    """Per kind of write in a Write stream: each write is counted as its unary call is."""
    return {kind: _write_outcome(kind, metrics) for kind in ("put", "delete", "append")}


def _write_outcome(kind: str, metrics: Metrics) -> Outcome:
    outcomes = {o: metrics.writes.labels(kind, o) for o in ("ok", "replayed", "conflict")}
    conflicts = metrics.cas_conflicts.labels(kind)
    replays = metrics.replays.labels(kind)
    fenced = metrics.fenced.labels(kind)

    def write(response: Any, reason: str) -> None:
        if response is None:
            if reason == e.ConditionFailed.reason:
                outcomes["conflict"].inc()
                conflicts.inc()
            elif reason == e.Fenced.reason:
                metrics.writes.labels(kind, "fenced").inc()
                fenced.inc()
            else:
                metrics.writes.labels(kind, "error").inc()
            return
        result = response.result if kind == "patch" else response
        if result.replayed:
            outcomes["replayed"].inc()
            replays.inc()
        elif kind == "txn" and not response.succeeded:
            outcomes["conflict"].inc()  # the compares failed: the failure branch ran
            conflicts.inc()
        else:
            outcomes["ok"].inc()

    return write
