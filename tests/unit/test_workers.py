"""The --workers supervisor's pure parts: each worker's command line and restart backoff."""

from __future__ import annotations

import sys

from blackboard_server.config import Settings
from blackboard_server.workers import (
    FIRST_BACKOFF_S,
    HEALTHY_AFTER_S,
    MAX_BACKOFF_S,
    Worker,
    next_backoff,
    worker_argv,
)

ARGV = ["--redis-url", "redis://h:1/0", "--etcd-endpoints", "e:2", "--workers", "2"]


def settings(*extra: str) -> Settings:
    return Settings.load([*ARGV, "--listen", "127.0.0.1:7000", *extra], {})


def parsed(argv: list[str]) -> Settings:
    assert argv[:3] == [sys.executable, "-m", "blackboard_server"]
    return Settings.load(argv[3:], {})


def test_each_worker_is_one_process_with_its_own_replica_id_and_metrics_port() -> None:
    s = settings("--metrics-port", "9100", "--replica-id", "node")
    first = parsed(worker_argv(ARGV, s, "node", Worker(0)))
    second = parsed(worker_argv(ARGV, s, "node", Worker(1, restarts=2)))
    assert (first.workers, first.reuse_port) == (second.workers, second.reuse_port) == (1, True)
    assert (first.replica_id, second.replica_id) == ("node-w0", "node-w1-r2")
    assert (first.metrics_port, second.metrics_port) == (9100, 9101)
    assert first.redis_url == s.redis_url and first.etcd == s.etcd


def test_metrics_stay_off_when_off() -> None:
    assert parsed(worker_argv(ARGV, settings(), "n", Worker(1))).metrics_port == 0


def test_restart_backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() -> None:
    worker = Worker(0)
    waits = [next_backoff(worker, ran_s=0.5) for _ in range(8)]
    assert waits[0] == FIRST_BACKOFF_S and waits[1] == 2 * FIRST_BACKOFF_S
    assert max(waits) == MAX_BACKOFF_S and waits == sorted(waits)
    assert next_backoff(worker, ran_s=HEALTHY_AFTER_S) == FIRST_BACKOFF_S
