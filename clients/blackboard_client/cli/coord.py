"""`bb lock`, `bb elect`, `bb leader`, `bb holder`, `bb agents`: coordination.

`bb lock` and `bb elect` open a session (an agent present in the
conversation, renewed by the SDK) for as long as they run; closing it on exit
releases whatever it still holds, so a lock is given back also when CMD
fails or bb is interrupted. If bb itself dies, the session expires after
--ttl and the server releases the lock then.
"""

from __future__ import annotations

import argparse
from typing import Any

from blackboard_client import Hold, Session
from blackboard_client.cli._child import lost_error, run_holding
from blackboard_client.cli._common import Options, UsageError, command
from blackboard_client.cli._output import (
    Output,
    holder_doc,
    leader_doc,
    leader_value,
    session_doc,
    table,
    value_text,
)


def register(subparsers: Any) -> None:
    lock = command(
        subparsers,
        "lock",
        _lock,
        "run CMD holding the lock NAME: bb lock CONV NAME -- CMD [ARGS...]",
    )
    lock.add_argument("conv", metavar="CONV")
    lock.add_argument("name", metavar="NAME")
    _add_hold_options(lock, "the lock")

    elect = command(
        subparsers,
        "elect",
        _elect,
        "campaign for ROLE and print the term token; then run CMD while leading "
        "(bb elect CONV ROLE -- CMD [ARGS...]) or lead until interrupted",
    )
    elect.add_argument("conv", metavar="CONV")
    elect.add_argument("role", metavar="ROLE")
    elect.add_argument("--value", default="", help="the value to proclaim (text)")
    _add_hold_options(elect, "leadership")

    leader = command(subparsers, "leader", _leader, "print who leads ROLE (exit 3: nobody)")
    leader.add_argument("conv", metavar="CONV")
    leader.add_argument("role", metavar="ROLE")

    holder = command(subparsers, "holder", _holder, "print who holds lock NAME (exit 3: nobody)")
    holder.add_argument("conv", metavar="CONV")
    holder.add_argument("name", metavar="NAME")

    agents = command(subparsers, "agents", _agents, "list the live sessions (presence)")
    agents.add_argument("conv", metavar="CONV")


def _add_hold_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help=f"wait up to this long for {what} (default 0: try once)",
    )
    parser.add_argument(
        "--ttl",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help=f"session TTL: if bb dies, {what} is freed after this (default 10)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help=f"if {what} is lost, SIGKILL CMD this long after SIGTERM (default 5)",
    )


def _child_env(opts: Options, session: Session, hold: Hold, fence: str) -> dict[str, str]:
    env = dict(opts.environ)
    env.update(
        BB_TARGET=opts.target,
        BB_CONVERSATION=session.conversation_id,
        BB_SESSION_ID=session.session_id,
        BB_FENCE=fence,
    )
    if opts.agent_id:
        env["BB_AGENT_ID"] = opts.agent_id
    return env


def _check_ttl(args: argparse.Namespace) -> None:
    if args.ttl <= 0 or args.wait < 0 or args.grace < 0:
        raise UsageError("--ttl must be positive, --wait and --grace not negative")


async def _lock(args: argparse.Namespace, opts: Options) -> int:
    cmd: list[str] = args.cmd
    if not cmd:
        raise UsageError("give the command to run: bb lock CONV NAME -- CMD [ARGS...]")
    _check_ttl(args)
    async with opts.client() as client, client.session(args.conv, ttl=args.ttl) as session:
        lock = await session.acquire(args.name, wait=args.wait, cancel_on_loss=False)
        async with lock:
            env = _child_env(opts, session, lock, f"lock:{lock.name}:{lock.token}")
            env.update(BB_LOCK_NAME=lock.name, BB_LOCK_TOKEN=str(lock.token))
            return await run_holding(cmd, env, lock, grace=args.grace)


async def _elect(args: argparse.Namespace, opts: Options) -> int:
    cmd: list[str] = args.cmd
    _check_ttl(args)
    out = Output(opts.json)
    async with opts.client() as client, client.session(args.conv, ttl=args.ttl) as session:
        leadership = await session.campaign(
            args.role, args.value, wait=args.wait, cancel_on_loss=False
        )
        async with leadership:
            out.emit(
                {
                    "role": leadership.role,
                    "token": leadership.token,
                    "session_id": session.session_id,
                    "agent_id": session.agent_id,
                },
                str(leadership.token),
            )
            if not cmd:
                await leadership.lost.wait()  # or until interrupted: SIGINT resigns
                raise lost_error(leadership)
            env = _child_env(opts, session, leadership, f"election:{args.role}:{leadership.token}")
            env.update(BB_ROLE=leadership.role, BB_TERM_TOKEN=str(leadership.token))
            return await run_holding(cmd, env, leadership, grace=args.grace)


async def _leader(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        leader = await client.leader(args.conv, args.role)
    row = (leader.role, leader.agent_id, leader.token, leader.session_id)
    text = table(
        ("ROLE", "AGENT", "TOKEN", "SESSION", "VALUE"),
        [(*row, value_text(leader_value(leader)))],
    )
    Output(opts.json).emit(leader_doc(leader), text)
    return 0


async def _holder(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        holder = await client.lock_holder(args.conv, args.name)
    text = table(
        ("NAME", "AGENT", "TOKEN", "SESSION"),
        [(holder.name, holder.agent_id, holder.token, holder.session_id)],
    )
    Output(opts.json).emit(holder_doc(holder), text)
    return 0


async def _agents(args: argparse.Namespace, opts: Options) -> int:
    async with opts.client() as client:
        sessions = await client.sessions(args.conv)
    rows = [(s.agent_id, s.session_id, f"{s.ttl_ms / 1000:g}s") for s in sessions]
    Output(opts.json).emit(
        {"sessions": [session_doc(s) for s in sessions]},
        table(("AGENT", "SESSION", "TTL"), rows) if rows else "",
    )
    return 0
