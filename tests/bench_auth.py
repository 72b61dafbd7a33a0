"""What authentication and authorization add to each call, without the network:

    python -m tests.bench_auth [--calls 100000]

Times Access.authenticate + authorize (what the interceptor runs before each
handler) for a token from a file, a JWT (cached after the first call, HS256 and
ES256), and a role that needs the conversation's grants (cached for a second).
A microbenchmark: the figures are per call on one core, and move with the load
on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from blackboard_server.adapters.auth_jwt import JwtConfig, JwtVerifier
from blackboard_server.adapters.auth_tokens import TokenFile as TokenAuthenticator
from blackboard_server.adapters.memory import MemoryStore
from blackboard_server.domain.auth import Requirement, Role
from blackboard_server.domain.model import ConversationRef
from blackboard_server.services.access import Access
from tests.identities import AUDIENCE, TokenFile, ec_key, make_jwt, public_pem

SECRET = b"b" * 64


async def per_call_us(access: Access, token: str, need: Requirement, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        who = access.authenticate(token, b"")
        await access.authorize(who, need, "c1")
    return (time.perf_counter() - start) / calls * 1e6


async def main(calls: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    tokens = TokenFile(tmp / "tokens.json")
    writer = tokens.add("acme", "w", ["writer"])
    granted = tokens.add("acme", "g", [])
    for i in range(1000):  # a file of realistic size
        tokens.add("acme", f"agent-{i}", ["reader"])
    (tmp / "hs").write_bytes(SECRET)
    es = ec_key()
    (tmp / "es.pem").write_bytes(public_pem(es))
    store = MemoryStore()
    await store.create_conversation(ConversationRef("acme", "c1"), {}, 0, 1)
    await store.set_grant(ConversationRef("acme", "c1"), "g", Role.WRITER)
    write = Requirement(Role.WRITER)
    by_tokens = Access((TokenAuthenticator(str(tokens.path)),), store)
    hs = Access((JwtVerifier(JwtConfig(str(tmp / "hs"), audience=AUDIENCE)),), store)
    ec = Access((JwtVerifier(JwtConfig(str(tmp / "es.pem"), audience=AUDIENCE)),), store)
    rows = [
        ("token file, tenant-wide role", by_tokens, writer),
        ("token file, role from a grant", by_tokens, granted),
        ("JWT HS256 (cached)", hs, make_jwt(SECRET, "HS256", tenant="acme", sub="w")),
        ("JWT ES256 (cached)", ec, make_jwt(es, "ES256", tenant="acme", sub="w")),
    ]
    for name, access, token in rows:
        print(f"{name:32} {await per_call_us(access, token, write, calls):7.2f} us/call")
    cold = [make_jwt(es, "ES256", tenant="acme", sub=f"w{i}") for i in range(200)]
    start = time.perf_counter()
    for token in cold:
        ec.authenticate(token, b"")
    print(f"{'JWT ES256 (first use)':32} {(time.perf_counter() - start) / 200 * 1e6:7.2f} us/call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.bench_auth", description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().calls))
