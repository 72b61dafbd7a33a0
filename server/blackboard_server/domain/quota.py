"""Per-tenant quotas: what they are, how a write's usage is counted, the token bucket. Pure.

A quota of 0 means unlimited. Stores enforce the counts that must hold across
replicas (entries per conversation, bytes per tenant, conversations per
tenant) inside their atomic write step with `check_write`; the Redis commit
script is a port of it. Usage is the size of the live entries: the UTF-8 bytes
of each key plus the bytes of its value (the change log and metadata are not
counted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from blackboard_server.domain.errors import QuotaExceeded, RateLimited
from blackboard_server.domain.model import Change, Entry

# Counted over all of a tenant's conversations. A Redis Cluster cannot keep these:
# a tenant's conversations lie in many slots, and a script reaches one (docs/quotas.md).
TENANT_WIDE = ("conversations", "bytes")
CLUSTER_QUOTAS = (
    "not supported on a Redis Cluster (a tenant's conversations span slots); "
    "use quota_entries_per_conversation (docs/quotas.md)"
)


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits of one tenant; 0 is unlimited."""

    conversations: int = 0
    entries_per_conversation: int = 0
    bytes: int = 0
    subscribers_per_conversation: int = 0
    subscribers: int = 0
    sessions: int = 0
    requests_per_second: float = 0.0
    burst: int = 0  # 0: one second's worth of requests

    @property
    def store(self) -> StoreQuota:
        if not (self.entries_per_conversation or self.bytes):
            return UNLIMITED
        return StoreQuota(self.entries_per_conversation, self.bytes)


@dataclass(frozen=True, slots=True)
class StoreQuota:
    """The part of a tenant's quota a store checks in its atomic write step."""

    entries_per_conversation: int = 0
    bytes: int = 0


UNLIMITED = StoreQuota()


def tenant_wide(quota: Quota) -> list[str]:
    """The TENANT_WIDE quotas `quota` sets (not 0)."""
    return [name for name in TENANT_WIDE if getattr(quota, name)]


@dataclass(slots=True)
class Usage:
    """What a tenant holds in the store."""

    conversations: int = 0
    bytes: int = 0


def entry_size(entry: Entry) -> int:
    return len(entry.key.encode("utf-8", "surrogatepass")) + len(entry.data)


def usage_delta(changes: Iterable[Change]) -> tuple[int, int]:
    """How many entries and bytes the changes add (negative: remove)."""
    entries = size = 0
    for change in changes:
        if change.previous is not None:
            size -= entry_size(change.previous)
            entries -= 1
        if change.entry is not None:
            size += entry_size(change.entry)
            entries += 1
    return entries, size


def check_write(
    quota: StoreQuota, *, entries: int, tenant_bytes: int, added_entries: int, added_bytes: int
) -> None:
    """Refuses a write that grows usage past a quota. A write that shrinks usage always
    passes, so a tenant over a lowered quota can still clean up."""
    limit = quota.entries_per_conversation
    if limit and added_entries > 0 and entries + added_entries > limit:
        raise QuotaExceeded("entries_per_conversation", limit, entries + added_entries)
    if quota.bytes and added_bytes > 0 and tenant_bytes + added_bytes > quota.bytes:
        raise QuotaExceeded("bytes", quota.bytes, tenant_bytes + added_bytes)


def check_count(quota: str, limit: int, current: int) -> None:
    """Refuses one more of something when `current` already reach the limit (0: unlimited)."""
    if limit and current >= limit:
        raise QuotaExceeded(quota, limit, current + 1)


def burst_of(rate: float, burst: int) -> int:
    """A burst of 0 means one second's worth of requests (at least one)."""
    return burst or max(1, math.ceil(rate))


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; one request takes one token."""

    rate: float
    burst: int
    tokens: float
    updated_s: float

    @classmethod
    def full(cls, rate: float, burst: int, now_s: float) -> TokenBucket:
        burst = burst_of(rate, burst)
        return cls(rate, burst, float(burst), now_s)

    def take(self, now_s: float) -> None:
        """Takes a token, or raises RateLimited with how long until one is there."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated_s = now_s
        if self.tokens < 1.0:
            wait_ms = math.ceil((1.0 - self.tokens) / self.rate * 1000)
            raise RateLimited(self.rate, self.burst, wait_ms)
        self.tokens -= 1.0
