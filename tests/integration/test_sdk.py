"""The SDK against a real Blackboard server (embedded mode, port 0)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import blackboard_client as bb
from blackboard_client import sync
from blackboard_server.app import RunningServer, serve
from blackboard_server.config import Settings

FAST = bb.RetryPolicy(attempts=8, initial_backoff=0.01, max_backoff=0.2)


def settings(**overrides: Any) -> Settings:
    return Settings(listen="127.0.0.1:0", uvloop=False).replace(**overrides)


@pytest.fixture
async def bb_server() -> AsyncIterator[RunningServer]:
    async with serve(settings(progress_interval_s=0.5)) as running:
        yield running


@pytest.fixture
async def client(bb_server: RunningServer) -> AsyncIterator[bb.Client]:
    async with bb.connect(bb_server.address, agent_id="tester", retry=FAST) as c:
        yield c


@pytest.fixture
async def conv(client: bb.Client) -> str:
    conversation = await client.create_conversation(f"t-{uuid.uuid4().hex[:12]}")
    return conversation.id


async def next_matching(
    stream: bb.Subscription, predicate: Callable[[bb.StreamItem], bool]
) -> list[bb.StreamItem]:
    """Items up to and including the first that satisfies `predicate`."""
    items: list[bb.StreamItem] = []
    async with asyncio.timeout(20):
        async for item in stream:
            items.append(item)
            if predicate(item):
                return items
    raise AssertionError("the stream ended")


def event_revisions(items: list[bb.StreamItem]) -> list[int]:
    return [e.revision for item in items if isinstance(item, bb.Events) for e in item.events]


# --- conversations -------------------------------------------------------------------


async def test_conversation_round_trip(client: bb.Client) -> None:
    named = await client.create_conversation(
        f"c-{uuid.uuid4().hex[:8]}", metadata={"team": "blue"}, idle_ttl_ms=60_000
    )
    assert named.metadata == {"team": "blue"} and named.idle_ttl_ms == 60_000
    picked = await client.create_conversation()
    assert picked.id

    fetched = await client.get_conversation(named.id)
    assert fetched.id == named.id and fetched.tenant == named.tenant

    page = await client.list_conversations(page_size=1)
    assert len(page.conversations) == 1 and page.next_page_token
    listed = {c.id async for c in client.iter_conversations(page_size=1)}
    assert {named.id, picked.id} <= listed

    with pytest.raises(bb.ConversationExists):
        await client.create_conversation(named.id)
    await client.delete_conversation(named.id)
    with pytest.raises(bb.ConversationNotFound):
        await client.get_conversation(named.id)


# --- reads and writes ------------------------------------------------------------------


async def test_put_and_get_json_text_and_bytes(client: bb.Client, conv: str) -> None:
    written = await client.put(conv, "tasks/1", json={"title": "write docs", "n": [1, 2]})
    assert (written.key, written.version, written.create_revision) == ("tasks/1", 1, 1)
    await client.put(conv, "notes/hello", "hi there")
    await client.put(conv, "blobs/1", b"\x00\x01", content_type="application/x-demo")

    entry = await client.get(conv, "tasks/1")
    assert entry.json() == {"title": "write docs", "n": [1, 2]}
    assert entry.content_type == "application/json"
    assert entry.mod_revision == written.revision
    assert entry.provenance.agent_id == "tester"
    assert entry.provenance.request_id  # the SDK made one up
    assert (await client.get(conv, "notes/hello")).text() == "hi there"
    blob = await client.get(conv, "blobs/1")
    assert (blob.data, blob.content_type) == (b"\x00\x01", "application/x-demo")


async def test_get_at_a_past_revision(client: bb.Client, conv: str) -> None:
    first = await client.put(conv, "k", json=1)
    await client.put(conv, "k", json=2)
    assert (await client.get(conv, "k")).json() == 2
    assert (await client.get(conv, "k", revision=first.revision)).json() == 1


async def test_range_pages_and_iter_range_reads_one_revision(client: bb.Client, conv: str) -> None:
    for i in range(10):
        await client.put(conv, f"items/{i:02d}", json=i)
    await client.put(conv, "other/x", b"")

    page = await client.range(conv, "items/", page_size=4, keys_only=True)
    assert [e.key for e in page.entries] == [f"items/{i:02d}" for i in range(4)]
    assert page.entries[0].data == b"" and page.next_page_token

    seen = []
    async for entry in client.iter_range(conv, "items/", page_size=3):
        seen.append(entry.key)
        if len(seen) == 1:  # written after the first page: not at the pinned revision
            await client.put(conv, "items/05a", json="late")
    assert seen == [f"items/{i:02d}" for i in range(10)]


async def test_history_and_iter_history(client: bb.Client, conv: str) -> None:
    await client.put(conv, "a", json=1)
    await client.put(conv, "b", json=1)
    await client.put(conv, "a", json=2)
    await client.delete(conv, "a")

    page = await client.history(conv, key="a", with_previous=True)
    assert [e.revision for e in page.events] == [1, 3, 4]
    kinds = [c.type for e in page.events for c in e.changes]
    assert kinds == [bb.ChangeType.PUT, bb.ChangeType.PUT, bb.ChangeType.DELETE]
    previous = page.events[1].changes[0].previous
    assert previous is not None and previous.json() == 1

    revisions = [e.revision async for e in client.iter_history(conv, page_size=1)]
    assert revisions == [1, 2, 3, 4]
    with pytest.raises(TypeError):
        await client.history(conv, key="a", prefix="a")


async def test_delete_append_and_patch(client: bb.Client, conv: str) -> None:
    await client.put(conv, "doomed", b"x")
    deleted = await client.delete(conv, "doomed", expect=bb.Expect.version(1))
    assert deleted.key == "doomed"
    with pytest.raises(bb.KeyNotFound):
        await client.get(conv, "doomed")

    first = await client.append(conv, "log", json={"msg": "one"})
    second = await client.append(conv, "log", "two")
    assert first.key.startswith("log/") and first.key < second.key
    messages = [e async for e in client.iter_range(conv, "log/")]
    assert [m.key for m in messages] == [first.key, second.key]

    patched = await client.patch(conv, "state", {"phase": "plan", "owner": "a"})
    assert patched.json() == {"phase": "plan", "owner": "a"}
    patched = await client.patch(conv, "state", b'{"owner": null}', expect=bb.Expect.version(1))
    assert patched.json() == {"phase": "plan"} and patched.result.version == 2
    await client.put(conv, "raw", b"\xff")
    with pytest.raises(bb.NotJson):
        await client.patch(conv, "raw", {"a": 1})


async def test_txn_takes_one_branch_in_one_revision(client: bb.Client, conv: str) -> None:
    won = await client.txn(
        conv,
        [bb.Compare.absent("lock")],
        [bb.TxnOp.put("lock", json="me"), bb.TxnOp.put("owner", "me")],
        [bb.TxnOp.put("lost", b"1")],
    )
    assert won.succeeded and [r.revision for r in won.results] == [won.revision] * 2

    lost = await client.txn(
        conv,
        [bb.Compare.absent("lock"), bb.Compare.value("owner", "==", "me")],
        [bb.TxnOp.put("lock", json="you")],
        [bb.TxnOp.put("lost", b"1"), bb.TxnOp.delete("owner")],
    )
    assert not lost.succeeded and lost.revision == won.revision + 1
    assert (await client.get(conv, "lock")).json() == "me"
    with pytest.raises(bb.KeyNotFound):
        await client.get(conv, "owner")

    held = await client.txn(
        conv, [bb.Compare.version("lock", ">", 0), bb.Compare.mod_revision("lock", "<", 100)]
    )
    assert held.succeeded and held.results == ()


async def test_a_retried_request_id_writes_once(client: bb.Client, conv: str) -> None:
    first = await client.put(conv, "k", json=1, request_id="req-1")
    again = await client.put(conv, "k", json=1, request_id="req-1")
    assert again.replayed and again.revision == first.revision
    assert (await client.get(conv, "k")).version == 1
    with pytest.raises(bb.RequestIdReused):
        await client.put(conv, "k", json=2, request_id="req-1")


# --- typed errors --------------------------------------------------------------------------


async def test_condition_failed_reports_the_current_version(client: bb.Client, conv: str) -> None:
    await client.put(conv, "claims/1", json="a", expect=bb.Expect.absent())
    second = await client.put(conv, "claims/1", json="b", expect=bb.Expect.version(1))
    with pytest.raises(bb.ConditionFailed) as caught:
        await client.put(conv, "claims/1", json="c", expect=bb.Expect.absent())
    error = caught.value
    assert (error.key, error.current_version) == ("claims/1", 2)
    assert error.current_mod_revision == second.revision
    with pytest.raises(bb.ConditionFailed):
        await client.delete(conv, "claims/1", expect=bb.Expect.mod_revision(1))
    assert (await client.get(conv, "claims/1")).json() == "b"


async def test_not_found_errors(client: bb.Client, conv: str) -> None:
    with pytest.raises(bb.KeyNotFound) as missing_key:
        await client.get(conv, "nothing/here")
    assert missing_key.value.key == "nothing/here"
    with pytest.raises(bb.ConversationNotFound):
        await client.put("no-such-conversation", "k", b"v")
    with pytest.raises(bb.NotFound):
        await client.range("no-such-conversation")


async def test_invalid_argument_names_the_field(client: bb.Client, conv: str) -> None:
    with pytest.raises(bb.InvalidArgument) as caught:
        await client.put(conv, "bad key", b"v")
    assert caught.value.status == "INVALID_ARGUMENT"
    assert [v.field for v in caught.value.violations] == ["key"]


async def test_limit_exceeded_names_the_limit() -> None:
    async with (
        serve(settings(max_value_bytes=1000)) as small,
        bb.connect(small.address, retry=FAST) as client,
    ):
        await client.create_conversation("c")
        with pytest.raises(bb.LimitExceeded) as caught:
            await client.put("c", "k", b"x" * 1001)
    assert isinstance(caught.value, bb.ResourceExhausted)
    assert (caught.value.limit, caught.value.maximum) == ("max_value_bytes", 1000)


# --- the change stream ----------------------------------------------------------------------


async def test_subscribe_snapshot_then_synced_then_events(client: bb.Client, conv: str) -> None:
    async with (
        serve(settings(snapshot_chunk=2)) as small_chunks,
        bb.connect(small_chunks.address, retry=FAST) as chunked,
    ):
        await chunked.create_conversation(conv)
        for i in range(5):
            await chunked.put(conv, f"tasks/{i}", json=i)
        await chunked.put(conv, "elsewhere", b"")
        async with chunked.subscribe(conv, "tasks/") as stream:
            start = await next_matching(stream, lambda item: isinstance(item, bb.Synced))
            await chunked.put(conv, "elsewhere", b"2")
            await chunked.put(conv, "tasks/9", json=9)
            after = await next_matching(stream, lambda item: isinstance(item, bb.Events))

    snapshots = [item for item in start if isinstance(item, bb.Snapshot)]
    assert len(snapshots) == 3 and {s.revision for s in snapshots} == {6}
    assert [e.key for s in snapshots for e in s.entries] == [f"tasks/{i}" for i in range(5)]
    assert start[-1] == bb.Synced(6)
    assert event_revisions(after) == [8]
    assert after[-1].events[0].changes[0].entry.json() == 9  # type: ignore[union-attr]


async def test_subscribe_from_a_revision(client: bb.Client, conv: str) -> None:
    for i in range(4):
        await client.put(conv, "k", json=i)
    async with client.subscribe(conv, start_revision=2, with_previous=True) as stream:
        items = await next_matching(stream, lambda i: isinstance(i, bb.Events) and i.revision == 4)
    assert event_revisions(items) == [2, 3, 4]
    first = items[0]
    assert isinstance(first, bb.Events)
    previous = first.events[0].changes[0].previous
    assert previous is not None and previous.json() == 0


async def test_a_compacted_start_gets_a_reset_and_a_fresh_snapshot() -> None:
    async with (
        serve(settings(retention=3)) as short_memory,
        bb.connect(short_memory.address, retry=FAST) as client,
    ):
        await client.create_conversation("c")
        for i in range(10):
            await client.put("c", f"k{i % 2}", json=i)
        async with client.subscribe("c", start_revision=1) as stream:
            items = await next_matching(stream, lambda item: isinstance(item, bb.Synced))
        with pytest.raises(bb.RevisionCompacted):
            async with client.subscribe("c", start_revision=1, no_reset=True) as strict:
                await next_matching(strict, lambda item: True)
    assert isinstance(items[0], bb.Reset) and items[0].requested_revision == 1
    assert items[-1] == bb.Synced(10)
    entries = {
        e.key: e.json() for item in items if isinstance(item, bb.Snapshot) for e in item.entries
    }
    assert entries == {"k0": 8, "k1": 9}


class BreakableProxy:
    """A TCP proxy in front of the server whose connections a test can cut."""

    def __init__(self, upstream: str) -> None:
        self.upstream_host, _, port = upstream.rpartition(":")
        self.upstream_port = int(port)
        self.connections = 0
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> BreakableProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Resets every open connection, as a dying network or replica would."""
        for writer in self._open:
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        self._open |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def events_reaching(revision: int) -> Callable[[bb.StreamItem], bool]:
    return lambda item: isinstance(item, bb.Events) and item.revision >= revision


async def test_a_subscriber_resumes_after_its_connection_is_cut(
    bb_server: RunningServer, client: bb.Client, conv: str
) -> None:
    await client.put(conv, "tasks/0", json=0)
    expected: list[tuple[int, str]] = []
    async with (
        BreakableProxy(bb_server.address) as proxy,
        bb.connect(proxy.address, retry=FAST) as through_proxy,
        through_proxy.subscribe(conv, "tasks/") as stream,
    ):
        delivered = await next_matching(stream, lambda item: isinstance(item, bb.Synced))
        for n in (10, 20, 30):
            before = await client.put(conv, f"tasks/{n}", json=n)
            delivered += await next_matching(stream, events_reaching(before.revision))
            proxy.cut()
            await client.put(conv, "unwatched", json=n)  # filtered out, still a revision
            after = await client.put(conv, f"tasks/{n + 1}", json=n + 1)
            delivered += await next_matching(stream, events_reaching(after.revision))
            expected += [(before.revision, f"tasks/{n}"), (after.revision, f"tasks/{n + 1}")]
        assert proxy.connections >= 4  # the first stream and one after each cut
        assert stream.revision == after.revision

    assert [type(i).__name__ for i in delivered[:2]] == ["Snapshot", "Synced"]
    puts = [
        (e.revision, c.key)
        for item in delivered
        if isinstance(item, bb.Events)
        for e in item.events
        for c in e.changes
    ]
    assert puts == expected


async def test_a_mirror_keeps_a_local_copy(client: bb.Client, conv: str) -> None:
    await client.put(conv, "tasks/1", json="open")
    async with client.mirror(conv, "tasks/") as tasks:
        assert dict(tasks.items()).keys() == {"tasks/1"}
        await client.put(conv, "tasks/2", json="open")
        await client.put(conv, "tasks/1", json="done")
        done = await client.delete(conv, "tasks/2")
        await tasks.wait_until(lambda view: view.revision >= done.revision, timeout=10)
        assert {k: e.json() for k, e in tasks.items()} == {"tasks/1": "done"}


# --- the sync wrapper ---------------------------------------------------------------------


def a_plain_script(address: str, conversation_id: str) -> dict[str, Any]:
    """Ordinary blocking code: no event loop in this thread."""
    with sync.connect(address, agent_id="script") as client:
        client.create_conversation(conversation_id)
        written = client.put(conversation_id, "notes/1", json={"text": "hi"})
        client.append(conversation_id, "notes", "appended")
        entry = client.get(conversation_id, "notes/1")
        keys = [e.key for e in client.iter_range(conversation_id, "notes/", page_size=1)]
        assert [e.key for e in list(client.iter_range(conversation_id, "notes/"))] == keys
        try:
            client.put(conversation_id, "notes/1", b"x", expect=bb.Expect.absent())
            conflict = None
        except bb.ConditionFailed as error:
            conflict = error.current_version
        with client.subscribe(conversation_id, "notes/") as stream:
            items = []
            for item in stream:
                items.append(item)
                if isinstance(item, bb.Synced):
                    break
        with client.mirror(conversation_id) as mirror:
            mirrored = sorted(mirror)
            contains = "notes/1" in mirror
            size = len(mirror)
    return {
        "revision": written.revision,
        "json": entry.json(),
        "agent": entry.provenance.agent_id,
        "keys": keys,
        "conflict": conflict,
        "kinds": [type(i).__name__ for i in items],
        "mirrored": mirrored,
        "contains": contains,
        "size": size,
    }


async def test_the_sync_wrapper_works_from_plain_code(bb_server: RunningServer) -> None:
    conversation_id = f"s-{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(a_plain_script, bb_server.address, conversation_id)
    assert result["revision"] == 1
    assert result["json"] == {"text": "hi"} and result["agent"] == "script"
    assert result["keys"] == ["notes/00000000000000000002", "notes/1"]
    assert result["conflict"] == 1
    assert result["kinds"] == ["Snapshot", "Synced"]
    assert result["mirrored"] == result["keys"]
    assert result["contains"] and result["size"] == 2


# --- the demo ------------------------------------------------------------------------------


async def test_the_demo_runs_to_completion() -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "blackboard_client.demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        output, _ = await demo.communicate()
    assert demo.returncode == 0, output.decode()
    assert b"all tasks done" in output
