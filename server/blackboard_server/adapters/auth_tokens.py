"""Bearer tokens from a file of their SHA-256 hashes (docs/security.md has the format).

    {"tokens": [{"sha256": "<hex>", "tenant": "acme", "agent_id": "planner",
                 "roles": ["writer", "team-1:admin"], "expires_unix": 0}]}

The file never holds a token, only its hash. A call's token is hashed and the
hash looked up; the stored hash is then compared with `hmac.compare_digest`.
The lookup's timing depends only on the hash, a one-way function of the token,
so it tells an attacker nothing about any token. The file is reloaded when it
changes (adapters/watched_file.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from blackboard_server.domain.auth import Identity, identity
from blackboard_server.domain.errors import CredentialsExpired
from blackboard_server.watched_file import WatchedFile


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    identity: Identity


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(data: bytes) -> dict[bytes, _Entry]:
    """The table by digest; ValueError names the entry that is wrong, never its hash."""
    document = json.loads(data)
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
        raise ValueError('expected {"tokens": [...]}')
    table: dict[bytes, _Entry] = {}
    for i, item in enumerate(document["tokens"]):
        where = f"tokens[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object")
        try:
            digest = bytes.fromhex(str(item.get("sha256", "")))
        except ValueError:
            raise ValueError(f"{where}: sha256 must be 64 hex digits") from None
        if len(digest) != 32:
            raise ValueError(f"{where}: sha256 must be 64 hex digits")
        if digest in table:
            raise ValueError(f"{where}: the same token is listed twice")
        expires = item.get("expires_unix", 0)
        if not isinstance(expires, int | float) or expires < 0:
            raise ValueError(f"{where}: expires_unix must be a number of seconds")
        try:
            found = identity(
                item.get("tenant", ""), item.get("agent_id", ""), item.get("roles", []), expires
            )
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        table[digest] = _Entry(digest, found)
    return table


class TokenFile:
    """`authenticate` answers for tokens in the file; others are left to the next method."""

    name = "tokens"

    def __init__(self, path: str) -> None:
        self._file = WatchedFile(path, parse_tokens)

    @property
    def reloads(self) -> int:
        return self._file.reloads

    def authenticate(self, token: str, certificate: bytes) -> Identity | None:
        if not token:
            return None
        digest = token_digest(token)
        entry = self._file.current().get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        expires = entry.identity.expires_at
        if expires and expires <= time.time():
            raise CredentialsExpired()
        return entry.identity
