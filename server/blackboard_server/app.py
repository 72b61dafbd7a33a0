"""The composition root: builds every part from Settings and owns their lifetimes.

Shutdown runs in the reverse order of start-up: health goes NOT_SERVING, open
streams end with a resumable status (UNAVAILABLE, reason SHUTTING_DOWN, and the
last revision sent), in-flight unary calls get the grace period, then the
background tasks and the store close.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import structlog
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from blackboard_server.adapters.instrumented import InstrumentedCoordinator, InstrumentedStore
from blackboard_server.adapters.memory import MemoryStore
from blackboard_server.adapters.memory_coordinator import MemoryCoordinator
from blackboard_server.adapters.redis_access import RedisAccess, redact
from blackboard_server.adapters.redis_durability import Durability
from blackboard_server.api import convert
from blackboard_server.api.auth import AuthGate
from blackboard_server.api.coordination_servicer import CoordinationServicer
from blackboard_server.api.handlers import BLACKBOARD, COORDINATION, Registrar, method_handlers
from blackboard_server.api.observe import CallObserver
from blackboard_server.api.servicer import BlackboardServicer
from blackboard_server.config import Settings, SettingsError
from blackboard_server.metrics import Metrics, MetricsServer
from blackboard_server.ports import Coordinator, StateStore
from blackboard_server.security import add_port, authenticators, open_access, server_tls
from blackboard_server.services.access import Access
from blackboard_server.services.blackboard import BlackboardService
from blackboard_server.services.census import count_forever
from blackboard_server.services.coordination import CoordinationService, record_observations
from blackboard_server.services.hub import Hub
from blackboard_server.services.quotas import Admission, QuotaBook, QuotaFileError
from blackboard_server.services.subscription import StreamLimits, Subscriptions
from blackboard_server.services.sweeper import sweep_forever
from blackboard_server.tasks import stop
from blackboard_server.tracing import open_tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from blackboard_server.adapters.etcd import EtcdSecurity

log = structlog.get_logger("blackboard")
# In the default pool once their modules are imported (above).
HEALTH = descriptor_pool.Default().FindServiceByName("grpc.health.v1.Health")
REFLECTION = descriptor_pool.Default().FindServiceByName(reflection.SERVICE_NAME)
HEALTH_SERVICES = ("", BLACKBOARD.full_name, COORDINATION.full_name)


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass
class RunningServer:
    settings: Settings
    port: int
    store: StateStore
    hub: Hub
    health: health.aio.HealthServicer
    metrics: Metrics
    metrics_port: int  # 0: /metrics is off
    health_port: int = 0  # the health-only listener (`health_listen`); 0: off

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0].strip("[]")
        return f"{host}:{self.port}"


async def open_coordinator(settings: Settings) -> Coordinator:
    if not settings.etcd:
        if not settings.embedded:
            log.warning(
                "no etcd endpoints: locks, elections and sessions live in this "
                "process only; run one replica, or set --etcd-endpoints"
            )
        return MemoryCoordinator()
    from blackboard_server.adapters.etcd import EtcdAuthFailed
    from blackboard_server.adapters.etcd_coordinator import EtcdCoordinator

    try:
        coordinator = await EtcdCoordinator.connect(
            settings.etcd,
            timeout_s=settings.etcd_timeout_s,
            prefix=settings.etcd_prefix,
            replica_id=settings.replica_id or None,
            shards=settings.coordination_shards,
            security=etcd_security(settings),
        )
    except ValueError as exc:
        raise SettingsError(f"etcd_endpoints: {exc}") from None
    try:
        await coordinator.check_access()
    except EtcdAuthFailed as exc:
        await coordinator.aclose()
        user = f"user {settings.etcd_username!r}" if settings.etcd_username else "no etcd user"
        raise SettingsError(f"etcd refused the server ({user}): {exc}") from None
    return coordinator


def etcd_security(settings: Settings) -> EtcdSecurity:
    """The etcd credentials of the settings, with the files read now."""
    from blackboard_server.adapters.etcd import EtcdSecurity

    def read(name: str) -> bytes | None:
        path = getattr(settings, name)
        if not path:
            return None
        try:
            with open(path, "rb") as file:
                return file.read()
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {path}: {exc.strerror}") from None

    password = settings.etcd_password
    if settings.etcd_password_file:
        raw = read("etcd_password_file") or b""
        password = raw.decode().removesuffix("\n").removesuffix("\r")
    tls = any((settings.etcd_tls_ca_file, settings.etcd_tls_cert_file))
    return EtcdSecurity(
        username=settings.etcd_username,
        password=password,
        tls=tls,
        ca_pem=read("etcd_tls_ca_file"),
        cert_pem=read("etcd_tls_cert_file"),
        key_pem=read("etcd_tls_key_file"),
    )


async def open_store(settings: Settings) -> StateStore:
    retention = settings.retention
    window_ms = int(settings.dedupe_window_s * 1000)
    if settings.embedded:
        return MemoryStore(retention=retention, dedupe_window_ms=window_ms)
    from blackboard_server.adapters.redis_store import RedisStore

    return await RedisStore.connect(
        redis_access(settings),
        retention=retention,
        dedupe_window_ms=window_ms,
        timeout_s=settings.redis_timeout_s,
        durability=redis_durability(settings),
        connections=settings.redis_connections,
    )


def redis_access(settings: Settings) -> RedisAccess:
    return RedisAccess.of(
        settings.redis_url,
        password_file=settings.redis_password_file,
        tls_ca_file=settings.redis_tls_ca_file,
        tls_cert_file=settings.redis_tls_cert_file,
        tls_key_file=settings.redis_tls_key_file,
    )


def redis_durability(settings: Settings) -> Durability:
    return Durability(
        settings.durability,
        settings.durability_check,
        settings.redis_wait_replicas,
        settings.redis_wait_timeout_ms or int(settings.redis_timeout_s * 500),
    )


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC channel arguments of the main server."""
    options = [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", max(settings.max_request_bytes, 64 << 20)),
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        # Calls that arrived but that the server has not yet taken up: past the
        # soft limit gRPC cancels new ones at random, past the hard limit all. Its
        # defaults (1000 / 3000) cancel subscribers when a few thousand reconnect
        # at once, e.g. to the replicas left after one goes away.
        ("grpc.server.max_pending_requests", settings.max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 2 * settings.max_pending_calls),
    ]
    if settings.max_connection_age_s:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        if settings.max_connection_age_grace_s:
            grace_ms = int(settings.max_connection_age_grace_s * 1000)
            options.append(("grpc.max_connection_age_grace_ms", grace_ms))
    return options


@dataclass
class HealthServer:
    server: grpc.aio.Server
    port: int


async def open_health_server(
    listen: str, servicer: health.aio.HealthServicer, *, reuse_port: bool = False
) -> HealthServer:
    """A plaintext server with grpc.health.v1 alone, sharing the main server's statuses.

    Probes reach it without TLS or credentials; it answers nothing else. It stops
    after the main server, so probes see NOT_SERVING for the whole drain. Workers
    (`--workers`) share its port as they share `listen`.
    """
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(listen)
    await server.start()
    return HealthServer(server, port)


def open_quotas(settings: Settings) -> QuotaBook:
    try:
        return QuotaBook(settings.quota, settings.quotas_file, cluster=settings.redis_cluster)
    except QuotaFileError as exc:
        raise SettingsError(f"quotas_file: {exc}") from None


@asynccontextmanager
async def serve(
    settings: Settings, *, span_exporter: SpanExporter | None = None
) -> AsyncIterator[RunningServer]:
    """Serves until the context exits; `span_exporter` turns tracing on with it (tests)."""
    if settings.embedded:
        log.warning(
            "embedded mode: state is in memory and NOT durable; loopback only",
            listen=settings.listen,
        )
    else:
        log.info(
            "starting",
            listen=settings.listen,
            store="redis",
            redis=redact(settings.redis_url),
            durability=settings.durability,
        )
    # Files first: a bad key or token file stops the start before anything connects.
    methods, tls = authenticators(settings), server_tls(settings)
    quotas = open_quotas(settings)
    async with AsyncExitStack() as stack:
        metrics = Metrics()
        metrics.changelog_retention.set(settings.retention)
        tracing = open_tracing(settings.tracing, settings.otlp_endpoint, span_exporter)
        if tracing is not None:
            # The last export is a blocking call: off the event loop, which may still serve.
            stack.push_async_callback(asyncio.to_thread, tracing.close)
        store: StateStore = InstrumentedStore(
            await open_store(settings), "memory" if settings.embedded else "redis", metrics, tracing
        )
        stack.push_async_callback(store.aclose)
        clock = SystemClock()
        admission = Admission(quotas)
        # Before any task group: a backend refusing the credentials is a SettingsError
        # of its own, not one inside an exception group.
        coordinator: Coordinator = InstrumentedCoordinator(
            await open_coordinator(settings),
            "etcd" if settings.etcd else "memory-coordinator",
            metrics,
            tracing,
        )
        stack.push_async_callback(coordinator.aclose)
        hub = Hub(
            store,
            convert.encode_event,
            capacity=settings.feed_buffer,
            poll_interval_s=min(1.0, settings.progress_interval_s),
            tick_interval_s=settings.progress_interval_s / 2,
            coalesce_s=settings.subscriber_coalesce_ms / 1000,
            messages_per_s=settings.fanout_messages_per_s,
        )
        await stack.enter_async_context(hub.running())
        await stack.enter_async_context(coordinator.running())
        blackboard = BlackboardService(
            store,
            clock,
            settings.limits,
            patch_retries=settings.patch_retries,
            sessions=coordinator,
            quotas=quotas,
        )
        coordination = CoordinationService(
            coordinator,
            store,
            clock,
            settings.limits,
            default_ttl_ms=settings.session_ttl_ms,
            max_ttl_ms=settings.max_session_ttl_ms,
            max_wait_ms=settings.max_wait_ms,
            quotas=quotas,
        )
        stream = StreamLimits(
            settings.subscriber_max_lag,
            settings.subscriber_batch,
            settings.snapshot_chunk,
            settings.progress_interval_s,
        )
        subscriptions = Subscriptions(
            store,
            hub,
            blackboard,
            convert.encode_event,
            convert.batch_message,
            settings.limits,
            stream,
            metrics,
        )
        metrics.watch_subscribers(lambda: hub.subscribers)
        access = open_access(settings, methods, store)
        verified = access is not None
        servicer = BlackboardServicer(
            blackboard,
            subscriptions,
            access or Access((), store),
            tenant=settings.tenant,
            write_timeout_s=settings.subscriber_write_timeout_s,
            admission=admission,
            verified=verified,
            limits=settings.limits,
            metrics=metrics,
        )
        server = grpc.aio.server(options=server_options(settings))
        # Every handler observed, then (outside in) admitted: wrapped once, here.
        observer = CallObserver(metrics, tracing, tenant=settings.tenant, verified=verified)
        layers = [observer.wrap] + ([] if access is None else [AuthGate(access).wrap])
        registrar = Registrar(server, layers)
        # Registered, not generic: the server then waits for calls of each method
        # separately, so a flood of one method's calls does not queue the others'.
        coordination_servicer = CoordinationServicer(
            coordination, tenant=settings.tenant, verified=verified, admission=admission
        )
        for service, implementation in (
            (BLACKBOARD, servicer),
            (COORDINATION, coordination_servicer),
        ):
            registrar.add_registered_method_handlers(
                service.full_name, method_handlers(service, implementation)
            )
        health_servicer = health.aio.HealthServicer()
        registrar.add_registered_method_handlers(
            HEALTH.full_name, method_handlers(HEALTH, health_servicer)
        )
        for name in HEALTH_SERVICES:  # the servicer starts SERVING: not before we are
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflected = (
            BLACKBOARD.full_name,
            COORDINATION.full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        registrar.add_registered_method_handlers(
            REFLECTION.full_name,
            method_handlers(REFLECTION, reflection.aio.ReflectionServicer(reflected)),
        )
        port = add_port(server, settings, tls)
        metrics_port = 0
        if settings.metrics_port:
            host = settings.metrics_host or settings.listen.rpartition(":")[0].strip("[]")
            exporter = MetricsServer(metrics, host, settings.metrics_port)
            stack.callback(exporter.close)
            metrics_port = exporter.port
        health_port = 0
        if settings.health_listen:
            health_server = await open_health_server(
                settings.health_listen, health_servicer, reuse_port=settings.reuse_port
            )
            stack.push_async_callback(health_server.server.stop, None)
            health_port = health_server.port
        await server.start()
        for name in HEALTH_SERVICES:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

        background = await stack.enter_async_context(asyncio.TaskGroup())
        chores = [
            background.create_task(
                sweep_forever(store, clock, settings.sweep_interval_s), name="ttl-sweeper"
            ),
            background.create_task(
                record_observations(coordinator, store, clock), name="coordination-recorder"
            ),
        ]
        if metrics_port:
            chores.append(
                background.create_task(
                    count_forever(coordinator, metrics, settings.census_interval_s),
                    name="census",
                )
            )
        running = RunningServer(
            settings, port, store, hub, health_servicer, metrics, metrics_port, health_port
        )
        log.info(
            "serving",
            address=running.address,
            metrics_port=metrics_port or None,
            health_port=health_port or None,
        )
        try:
            yield running
        finally:
            for name in HEALTH_SERVICES:
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            hub.close()
            servicer.close()
            await server.stop(settings.shutdown_grace_s)
            # Cancelled again until done: a Redis client call can swallow a cancel
            # (tasks.py), and the task group would wait forever.
            await asyncio.gather(*(stop(chore) for chore in chores))
            log.info("stopped", address=running.address)
