"""Deletes entries whose TTL has passed, as ordinary logged deletes, and
conversations left idle past their idle TTL, as DeleteConversation does."""

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
        try:
            while (deleted := await store.expire_idle(clock.now_ms(), BATCH)) > 0:
                log.info("idle conversations deleted", count=deleted)
                if deleted < BATCH:
                    break
        except Exception as error:
            log.warning("idle sweep failed", error=str(error))
        await asyncio.sleep(interval_s)
