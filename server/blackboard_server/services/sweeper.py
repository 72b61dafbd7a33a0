"""Deletes entries whose TTL has passed, as ordinary logged deletes."""

from __future__ import annotations

import asyncio

import structlog

from blackboard_server.ports import Clock, StateStore

log = structlog.get_logger("blackboard.sweeper")
BATCH = 1000


async def sweep_forever(store: StateStore, clock: Clock, interval_s: float) -> None:
    while True:
        try:
            # A full batch means more may be due: go again at once.
            while await store.expire_due(clock.now_ms(), BATCH) == BATCH:
                pass
        except Exception as error:
            log.warning("ttl sweep failed", error=str(error))
        await asyncio.sleep(interval_s)
