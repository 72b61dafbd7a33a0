"""One subscriber reads a message a second while 100 others keep up.

The server keeps no queue per subscriber: a stream is a cursor into the
conversation's shared feed, so what a slow reader can pin on the server is
the one message being written to it plus gRPC's send buffer, and once it is
`subscriber_max_lag` revisions behind (or a write to it stalls for
`subscriber_write_timeout_s`) it is ended with RESOURCE_EXHAUSTED and the
revision to resume from. The test shows, in one run and against the same
server process:

- the slow stream ends RESOURCE_EXHAUSTED (SLOW_SUBSCRIBER) with a resume
  point no later than what it received, and it received revisions without gaps;
- the server's resident memory grows by less than PER_SUBSCRIBER_BOUND while
  the slow one is attached;
- the fast subscribers' p99 lag, counted in revisions behind the newest
  acknowledged write when each event arrives, at most doubles compared with
  the phase before the slow one came (counts, not timings: the machine may
  be loaded);
- the checker finds nothing wrong with the writes or any fast subscriber.
"""

from __future__ import annotations

import asyncio
import bisect
from pathlib import Path

import grpc
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard.v1 import blackboard_pb2_grpc as pb_grpc
from blackboard_client import connect
from tests.checker import History, check_file
from tests.checker.workload import Counts, Recorded, Subscriber, write_loop
from tests.faults.load import FAILOVER
from tests.integration.test_api import details
from tests.servers import RedisServer, ServerProcess

pytestmark = pytest.mark.slow
FAST = 100
MAX_LAG = 300
BATCH = 100
VALUE_BYTES = 1024
PER_SUBSCRIBER_BOUND = 8 << 20  # one batch (~100 KiB) + gRPC buffers, with room for noise
PHASE_S = 8.0
WRITE_TIMEOUT_S = 3.0
SLOW_PHASE_S = 12.0
# Without BDP probing the slow client's receive window stays at gRPC's 64 KiB, so
# the server feels its slowness after ~60 events instead of after megabytes.
SMALL_WINDOW = (("grpc.http2.bdp_probe", 0),)


def p99(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0


class Heads:
    """The newest acknowledged revision at any moment of the run, from the history."""

    def __init__(self, history: History) -> None:
        op_f = {r["op"]: r["f"] for r in history.records if r["t"] == "invoke"}
        acked = sorted(
            (r["at"], r["revision"])
            for r in history.records
            if r["t"] == "ok" and op_f[r["op"]] != "get"
        )
        self._times = [t for t, _ in acked]
        self._newest: list[int] = []
        for _, revision in acked:
            self._newest.append(max(revision, self._newest[-1] if self._newest else 0))

    def at(self, when: float) -> int:
        i = bisect.bisect_right(self._times, when)
        return self._newest[i - 1] if i else 0


async def read_slowly(
    stub: pb_grpc.BlackboardStub, conv: str, start: int, hurry: asyncio.Event
) -> tuple[list[int], grpc.aio.AioRpcError]:
    """Reads a message a second until `hurry`, then the rest at once.

    The status comes after the messages already in the client's receive
    window, so it is read quickly once the server has ended the stream.
    """
    call = stub.Subscribe(pb.SubscribeRequest(conversation_id=conv, start_revision=start))
    received: list[int] = []
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            received += [e.revision for e in message.events.events]
            if not hurry.is_set():
                await asyncio.sleep(1.0)
    except grpc.aio.AioRpcError as error:
        return received, error
    raise AssertionError("the slow stream ended without an error")


@pytest.mark.timeout(150)
async def test_a_slow_subscriber_is_cut_off_without_hurting_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    server = ServerProcess(
        tmp_path / "server",
        "--redis-url",
        redis_server.url,
        "--durability",
        "fast",
        "--subscriber-max-lag",
        str(MAX_LAG),
        "--subscriber-batch",
        str(BATCH),
        "--subscriber-write-timeout-s",
        str(WRITE_TIMEOUT_S),
        "--feed-buffer",
        "512",
        "--log-level",
        "warning",
    ).start()
    history = History(tmp_path / "history.jsonl")
    counts = Counts()
    pad = "x" * VALUE_BYTES
    try:
        async with (
            connect(server.address, retry=FAILOVER) as writer_client,
            grpc.aio.insecure_channel(server.address, options=SMALL_WINDOW) as raw,
        ):
            conv = "slow-" + tmp_path.name[-8:]
            await writer_client.create_conversation(conv)
            readers = [connect(server.address, retry=FAILOVER) for _ in range(10)]
            fast = [Subscriber(readers[i % 10], history, f"fast{i}", conv) for i in range(FAST)]
            target: list[float] = [float("inf")]
            tasks = [asyncio.create_task(s.run(lambda rev: rev >= target[0])) for s in fast]
            stop = asyncio.Event()
            writers = [
                asyncio.create_task(
                    write_loop(
                        Recorded(writer_client, history, f"w{i}", counts, pad=pad),
                        conv,
                        [f"k{j}" for j in range(8)],
                        stop,
                        interval_s=1 / 25,
                    )
                )
                for i in range(2)
            ]
            loop = asyncio.get_running_loop()
            await asyncio.sleep(PHASE_S)
            rss_alone = server.rss_bytes()
            slow_from = loop.time()
            head = Heads(history).at(slow_from)
            hurry = asyncio.Event()
            stub = pb_grpc.BlackboardStub(raw)
            slow = asyncio.create_task(read_slowly(stub, conv, head + 1, hurry))
            rss_peak = rss_alone
            # Long enough for the server to end the stream (a full receive window,
            # then the write timeout or the lag limit, whichever comes first).
            while loop.time() - slow_from < SLOW_PHASE_S:
                rss_peak = max(rss_peak, server.rss_bytes())
                await asyncio.sleep(0.25)
            slow_until = loop.time()
            hurry.set()
            stop.set()
            await asyncio.gather(*writers)
            received, error = await slow
            heads = Heads(history)
            target[0] = heads.at(loop.time())
            async with asyncio.timeout(60):
                while not all(s.revision >= target[0] for s in fast):
                    await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for reader in readers:
                await reader.close()
    finally:
        history.close()
        server.stop()

    lags: dict[bool, list[int]] = {False: [], True: []}
    for r in history.records:
        if r["t"] == "deliver" and r["at"] < slow_until:
            lags[r["at"] >= slow_from].append(max(0, heads.at(r["at"]) - r["revision"]))
    before, during = p99(lags[False]), p99(lags[True])
    grown = rss_peak - rss_alone
    resume = int(details(error)[0].metadata["last_revision"])
    print(
        f"\nslow stream: {len(received)} events, ended {error.code().name} resume after {resume}; "
        f"server RSS {rss_alone >> 20} MiB -> peak {rss_peak >> 20} MiB (+{grown >> 10} KiB); "
        f"fast p99 lag {before} -> {during} revisions "
        f"({len(lags[False])} / {len(lags[True])} deliveries); {counts.ok} writes"
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details(error)[0].reason == "SLOW_SUBSCRIBER"
    assert received == list(range(head + 1, head + 1 + len(received)))
    assert head <= resume <= received[-1]
    assert grown < PER_SUBSCRIBER_BOUND
    assert lags[False] and lags[True]
    assert during <= 2 * max(before, 2)
    verdict = check_file(tmp_path / "history.jsonl")
    assert verdict.ok, verdict.summary()
    assert counts.unknown == 0
