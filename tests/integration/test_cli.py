"""The real `bb` binary against a real server process: output, and exit codes.

One embedded server for the module, with pages of 3 so that every listing
crosses pages; each test has its own conversation. Concurrent runs are
synchronised on what `bb` prints (a ready line, the watch's synced marker),
never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess, free_port

pytestmark = pytest.mark.timeout(90)

BIN = Path(sys.executable).parent
BB = str(BIN / "bb")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if not Path(BB).exists():
        raise RuntimeError(f"{BB} is missing: pip install -e . installs the bb script")
    process = ServerProcess(tmp_path_factory.mktemp("cli-server"), "--default-page-size", "3")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def env(server: ServerProcess) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BB_")}
    return {**clean, "BB_TARGET": server.address, "PATH": f"{BIN}:{clean.get('PATH', '')}"}


@pytest.fixture
def conv(env: dict[str, str]) -> str:
    conversation = f"cli-{uuid.uuid4().hex[:12]}"
    run(env, "conv", "create", conversation)
    return conversation


def bb(
    env: dict[str, str], *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [BB, *args], env=env, input=input, capture_output=True, timeout=30, check=False
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def run(env: dict[str, str], *args: str, input: bytes | None = None) -> str:
    """stdout of a call that must succeed."""
    done = bb(env, *args, input=input)
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    assert done.stderr == ""
    return done.stdout


def run_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(run(env, "-o", "json", *args))


def fails(env: dict[str, str], code: int, *args: str) -> str:
    """stderr of a call that must fail with exit `code`: one `bb: ...` line."""
    done = bb(env, *args)
    assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("bb: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [BB, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


# --- conversations, health, usage ------------------------------------------------------


def test_conv_create_get_list_rm(env: dict[str, str]) -> None:
    conversation = f"cli-{uuid.uuid4().hex[:12]}"
    assert run(env, "conv", "create", conversation, "--meta", "team=a") == f"{conversation}\n"
    picked = run_json(env, "conv", "create")["id"]
    assert picked and picked != conversation
    assert "CONVERSATION_EXISTS" in fails(env, 4, "conv", "create", conversation)

    doc = run_json(env, "conv", "get", conversation)
    assert (doc["id"], doc["metadata"], doc["revision"]) == (conversation, {"team": "a"}, 0)
    text = run(env, "conv", "get", conversation)
    assert "team=a" in text and conversation in text

    listed = run_json(env, "conv", "list")["conversations"]  # pages of 3: several pages
    assert {conversation, picked} <= {c["id"] for c in listed}
    assert any(line.split()[0] == conversation for line in run(env, "conv", "list").splitlines())

    assert run(env, "conv", "rm", conversation) == f"deleted {conversation}\n"
    assert run_json(env, "conv", "rm", picked) == {"deleted": picked}
    assert "CONVERSATION_NOT_FOUND" in fails(env, 3, "conv", "get", conversation)
    fails(env, 3, "conv", "rm", conversation)


def test_health(env: dict[str, str], server: ServerProcess) -> None:
    assert run(env, "health") == "SERVING\n"
    doc = run_json(env, "health", "--service", "blackboard.v1.Blackboard")
    assert doc == {
        "target": server.address,
        "service": "blackboard.v1.Blackboard",
        "status": "SERVING",
    }
    fails(env, 3, "health", "--service", "no.such.Service")
    closed = f"127.0.0.1:{free_port()}"
    assert "UNAVAILABLE" in fails(env, 6, "--target", closed, "health")


def test_unavailable_against_a_closed_port(env: dict[str, str]) -> None:
    closed = {**env, "BB_TARGET": f"127.0.0.1:{free_port()}"}
    assert "UNAVAILABLE" in fails(closed, 6, "get", "c", "k")  # after the SDK's retries


def test_usage_errors_exit_2(env: dict[str, str], conv: str) -> None:
    assert bb(env).returncode == 2
    fails(env, 2, "put", conv, "k")  # no value
    fails(env, 2, "put", conv, "k", "v", "--json", "1")  # two values
    fails(env, 2, "put", conv, "k", "--json", "{nope")
    fails(env, 2, "conv", "create", "--meta", "novalue")
    fails(env, 2, "put", conv, "k", "v", "--fence", "lock:x")
    fails(env, 2, "lock", conv, "L")  # no CMD
    assert "INVALID_FIELD" in fails(env, 2, "put", conv, "bad key", "v")  # the server says so
    fails(env, 2, "no-such-command")


def test_help_documents_the_exit_codes(env: dict[str, str]) -> None:
    text = run(env, "--help")
    for line in ("3    not found", "4    conflict", "6    unavailable", "7    bb lock"):
        assert line in text
    assert "--" in run(env, "lock", "--help")


# --- entries -------------------------------------------------------------------------


def test_put_get_del_in_both_formats(env: dict[str, str], conv: str, tmp_path: Path) -> None:
    assert run(env, "put", conv, "notes/1", "hello") == "notes/1 version 1 at revision 1\n"
    written = run_json(env, "put", conv, "tasks/1", "--json", '{"title": "docs"}')
    assert written == {
        "revision": 2,
        "key": "tasks/1",
        "version": 1,
        "create_revision": 2,
        "replayed": False,
    }
    (tmp_path / "in.txt").write_text("from a file\n")
    run(env, "put", conv, "notes/2", "--file", str(tmp_path / "in.txt"))
    run(env, "put", conv, "blob", "-", input=b"\x00\x01\xff")

    assert run(env, "get", conv, "notes/1") == "hello\n"
    assert run(env, "get", conv, "tasks/1") == '{"title":"docs"}\n'
    assert run(env, "get", conv, "notes/2") == "from a file\n\n"
    assert run(env, "get", conv, "blob") == "base64:AAH/\n"
    entry = run_json(env, "get", conv, "tasks/1")
    assert entry["encoding"] == "json" and entry["value"] == {"title": "docs"}
    assert (entry["version"], entry["mod_revision"]) == (1, 2)
    blob = run_json(env, "get", conv, "blob")
    assert (blob["encoding"], blob["value"]) == ("base64", "AAH/")

    # Optimistic concurrency: conflicts exit 4 and change nothing.
    assert "CONDITION_FAILED" in fails(env, 4, "put", conv, "notes/1", "x", "--expect-absent")
    fails(env, 4, "put", conv, "notes/1", "x", "--expect-version", "7")
    run(env, "put", conv, "notes/1", "again", "--expect-version", "1")
    assert run(env, "get", conv, "notes/1", "--revision", "1") == "hello\n"
    assert run(env, "get", conv, "notes/1") == "again\n"
    fails(env, 4, "del", conv, "notes/1", "--expect-version", "1")

    assert run(env, "del", conv, "notes/1", "--expect-version", "2").startswith("deleted notes/1")
    assert "KEY_NOT_FOUND" in fails(env, 3, "get", conv, "notes/1")
    fails(env, 3, "del", conv, "notes/1")
    assert run_json(env, "del", conv, "notes/2")["key"] == "notes/2"
    assert "CONVERSATION_NOT_FOUND" in fails(env, 3, "get", f"{conv}-gone", "k")

    run(env, "put", conv, "short", "lived", "--ttl", "600")
    assert "expires" in run_json(env, "get", conv, "short")


def test_append_and_patch(env: dict[str, str], conv: str) -> None:
    first = run(env, "append", conv, "chat", "hi").strip()
    second = run_json(env, "append", conv, "chat", "--json", '{"text": "yo"}')["key"]
    assert first.startswith("chat/") and second > first
    assert run(env, "get", conv, first) == "hi\n"

    run(env, "put", conv, "state", "--json", '{"a": 1, "b": 2}')
    assert run(env, "patch", conv, "state", '{"b": null, "c": 3}') == '{"a":1,"c":3}\n'
    patched = run_json(env, "patch", conv, "state", '{"d": true}', "--expect-version", "2")
    assert patched["value"] == {"a": 1, "c": 3, "d": True} and patched["version"] == 3
    fails(env, 4, "patch", conv, "state", "{}", "--expect-version", "1")
    assert "NOT_JSON" in fails(env, 1, "patch", conv, first, '{"x": 1}')


def test_txn_spec(env: dict[str, str], conv: str, tmp_path: Path) -> None:
    spec = tmp_path / "claim.json"
    spec.write_text(
        json.dumps(
            {
                "compare": [{"key": "claims/1", "target": "version", "op": "==", "value": 0}],
                "success": [
                    {"put": "claims/1", "json": "worker-1"},
                    {"put": "log/1", "value": "claimed", "ttl": 600},
                ],
                "failure": [{"put": "lost/1", "value": "too late"}],
            }
        )
    )
    text = run(env, "txn", conv, "--file", str(spec))
    assert text.startswith("success: revision 1\n") and "claims/1" in text
    assert run(env, "get", conv, "claims/1") == '"worker-1"\n'

    again = run_json(env, "txn", conv, "--file", str(spec))  # the compare fails now
    assert again["succeeded"] is False and again["revision"] == 2
    assert [r["key"] for r in again["results"]] == ["lost/1"]

    value_compare = {
        "compare": [{"key": "claims/1", "target": "value", "op": "==", "json": "worker-1"}],
        "success": [{"delete": "lost/1"}],
    }
    piped = json.dumps(value_compare).encode()
    assert run(env, "txn", conv, "--file", "-", input=piped).startswith("success: revision 3")
    fails(env, 3, "get", conv, "lost/1")

    spec.write_text(json.dumps({"compare": [{"key": "k", "op": "~"}]}))
    fails(env, 2, "txn", conv, "--file", str(spec))
    spec.write_text(json.dumps({"success": [{"put": "k"}]}))
    fails(env, 2, "txn", conv, "--file", str(spec))


def test_range_crosses_pages_at_one_revision(env: dict[str, str], conv: str) -> None:
    for i in range(7):
        run(env, "put", conv, f"tasks/{i}", f"task {i}")
    run(env, "put", conv, "other", "x")
    doc = run_json(env, "range", conv, "tasks/")  # pages of 3: three pages
    assert doc["revision"] == 8
    assert [e["key"] for e in doc["entries"]] == [f"tasks/{i}" for i in range(7)]
    assert doc["entries"][3]["value"] == "task 3"

    lines = run(env, "range", conv, "tasks/").splitlines()
    assert lines[0].split() == ["KEY", "VERSION", "MOD_REVISION", "VALUE"]
    assert lines[1].split() == ["tasks/0", "1", "1", "task", "0"]
    assert len(lines) == 8

    past = run_json(env, "range", conv, "--revision", "2")["entries"]
    assert [e["key"] for e in past] == ["tasks/0", "tasks/1"]
    assert len(run_json(env, "range", conv)["entries"]) == 8
    assert run(env, "range", conv, "nothing/") == ""


def test_history(env: dict[str, str], conv: str) -> None:
    for i in range(4):
        run(env, "put", conv, "tasks/1", f"v{i}")
        run(env, "put", conv, f"notes/{i}", "n")
    events = run_json(env, "history", conv, "--key", "tasks/1")["events"]
    assert [e["revision"] for e in events] == [1, 3, 5, 7]
    assert events[-1]["changes"] == [
        {
            "type": "put",
            "key": "tasks/1",
            "version": 4,
            "content_type": "text/plain; charset=utf-8",
            "encoding": "text",
            "value": "v3",
        }
    ]
    ranged = run_json(env, "history", conv, "--prefix", "notes/", "--from", "3", "--to", "6")
    assert [e["revision"] for e in ranged["events"]] == [4, 6]
    lines = run(env, "history", conv, "--key", "tasks/1", "--from", "5").splitlines()
    assert lines == ["5 put tasks/1 v3 v2 agent=-", "7 put tasks/1 v4 v3 agent=-"]
    assert len(run_json(env, "history", conv)["events"]) == 8


# --- the change stream ----------------------------------------------------------------


def test_watch_count_sees_concurrent_writes(env: dict[str, str], conv: str) -> None:
    run(env, "put", conv, "tasks/0", "before")
    watch = start(env, "-o", "json", "watch", conv, "tasks/", "--count", "3")
    assert watch.stdout is not None
    synced = json.loads(watch.stdout.readline())
    assert synced == {"type": "synced", "revision": 1}
    run(env, "put", conv, "tasks/1", "a")
    run(env, "put", conv, "elsewhere", "not watched")
    run(env, "put", conv, "tasks/2", "--json", "2")
    run(env, "del", conv, "tasks/0")
    code, out, err = finish(watch)
    assert (code, err) == (0, "")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["revision"]) for e in events] == [
        ("event", 2),
        ("event", 4),
        ("event", 5),
    ]
    assert [c["type"] for e in events for c in e["changes"]] == ["put", "put", "delete"]
    assert events[1]["changes"][0]["value"] == 2


def test_watch_from_a_revision_in_text_with_coordination_events(
    env: dict[str, str], conv: str
) -> None:
    run(env, "put", conv, "a", "1")
    run(env, "--agent-id", "runner", "lock", conv, "L", "--", "true")
    code, out, err = finish(start(env, "watch", conv, "--from", "1", "--count", "5"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "1 put a v1 1 agent=-"
    kinds = [line.split()[1] for line in lines[1:]]
    assert kinds == ["agent_joined", "lock_acquired", "lock_released", "agent_left"]
    assert "agent=runner" in lines[2] and lines[2].split()[2] == "L"


def test_watch_exits_130_on_sigint(env: dict[str, str], conv: str) -> None:
    watch = start(env, "-o", "json", "watch", conv, "--snapshot")
    assert watch.stdout is not None
    assert json.loads(watch.stdout.readline())["type"] == "synced"
    watch.send_signal(signal.SIGINT)
    code, out, err = finish(watch)
    assert (code, out, err) == (130, "", "")


# --- locks, elections, presence -------------------------------------------------------

ECHO_LOCK = (
    'echo "$BB_LOCK_TOKEN $BB_LOCK_NAME $BB_CONVERSATION $BB_SESSION_ID"; '
    'bb -o json holder "$BB_CONVERSATION" "$BB_LOCK_NAME"; '
    'bb put "$BB_CONVERSATION" fenced yes --fence "$BB_FENCE" >/dev/null || exit 9; '
    "exit $0"
)


@pytest.mark.parametrize("status", [0, 5])
def test_lock_runs_cmd_with_the_token_then_releases(
    env: dict[str, str], conv: str, status: int
) -> None:
    done = bb(env, "lock", conv, "jobs/1", "--", "sh", "-c", ECHO_LOCK, str(status))
    assert (done.returncode, done.stderr) == (status, "")
    first, holder = done.stdout.splitlines()
    token, name, conversation, session = first.split()
    assert (name, conversation) == ("jobs/1", conv)
    assert json.loads(holder) == {
        "name": "jobs/1",
        "agent_id": "",
        "session_id": session,
        "token": int(token),
    }
    # Released: nobody holds it, and its token no longer fences a write.
    assert "NO_HOLDER" in fails(env, 3, "holder", conv, "jobs/1")
    assert "FENCED" in fails(env, 4, "put", conv, "k", "v", "--fence", f"lock:jobs/1:{token}")
    events = run_json(env, "history", conv)["events"]
    kinds = [e["coordination"]["kind"] for e in events if e["coordination"]]
    assert kinds == ["agent_joined", "lock_acquired", "lock_released", "agent_left"]


def test_lock_held_is_a_conflict_and_agents_lists_the_holder(
    env: dict[str, str], conv: str
) -> None:
    holder = start(
        env, "--agent-id", "w1", "lock", conv, "L", "--", "sh", "-c", "echo ready; read x"
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "ready\n"

    assert "LOCK_HELD" in fails(env, 4, "lock", conv, "L", "--", "true")
    assert "WAIT_EXPIRED" in fails(env, 4, "lock", conv, "L", "--wait", "0.2", "--", "true")
    sessions = run_json(env, "agents", conv)["sessions"]
    assert [s["agent_id"] for s in sessions] == ["w1"] and sessions[0]["ttl_ms"] == 10000
    assert run(env, "agents", conv).splitlines()[1].split()[0] == "w1"
    assert run(env, "holder", conv, "L").splitlines()[1].split()[:2] == ["L", "w1"]

    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert finish(holder) == (0, "", "")
    assert run_json(env, "agents", conv) == {"sessions": []}
    run(env, "lock", conv, "L", "--", "true")


def test_lock_lost_while_cmd_runs_stops_cmd_and_exits_7(env: dict[str, str], conv: str) -> None:
    lock = start(
        env, "lock", conv, "L", "--ttl", "1", "--", "sh", "-c", "echo ready; exec sleep 60"
    )
    assert lock.stdout is not None
    assert lock.stdout.readline() == "ready\n"
    # bb is paused (as by a long GC or a stopped laptop): its session expires on the server.
    lock.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 15
        while bb(env, "holder", conv, "L").returncode != 3:
            assert time.monotonic() < deadline, "the session never expired"
    finally:
        lock.send_signal(signal.SIGCONT)
    code, out, err = finish(lock)  # sleep 60 would take a minute: CMD was stopped
    assert (code, out) == (7, "")
    assert err.startswith("bb: lock 'L'") and "LOCK_LOST" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_lock_stops_cmd_releases_and_exits_130(
    env: dict[str, str], conv: str, sig: signal.Signals
) -> None:
    lock = start(env, "lock", conv, "L", "--", "sh", "-c", "echo ready; exec sleep 60")
    assert lock.stdout is not None
    assert lock.stdout.readline() == "ready\n"
    lock.send_signal(sig)  # bb only: CMD is stopped by bb, not by the signal
    assert finish(lock) == (130, "", "")
    fails(env, 3, "holder", conv, "L")


def test_lock_cmd_that_cannot_start_exits_127_and_releases(env: dict[str, str], conv: str) -> None:
    assert "cannot run" in fails(env, 127, "lock", conv, "L", "--", "/nonexistent/cmd")
    fails(env, 3, "holder", conv, "L")


def test_elect_runs_cmd_while_leading(env: dict[str, str], conv: str) -> None:
    script = (
        'echo "$BB_ROLE $BB_TERM_TOKEN"; bb -o json leader "$BB_CONVERSATION" "$BB_ROLE"; exit 3'
    )
    done = bb(env, "elect", conv, "planner", "--value", '{"n": 1}', "--", "sh", "-c", script)
    assert (done.returncode, done.stderr) == (3, "")
    printed, seen, leader = done.stdout.splitlines()
    role, token = seen.split()
    assert (role, token) == ("planner", printed)
    assert json.loads(leader) == {
        "role": "planner",
        "agent_id": "",
        "session_id": json.loads(leader)["session_id"],
        "token": int(token),
        "content_type": "application/json",
        "encoding": "json",
        "value": {"n": 1},
    }
    assert "NO_HOLDER" in fails(env, 3, "leader", conv, "planner")


def test_elect_without_cmd_leads_until_interrupted(env: dict[str, str], conv: str) -> None:
    elect = start(env, "-o", "json", "--agent-id", "boss", "elect", conv, "chief", "--value", "hi")
    assert elect.stdout is not None
    term = json.loads(elect.stdout.readline())
    assert (term["role"], term["agent_id"]) == ("chief", "boss")

    lines = run(env, "leader", conv, "chief").splitlines()
    assert lines[1].split() == ["chief", "boss", str(term["token"]), term["session_id"], "hi"]
    assert "LOCK_HELD" in fails(env, 4, "elect", conv, "chief", "--", "true")

    elect.send_signal(signal.SIGINT)
    assert finish(elect) == (130, "", "")
    fails(env, 3, "leader", conv, "chief")  # it resigned on the way out
