"""Quota logic without a server: the token bucket, the quotas file, per-process counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog.testing

from blackboard_server.domain.errors import QuotaExceeded, RateLimited
from blackboard_server.domain.quota import Quota, TokenBucket
from blackboard_server.services.quotas import Admission, QuotaBook, QuotaFileError, parse_quotas


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3, now_s=0.0)
    for _ in range(3):
        bucket.take(0.0)
    with pytest.raises(RateLimited) as caught:
        bucket.take(0.0)
    assert caught.value.metadata["retry_after_ms"] == "500"
    assert caught.value.metadata["quota"] == "requests_per_second"
    assert bucket.tokens == 0.0  # a refusal takes nothing
    bucket.take(0.5)  # one token came back in half a second
    with pytest.raises(RateLimited):
        bucket.take(0.5)
    bucket.take(100.0)  # a long pause refills up to the burst, not beyond
    assert bucket.tokens == 2.0


def test_burst_defaults_to_one_second_of_requests() -> None:
    assert TokenBucket.full(rate=2.5, burst=0, now_s=0).burst == 3
    assert TokenBucket.full(rate=0.1, burst=0, now_s=0).burst == 1


def test_admission_keeps_a_bucket_per_tenant() -> None:
    clock = Clock()
    admission = Admission(QuotaBook(Quota(requests_per_second=1.0, burst=2)), clock=clock)
    admission.admit("a")
    admission.admit("a")
    with pytest.raises(RateLimited):
        admission.admit("a")
    admission.admit("b")  # another tenant has its own bucket
    clock.now += 1.0
    admission.admit("a")


def test_unlimited_admits_everything() -> None:
    admission = Admission(QuotaBook(Quota()))
    for _ in range(10_000):
        admission.admit("a")
    with admission.subscriber("a", "c"), admission.subscriber("a", "c"):
        pass


def test_streams_are_counted_while_open_and_refusals_take_nothing() -> None:
    admission = Admission(QuotaBook(Quota(subscribers=2, subscribers_per_conversation=1)))
    with admission.subscriber("t", "c1"):
        with pytest.raises(QuotaExceeded) as caught, admission.subscriber("t", "c1"):
            pass
        assert caught.value.quota == "subscribers_per_conversation"
        with admission.subscriber("t", "c2"):
            with pytest.raises(QuotaExceeded) as caught, admission.subscriber("t", "c3"):
                pass
            assert caught.value.quota == "subscribers"
        with admission.subscriber("t", "c3"):
            pass
    with admission.subscriber("t", "c1"), admission.subscriber("t", "c2"):
        pass


def test_the_file_overrides_defaults_field_by_field() -> None:
    default = Quota(conversations=5, bytes=1000)
    tenants = parse_quotas(
        '[tenants.acme]\nconversations = 1\nrequests_per_second = 2\n[tenants."a/b"]\n', default
    )
    assert tenants["acme"] == Quota(conversations=1, bytes=1000, requests_per_second=2.0)
    assert tenants["a/b"] == default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tenants.a]\nconversation = 1\n", "not a quota"),
        ("[tenants.a]\nconversations = -1\n", ">= 0"),
        ("[tenants.a]\nconversations = 1.5\n", ">= 0"),
        ("[tenants.a]\nconversations = true\n", ">= 0"),
        ("[tenants.a]\nconversations = 'ten'\n", ">= 0"),
        ("[tenant.a]\n", "unknown top-level"),
        ("tenants = 3\n", "table of tables"),
        ("[tenants]\na = 3\n", "must be a table"),
        ("[tenants.a\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(QuotaFileError, match=message):
        parse_quotas(text, Quota())


def test_the_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text("[tenants.a]\nconversations = 1\n")
    clock = Clock()
    book = QuotaBook(Quota(conversations=9), str(path), check_interval_s=1.0, clock=clock)
    assert book.of("a").conversations == 1 and book.of("b").conversations == 9
    path.write_text("[tenants.a]\nconversations = 2\n[tenants.b]\nsessions = 3\n")
    os.utime(path, ns=(1, 1))  # a new modification time whatever the clock's resolution
    assert book.of("a").conversations == 1  # not checked again within the interval
    clock.now += 1.0
    assert book.of("a").conversations == 2
    assert book.of("b") == Quota(conversations=9, sessions=3)
    # A broken edit keeps the last good quotas.
    path.write_text("[tenants.a\n")
    os.utime(path, ns=(2, 2))
    clock.now += 1.0
    assert book.of("a").conversations == 2
    path.unlink()
    clock.now += 1.0
    assert book.of("a").conversations == 2


def test_a_cluster_refuses_a_file_with_tenant_wide_quotas(tmp_path: Path) -> None:
    path = tmp_path / "quotas.toml"
    path.write_text("[tenants.a]\nconversations = 3\n[tenants.b]\nbytes = 9\nsessions = 1\n")
    with pytest.raises(QuotaFileError, match=r"tenants\.a\.conversations, tenants\.b\.bytes: not"):
        QuotaBook(Quota(), str(path), cluster=True)
    assert QuotaBook(Quota(), str(path)).of("b").bytes == 9  # one Redis keeps them
    # On reload such a file is refused too, and the last good quotas kept.
    path.write_text("[tenants.a]\nentries_per_conversation = 4\nconversations = 0\n")
    clock = Clock()
    book = QuotaBook(Quota(), str(path), check_interval_s=1.0, clock=clock, cluster=True)
    assert book.of("a") == Quota(entries_per_conversation=4)
    path.write_text("[tenants.a]\nentries_per_conversation = 5\nbytes = 100\n")
    os.utime(path, ns=(1, 1))
    clock.now += 1.0
    with structlog.testing.capture_logs() as logs:
        assert book.of("a") == Quota(entries_per_conversation=4)
    assert [e["log_level"] for e in logs] == ["error"]
    assert "tenants.a.bytes: not supported on a Redis Cluster" in logs[0]["error"]


def test_an_unreadable_file_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(QuotaFileError, match="cannot read"):
        QuotaBook(Quota(), str(tmp_path / "absent.toml"))
    (tmp_path / "bad.toml").write_text("[tenants.a]\nburst = -2\n")
    with pytest.raises(QuotaFileError, match=r"bad\.toml: tenants\.a\.burst"):
        QuotaBook(Quota(), str(tmp_path / "bad.toml"))
