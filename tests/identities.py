"""Credentials for the authentication tests: token files, JWTs and their keys,
and a small PKI (trustme) for TLS and client certificates."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "blackboard-tests"
ISSUER = "https://issuer.test"


def new_token() -> str:
    return "bbt_" + secrets.token_urlsafe(24)


@dataclass
class TokenFile:
    """A tokens file; `add` hands out a fresh token for an identity and rewrites it."""

    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add(self, tenant: str, agent: str, roles: list[str], expires_unix: float = 0) -> str:
        token = new_token()
        self.entries.append(
            {
                "sha256": hashlib.sha256(token.encode()).hexdigest(),
                "tenant": tenant,
                "agent_id": agent,
                "roles": roles,
                "expires_unix": expires_unix,
            }
        )
        self.write()
        return token

    def write(self) -> None:
        self.path.write_text(json.dumps({"tokens": self.entries}))


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks(*keys: tuple[str, Any]) -> bytes:
    """A JWKS document of (kid, public key or HMAC secret) pairs."""
    found = []
    for kid, key in keys:
        if isinstance(key, bytes):
            jwk = json.loads(jwt.algorithms.HMACAlgorithm.to_jwk(key))
        elif isinstance(key, rsa.RSAPublicKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
        else:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
        found.append({**jwk, "kid": kid})
    return json.dumps({"keys": found}).encode()


def make_jwt(
    key: Any,
    algorithm: str,
    *,
    tenant: str = "acme",
    sub: str = "planner",
    roles: list[str] | str = ("writer",),  # type: ignore[assignment]
    expires_in: float = 300,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    kid: str = "",
    **claims: Any,
) -> str:
    now = time.time()
    payload = {
        "tenant": tenant,
        "sub": sub,
        "roles": list(roles) if not isinstance(roles, str) else roles,
        "iat": int(now),
        "exp": int(now + expires_in),
        "iss": issuer,
        "aud": audience,
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


class Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, and client certificates
    whose subject names a tenant (O), an agent (CN) and a role (OU)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert_file = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.key_file = self._write("server.key", server.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def client(self, tenant: str, agent: str, role: str | None = None) -> tuple[str, str]:
        """The files of a client certificate: (cert, key)."""
        leaf = self.ca.issue_cert(
            f"{agent}.clients.test",
            common_name=agent,
            organization_name=tenant,
            organization_unit_name=role,
        )
        name = f"{tenant}-{agent}"
        return (
            self._write(f"{name}.pem", leaf.cert_chain_pems[0].bytes()),
            self._write(f"{name}.key", leaf.private_key_pem.bytes()),
        )

    def server_args(self, *, require_client: bool = False) -> list[str]:
        args = ["--tls-cert-file", self.cert_file, "--tls-key-file", self.key_file]
        if require_client:
            args += ["--tls-client-ca-file", self.ca_file, "--tls-client-auth", "require"]
        return args
