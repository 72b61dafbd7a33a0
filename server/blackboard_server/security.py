"""TLS and authentication built from Settings, for the composition root (app.py).

Files are read here, before the server connects to anything: a missing or
malformed token, key or certificate file stops the start with one line naming
the setting and the file (never the file's content).
"""

from __future__ import annotations

import grpc
import structlog

from blackboard_server.adapters.auth_jwt import JwtConfig, JwtVerifier
from blackboard_server.adapters.auth_mtls import CertificateMapper
from blackboard_server.adapters.auth_tokens import TokenFile
from blackboard_server.adapters.tls import ServerTls
from blackboard_server.config import Settings, SettingsError
from blackboard_server.ports import StateStore
from blackboard_server.services.access import Access, Authenticator

log = structlog.get_logger("blackboard")


def authenticators(settings: Settings) -> list[Authenticator]:
    """The methods `auth` lists, in its order."""
    methods: list[Authenticator] = []
    for name in settings.auth_methods:
        if name == "mtls":
            methods.append(CertificateMapper())
            continue
        setting = "auth_tokens_file" if name == "tokens" else "jwt_keys_file"
        path = getattr(settings, setting)
        try:
            if name == "tokens":
                methods.append(TokenFile(path))
            else:
                methods.append(JwtVerifier(jwt_config(settings)))
        except OSError as error:
            raise SettingsError(f"{setting}: cannot read {path}: {error.strerror}") from None
        except ValueError as error:
            raise SettingsError(f"{setting}: {error}") from None
    return methods


def jwt_config(settings: Settings) -> JwtConfig:
    return JwtConfig(
        keys_file=settings.jwt_keys_file,
        algorithms=tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        tenant_claim=settings.jwt_tenant_claim,
        agent_claim=settings.jwt_agent_claim,
        roles_claim=settings.jwt_roles_claim,
    )


def server_tls(settings: Settings) -> ServerTls | None:
    if not settings.tls:
        return None
    try:
        return ServerTls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except OSError as error:
        raise SettingsError(f"tls: cannot read {error.filename}: {error.strerror}") from None
    except ValueError as error:
        raise SettingsError(f"tls: {error}") from None


def open_access(
    settings: Settings, methods: list[Authenticator], store: StateStore
) -> Access | None:
    """None when auth is none: then no auth gate is installed at all."""
    if not methods:
        if not settings.embedded:
            log.warning(
                "auth is none: every caller acts in one tenant, as whatever agent it names",
                tenant=settings.tenant,
            )
        return None
    log.info("authentication", methods=settings.auth_methods, tls=settings.tls)
    return Access(methods, store)


def add_port(server: grpc.aio.Server, settings: Settings, tls: ServerTls | None) -> int:
    if tls is None:
        return server.add_insecure_port(settings.listen)
    return server.add_secure_port(settings.listen, tls.credentials())
