"""Authentication and authorization without a server: the role model, the RPC table,
token files, JWTs (HS256, RS256, ES256, JWKS) and client certificates."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt as pyjwt
import pytest

from blackboard.v1 import blackboard_pb2 as pb
from blackboard_server.adapters.auth_jwt import JwtConfig, JwtVerifier, parse_keys
from blackboard_server.adapters.auth_mtls import CertificateMapper
from blackboard_server.adapters.auth_tokens import TokenFile as TokenAuthenticator
from blackboard_server.adapters.memory import MemoryStore
from blackboard_server.domain.auth import (
    REQUIREMENTS,
    Identity,
    Requirement,
    Role,
    RoleBinding,
    identity,
)
from blackboard_server.domain.errors import (
    CredentialsExpired,
    CredentialsInvalid,
    CredentialsMissing,
    InvalidArgument,
    RoleRequired,
)
from blackboard_server.domain.model import ConversationRef
from blackboard_server.services.access import Access
from blackboard_server.services.blackboard import Caller
from tests.identities import (
    AUDIENCE,
    ISSUER,
    Pki,
    TokenFile,
    ec_key,
    jwks,
    make_jwt,
    public_pem,
    rsa_key,
)

SECRET = b"s" * 64


# --- the role model ----------------------------------------------------------------


def test_role_bindings_cover_all_one_or_a_prefix_of_the_tenants_conversations() -> None:
    every, one, prefix = (RoleBinding.parse(t) for t in ("writer", "team:1:admin", "team-*:reader"))
    assert (every.role, every.pattern) == (Role.WRITER, "")
    assert (one.role, one.pattern) == (Role.ADMIN, "team:1")  # ids may contain ':'
    assert every.covers("anything") and one.covers("team:1") and not one.covers("team:10")
    assert prefix.covers("team-7") and not prefix.covers("team7")
    assert RoleBinding.parse("*:reader") == RoleBinding(Role.READER)
    with pytest.raises(ValueError, match="unknown role"):
        RoleBinding.parse("team-1:owner")
    who = identity("acme", "a", ["team-*:reader", "team-1:admin"])
    assert who.role_on("team-1") is Role.ADMIN and who.role_on("team-2") is Role.READER
    assert who.role_on("other") is None and who.role_on(None) is None
    assert identity("acme", "a", ["reader"]).role_on(None) is Role.READER


@pytest.mark.parametrize(
    ("tenant", "agent"), [("", "a"), ("a/b", "a"), ("x" * 65, "a"), ("acme", ""), ("acme", "a b")]
)
def test_identities_with_a_malformed_tenant_or_agent_are_refused(tenant: str, agent: str) -> None:
    with pytest.raises(ValueError):
        identity(tenant, agent, [])


def test_every_rpc_of_both_services_is_in_the_table_and_names_a_real_field() -> None:
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            need = REQUIREMENTS[f"/{service.full_name}/{method.name}"]
            assert need.role is not None and not need.public, method.full_name
            if need.per_item:
                # Each item of the streamed request names its conversation in every op.
                assert method.client_streaming, method.full_name
                (items,) = method.input_type.fields
                ops = [f.message_type for f in items.message_type.fields if f.message_type]
                assert ops and all(need.field in op.fields_by_name for op in ops)
            elif need.field:
                assert need.field in method.input_type.fields_by_name, method.full_name
    readers = {m for m, need in REQUIREMENTS.items() if need.role is Role.READER}
    assert {m.rpartition("/")[2] for m in readers} == {
        "GetConversation", "ListConversations", "Get", "Range", "History", "Subscribe",
        "ListSessions", "GetLock", "GetLeader", "Observe",
    }  # fmt: skip
    admins = {m.rpartition("/")[2] for m, n in REQUIREMENTS.items() if n.role is Role.ADMIN}
    assert admins == {
        "CreateConversation", "DeleteConversation", "GrantRole", "RevokeRole", "ListGrants"
    }  # fmt: skip


async def test_access_checks_own_roles_then_the_conversations_grants() -> None:
    store = MemoryStore()
    ref = ConversationRef("acme", "c1")
    await store.create_conversation(ref, {}, 0, 1)
    access = Access((), store)
    write = Requirement(Role.WRITER)
    bob = Identity("acme", "bob")
    with pytest.raises(RoleRequired) as denied:
        await access.authorize(bob, write, "c1")
    assert denied.value.metadata == {"role": "writer", "conversation": "c1"}
    await access.grant(Caller("acme", "admin"), "c1", "bob", Role.WRITER)
    await access.authorize(bob, write, "c1")
    with pytest.raises(RoleRequired):  # grants are per conversation
        await access.authorize(bob, write, "c2")
    with pytest.raises(RoleRequired):  # and per tenant: another tenant's bob has none
        await access.authorize(Identity("other", "bob"), write, "c1")
    with pytest.raises(RoleRequired):  # a grant does not reach tenant-wide calls
        await access.authorize(bob, Requirement(Role.READER, ""), "")
    await access.grant(Caller("acme", "admin"), "c1", "*", Role.READER)
    await access.authorize(Identity("acme", "carol"), Requirement(Role.READER), "c1")
    assert await access.list_grants(Caller("acme"), "c1") == [
        ("*", Role.READER),
        ("bob", Role.WRITER),
    ]
    assert await access.revoke(Caller("acme"), "c1", "bob") is True
    assert await access.revoke(Caller("acme"), "c1", "bob") is False
    with pytest.raises(RoleRequired):
        await access.authorize(bob, write, "c1")  # this replica forgets at once
    with pytest.raises(InvalidArgument):
        await access.grant(Caller("acme"), "c1", "bad subject", Role.READER)
    with pytest.raises(InvalidArgument):
        await access.grant(Caller("acme"), "c1", "bob", 7)
    assert await store.grants(ref) == {"*": Role.READER}  # the refused grants left nothing


def test_a_chain_tries_each_method_and_reports_the_first_failure(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    static = tokens.add("acme", "robot", ["reader"])
    keys = tmp_path / "secret"
    keys.write_bytes(SECRET)
    verifier = JwtVerifier(JwtConfig(str(keys), audience=AUDIENCE))
    access = Access((TokenAuthenticator(str(tokens.path)), verifier), MemoryStore())
    assert access.authenticate(static, b"").agent_id == "robot"
    assert access.authenticate(make_jwt(SECRET, "HS256"), b"").agent_id == "planner"
    with pytest.raises(CredentialsMissing):
        access.authenticate("", b"")
    with pytest.raises(CredentialsInvalid):
        access.authenticate("not-a-known-token", b"")
    with pytest.raises(CredentialsExpired):
        access.authenticate(make_jwt(SECRET, "HS256", expires_in=-3600), b"")


# --- token files -------------------------------------------------------------------


def test_token_files_hold_hashes_and_reload_when_changed(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "tokens.json")
    first = tokens.add("acme", "robot", ["writer", "c1:admin"])
    authenticator = TokenAuthenticator(str(tokens.path))
    assert first not in tokens.path.read_text()
    found = authenticator.authenticate(first, b"")
    assert found is not None and (found.tenant, found.agent_id) == ("acme", "robot")
    assert found.role_on("c1") is Role.ADMIN
    assert authenticator.authenticate(first + "x", b"") is None
    assert authenticator.authenticate("", b"") is None

    second = tokens.add("beta", "other", ["reader"])
    expired = tokens.add("acme", "old", ["reader"], expires_unix=time.time() - 1)
    tokens.entries.pop(0)  # revoke the first
    tokens.write()
    _touch_later(tokens.path)
    deadline = time.monotonic() + 10
    while authenticator.authenticate(first, b"") is not None:
        assert time.monotonic() < deadline, "the token file was not reloaded"
        time.sleep(0.05)
    assert authenticator.reloads == 1
    found = authenticator.authenticate(second, b"")
    assert found is not None and found.tenant == "beta"
    with pytest.raises(CredentialsExpired):
        authenticator.authenticate(expired, b"")

    # A broken file is not loaded: the last good table stays.
    tokens.path.write_text('{"tokens": [{"sha256": "zz"}]}')
    _touch_later(tokens.path)
    time.sleep(1.1)
    assert authenticator.authenticate(second, b"") is not None
    assert authenticator.reloads == 1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[]", "expected"),
        ('{"tokens": [{"sha256": "ab"}]}', "64 hex"),
        ('{"tokens": [{"sha256": "' + "a" * 64 + '", "tenant": "x"}]}', "agent id"),
        ('{"tokens": [{"sha256": "' + "a" * 64 + '", "tenant": "x", "agent_id": "y", '
         '"roles": ["owner"]}]}', "unknown role"),
    ],
)  # fmt: skip
def test_a_malformed_token_file_stops_the_start(
    tmp_path: Path, document: str, message: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(document)
    with pytest.raises(ValueError, match=message):
        TokenAuthenticator(str(path))


def _touch_later(path: Path) -> None:
    """Moves the mtime on, so a rewrite within the same clock tick is seen."""
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


# --- JWT ---------------------------------------------------------------------------


def verifier(tmp_path: Path, keys: bytes, **config: object) -> JwtVerifier:
    path = tmp_path / "keys"
    path.write_bytes(keys)
    defaults: dict[str, object] = {"issuer": ISSUER, "audience": AUDIENCE, "leeway_s": 30.0}
    return JwtVerifier(JwtConfig(str(path), **{**defaults, **config}))  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["HS256", "RS256", "ES256"])
def test_jwts_of_each_algorithm_map_their_claims(tmp_path: Path, algorithm: str) -> None:
    if algorithm == "HS256":
        signing, keys = SECRET, SECRET
    else:
        private = rsa_key() if algorithm == "RS256" else ec_key()
        signing, keys = private, public_pem(private)
    v = verifier(tmp_path, keys)
    token = make_jwt(signing, algorithm, tenant="acme", sub="w-1", roles=["c1:writer", "reader"])
    found = v.authenticate(token, b"")
    assert found is not None
    assert (found.tenant, found.agent_id) == ("acme", "w-1")
    assert found.role_on("c1") is Role.WRITER and found.role_on("c2") is Role.READER
    assert v.authenticate(token, b"") == found  # from the cache
    space_separated = make_jwt(signing, algorithm, roles="reader c1:admin")
    again = v.authenticate(space_separated, b"")
    assert again is not None and again.role_on("c1") is Role.ADMIN


def test_jwt_issuer_audience_signature_and_algorithm_are_checked(tmp_path: Path) -> None:
    v = verifier(tmp_path, SECRET)
    cases = {
        "wrong issuer": make_jwt(SECRET, "HS256", issuer="https://evil.test"),
        "wrong audience": make_jwt(SECRET, "HS256", audience="another-service"),
        "bad signature": make_jwt(b"x" * 40, "HS256"),
        "missing claim exp": pyjwt.encode(
            {"tenant": "acme", "sub": "a", "iss": ISSUER, "aud": AUDIENCE}, SECRET, "HS256"
        ),
        "claims": make_jwt(SECRET, "HS256", tenant="no/slashes"),
        "algorithm not allowed": pyjwt.encode({"exp": 2**31}, SECRET, "HS512"),
    }
    for detail, token in cases.items():
        with pytest.raises(CredentialsInvalid) as failed:
            v.authenticate(token, b"")
        assert detail in failed.value.message
        assert token not in failed.value.message
    assert v.authenticate("plainly-not-a-jwt", b"") is None  # for the next method to try


def test_an_rsa_public_key_is_never_an_hmac_secret(tmp_path: Path) -> None:
    private = rsa_key()
    pem = public_pem(private)
    v = verifier(tmp_path, pem)
    forged = pyjwt.api_jws.PyJWS().encode(
        json.dumps(
            {"tenant": "acme", "sub": "x", "exp": 2**31, "aud": AUDIENCE, "iss": ISSUER}
        ).encode(),
        b"k" * 32,
        algorithm="HS256",
    )
    with pytest.raises(CredentialsInvalid, match="no key"):
        v.authenticate(forged, b"")


def test_expiry_is_checked_with_the_leeway(tmp_path: Path) -> None:
    v = verifier(tmp_path, SECRET, leeway_s=60.0)
    assert v.authenticate(make_jwt(SECRET, "HS256", expires_in=-30), b"") is not None
    with pytest.raises(CredentialsExpired):
        v.authenticate(make_jwt(SECRET, "HS256", expires_in=-90), b"")
    strict = verifier(tmp_path, SECRET, leeway_s=0.0)
    with pytest.raises(CredentialsExpired):
        strict.authenticate(make_jwt(SECRET, "HS256", expires_in=-30), b"")


def test_a_jwks_document_picks_the_key_by_kid_and_reloads(tmp_path: Path) -> None:
    old, new = rsa_key(), ec_key()
    v = verifier(tmp_path, jwks(("old", old.public_key()), ("hs", SECRET)))
    assert v.authenticate(make_jwt(old, "RS256", kid="old"), b"") is not None
    assert v.authenticate(make_jwt(SECRET, "HS256", kid="hs"), b"") is not None
    with pytest.raises(CredentialsInvalid, match="no key"):
        v.authenticate(make_jwt(new, "ES256", kid="new"), b"")
    cached = make_jwt(old, "RS256", kid="old")
    assert v.authenticate(cached, b"") is not None
    # Rotation: the new key is published and the old one withdrawn.
    path = tmp_path / "keys"
    path.write_bytes(jwks(("new", new.public_key())))
    _touch_later(path)
    deadline = time.monotonic() + 10
    while True:
        try:
            v.authenticate(cached, b"")
        except CredentialsInvalid:
            break  # the cached verification went with the old key
        assert time.monotonic() < deadline, "the keys file was not reloaded"
        time.sleep(0.05)
    assert v.authenticate(make_jwt(new, "ES256", kid="new"), b"") is not None


@pytest.mark.parametrize(
    ("keys", "message"),
    [(b"short", "at least 32 bytes"), (b'{"keys": []}', "no keys"), (b'{"x": 1}', "JWKS")],
)
def test_bad_key_files_stop_the_start(keys: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keys(keys)


def test_a_key_for_no_allowed_algorithm_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no key for the algorithms"):
        verifier(tmp_path, SECRET, algorithms=("RS256",))


# --- client certificates -----------------------------------------------------------


def test_a_client_certificate_maps_o_cn_ou_to_tenant_agent_role(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, _ = pki.client("acme", "worker-7", "team-*:writer")
    mapper = CertificateMapper()
    found = mapper.authenticate("", Path(cert).read_bytes())
    assert found is not None
    assert (found.tenant, found.agent_id) == ("acme", "worker-7")
    assert found.role_on("team-1") is Role.WRITER and found.role_on("x") is None
    assert mapper.authenticate("a-token", b"") is None
    bad, _ = pki.client("acme", "worker-8", "owner")
    with pytest.raises(CredentialsInvalid, match="unknown role"):
        mapper.authenticate("", Path(bad).read_bytes())


# --- the interceptor ---------------------------------------------------------------


class _Aborted(Exception):
    pass


class _Context:
    """Just what the interceptor's refusal uses of a grpc.aio ServicerContext."""

    def __init__(self) -> None:
        self.code: object = None
        self.trailers: object = None

    async def abort(self, code: object, details: str, trailers: object) -> None:
        self.code, self.trailers = code, trailers
        raise _Aborted(details)


async def test_a_served_method_missing_from_the_table_is_refused() -> None:
    import grpc

    from blackboard_server.api.auth import AuthGate

    async def behaviour(request: object, context: object) -> bytes:
        raise AssertionError("the handler must not run")

    served = grpc.unary_unary_rpc_method_handler(behaviour)
    handler = AuthGate(Access((), MemoryStore())).wrap("/acme.v1.Extra/DoAnything", served)
    context = _Context()
    with pytest.raises(_Aborted, match="not open to any role"):
        await handler.unary_unary(b"", context)
    assert context.code is grpc.StatusCode.PERMISSION_DENIED
