"""Counts sessions, held locks and leaders now and then, for the gauges.

The count covers the whole deployment (it reads the coordinator, not this
replica's calls), so every replica reports the same figures: dashboards take
the max over replicas, not the sum.
"""

from __future__ import annotations

import asyncio

import structlog

from blackboard_server.metrics import Metrics
from blackboard_server.ports import Coordinator

log = structlog.get_logger("blackboard.census")


async def count_forever(coordinator: Coordinator, metrics: Metrics, interval_s: float) -> None:
    while True:
        try:
            census = await coordinator.census()
        except Exception as error:
            log.warning("coordination census failed", error=str(error))
        else:
            metrics.sessions.set(census.sessions)
            metrics.locks_held.set(census.locks_held)
            metrics.leaders.set(census.leaders)
        await asyncio.sleep(interval_s)
