"""Tenant quotas: who gets which limits, and the limits counted in this process.

`QuotaBook` answers "what are tenant T's quotas": the defaults from Settings
(`quota_*`), replaced field by field by the tenant's table in the quotas file
when there is one. The file is TOML, checked for changes at most once a second
on the request path (one stat call), and reloaded when its modification time
or size changes; a file that no longer parses is logged and the last good one
is kept. At start an unreadable file is an error.

    [tenants.acme]
    conversations = 100
    bytes = 50_000_000
    requests_per_second = 20
    burst = 40

`Admission` holds what is counted per process: the request-rate token bucket
and open streams (subscribers). With N replicas a tenant may have N times
those; the counts that must be exact across replicas (conversations, entries,
bytes) are kept by the store, sessions by the coordinator.
"""

from __future__ import annotations

import dataclasses
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from blackboard_server.domain.quota import (
    CLUSTER_QUOTAS,
    Quota,
    TokenBucket,
    burst_of,
    check_count,
    tenant_wide,
)
from blackboard_server.watched_file import WatchedFile

K = TypeVar("K")
_FIELDS = {f.name: f for f in dataclasses.fields(Quota)}


class QuotaFileError(ValueError):
    """The quotas file cannot be read or holds something that is not a quota."""


def parse_quotas(text: str, default: Quota) -> dict[str, Quota]:
    """The tenants' quotas in a quotas file; fields a tenant does not set come from `default`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QuotaFileError(f"not valid TOML: {exc}") from None
    unknown = set(document) - {"tenants"}
    if unknown:
        raise QuotaFileError(f"unknown top-level keys {sorted(unknown)}; expected [tenants.NAME]")
    tenants = document.get("tenants", {})
    if not isinstance(tenants, dict):
        raise QuotaFileError("`tenants` must be a table of tables")
    return {str(name): _quota(str(name), table, default) for name, table in tenants.items()}


def _quota(tenant: str, table: Any, default: Quota) -> Quota:
    if not isinstance(table, dict):
        raise QuotaFileError(f"tenants.{tenant}: must be a table")
    values: dict[str, Any] = {}
    for name, value in table.items():
        field = _FIELDS.get(name)
        if field is None:
            raise QuotaFileError(f"tenants.{tenant}.{name}: not a quota ({', '.join(_FIELDS)})")
        fractional = field.type == "float"
        wrong_type = not isinstance(value, int | float) or isinstance(value, bool)
        if wrong_type or (isinstance(value, float) and not fractional) or value < 0:
            raise QuotaFileError(f"tenants.{tenant}.{name}: must be a number >= 0 (0: unlimited)")
        values[name] = float(value) if fractional else value
    return dataclasses.replace(default, **values)


def _refuse_tenant_wide(tenants: dict[str, Quota]) -> None:
    names = [f"tenants.{t}.{name}" for t, quota in tenants.items() for name in tenant_wide(quota)]
    if names:
        raise QuotaFileError(f"{', '.join(names)}: {CLUSTER_QUOTAS}")


class QuotaBook:
    def __init__(
        self,
        default: Quota,
        path: str = "",
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        cluster: bool = False,
    ) -> None:
        """`cluster`: the store is a Redis Cluster, which keeps no tenant-wide quota; a
        file setting one is refused at start and not reloaded."""
        self.default = default
        self._cluster = cluster
        self._file: WatchedFile[dict[str, Quota]] | None = None
        if path:
            try:
                self._file = WatchedFile(
                    path, self._parse, interval_s=check_interval_s, clock=clock
                )
            except OSError as exc:
                raise QuotaFileError(f"cannot read {path}: {exc.strerror}") from None
            except ValueError as exc:
                raise QuotaFileError(str(exc)) from None

    def of(self, tenant: str) -> Quota:
        if self._file is None:
            return self.default
        return self._file.current().get(tenant, self.default)

    def _parse(self, data: bytes) -> dict[str, Quota]:
        tenants = parse_quotas(data.decode(), self.default)
        if self._cluster:
            _refuse_tenant_wide(tenants)
        return tenants


class Admission:
    """The per-process quotas: request rate and open streams."""

    def __init__(self, book: QuotaBook, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.book = book
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._streams: dict[str, int] = {}  # tenant -> open streams
        self._streams_of: dict[tuple[str, str], int] = {}  # (tenant, conversation) -> open

    def admit(self, tenant: str) -> None:
        """Takes one request from the tenant's bucket; RateLimited if it is empty."""
        quota = self.book.of(tenant)
        if not quota.requests_per_second:
            return
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None or (bucket.rate, bucket.burst) != _shape(quota):
            bucket = self._buckets[tenant] = TokenBucket.full(
                quota.requests_per_second, quota.burst, now
            )
        bucket.take(now)

    @contextmanager
    def subscriber(self, tenant: str, conversation_id: str) -> Iterator[None]:
        """Counts one open stream while the block runs; QuotaExceeded if there are too many."""
        quota = self.book.of(tenant)
        key = (tenant, conversation_id)
        check_count("subscribers", quota.subscribers, self._streams.get(tenant, 0))
        check_count(
            "subscribers_per_conversation",
            quota.subscribers_per_conversation,
            self._streams_of.get(key, 0),
        )
        _add(self._streams, tenant, 1)
        _add(self._streams_of, key, 1)
        try:
            yield
        finally:
            _add(self._streams, tenant, -1)
            _add(self._streams_of, key, -1)


def _shape(quota: Quota) -> tuple[float, int]:
    return quota.requests_per_second, burst_of(quota.requests_per_second, quota.burst)


def _add(counts: dict[K, int], key: K, n: int) -> None:
    left = counts.get(key, 0) + n
    if left:
        counts[key] = left
    else:
        del counts[key]  # only tenants and conversations with open streams take memory
