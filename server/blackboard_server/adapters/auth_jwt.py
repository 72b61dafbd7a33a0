"""JWT bearer tokens (HS256, RS256, ES256), verified against keys in a file.

The keys file is one of: a PEM public key (RSA for RS256, EC P-256 for ES256),
a JWKS document (`{"keys": [...]}`, chosen by the token's `kid`), or, for
HS256, the shared secret itself (at least 32 bytes). A key serves only the
algorithm family of its type, so an RSA public key can never be used as an
HMAC secret. `exp` is required; issuer and audience are checked when set; the
leeway covers clock skew. The file is reloaded when it changes, which also
forgets every cached verification.

Verified tokens are cached by their SHA-256 until they expire, so a client that
sends the same token on every call pays for one signature check.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from blackboard_server.domain.auth import Identity, identity
from blackboard_server.domain.errors import CredentialsExpired, CredentialsInvalid
from blackboard_server.watched_file import WatchedFile

FAMILY = {"HS256": "oct", "RS256": "RSA", "ES256": "EC"}
MIN_SECRET_BYTES = 32
CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class JwtConfig:
    keys_file: str
    algorithms: tuple[str, ...] = ("HS256", "RS256", "ES256")
    issuer: str = ""
    audience: str = ""
    leeway_s: float = 30.0
    tenant_claim: str = "tenant"
    agent_claim: str = "sub"
    roles_claim: str = "roles"


@dataclass(frozen=True, slots=True)
class _Key:
    family: str  # oct | RSA | EC
    key: Any
    kid: str = ""


def parse_keys(data: bytes) -> tuple[_Key, ...]:
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        public = serialization.load_pem_public_key(text)
        if isinstance(public, rsa.RSAPublicKey):
            return (_Key("RSA", public),)
        if isinstance(public, ec.EllipticCurvePublicKey):
            return (_Key("EC", public),)
        raise ValueError("the PEM key is neither RSA nor EC")
    if text.startswith(b"{"):
        document = json.loads(text)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError('a JWKS document is {"keys": [...]}')
        keys = []
        for i, raw in enumerate(document["keys"]):
            try:
                jwk = jwt.PyJWK(raw)
            except jwt.PyJWTError as error:
                raise ValueError(f"keys[{i}]: {type(error).__name__}") from None
            keys.append(_Key(jwk.key_type or "", jwk.key, jwk.key_id or ""))
        if not keys:
            raise ValueError("the JWKS document has no keys")
        return tuple(keys)
    if len(text) < MIN_SECRET_BYTES:
        raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    return (_Key("oct", text),)


class JwtVerifier:
    name = "jwt"

    def __init__(self, config: JwtConfig) -> None:
        self._config = config
        self._file = WatchedFile(config.keys_file, parse_keys)
        families = {FAMILY[a] for a in config.algorithms}
        if not any(k.family in families for k in self._file.current()):
            raise ValueError(
                f"{config.keys_file}: no key for the algorithms {', '.join(config.algorithms)}"
            )
        self._cache: dict[bytes, Identity] = {}
        self._seen_reloads = 0

    def authenticate(self, token: str, certificate: bytes) -> Identity | None:
        if not token:
            return None
        keys = self._file.current()
        if self._file.reloads != self._seen_reloads:
            self._seen_reloads = self._file.reloads
            self._cache.clear()
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached.expires_at + self._config.leeway_s > time.time():
                return cached
            del self._cache[digest]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return None  # not a JWT: perhaps another method's token
        found = self._verify(token, header, keys)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = found
        return found

    def _verify(self, token: str, header: dict[str, Any], keys: tuple[_Key, ...]) -> Identity:
        c = self._config
        algorithm = header.get("alg")
        if algorithm not in c.algorithms:
            raise CredentialsInvalid("algorithm not allowed")
        kid = header.get("kid")
        candidates = [
            k
            for k in keys
            if k.family == FAMILY[algorithm] and (not kid or not k.kid or k.kid == kid)
        ]
        if not candidates:
            raise CredentialsInvalid("no key for this token")
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    audience=c.audience or None,
                    issuer=c.issuer or None,
                    leeway=c.leeway_s,
                    options={"require": ["exp"], "verify_aud": bool(c.audience)},
                )
                break
            except jwt.InvalidSignatureError:
                continue  # another key of the set may have signed it
            except jwt.ExpiredSignatureError:
                raise CredentialsExpired() from None
            except jwt.InvalidAudienceError:
                raise CredentialsInvalid("wrong audience") from None
            except jwt.InvalidIssuerError:
                raise CredentialsInvalid("wrong issuer") from None
            except jwt.MissingRequiredClaimError as error:
                raise CredentialsInvalid(f"missing claim {error.claim}") from None
            except jwt.ImmatureSignatureError:
                raise CredentialsInvalid("not valid yet") from None
            except jwt.PyJWTError:
                raise CredentialsInvalid("malformed token") from None
        if claims is None:
            raise CredentialsInvalid("bad signature")
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> Identity:
        c = self._config
        roles = claims.get(c.roles_claim, [])
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, list):
            raise CredentialsInvalid(f"claim {c.roles_claim} must be a list or a string")
        try:
            return identity(
                claims.get(c.tenant_claim, ""),
                claims.get(c.agent_claim, ""),
                roles,
                float(claims["exp"]),
            )
        except (ValueError, TypeError) as error:
            raise CredentialsInvalid(f"claims: {error}") from None
