"""TLS settings of a client: which CA to trust, the client certificate for mTLS,
and the name the server's certificate must carry, as gRPC channel credentials."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True, slots=True)
class Tls:
    """`Tls()` trusts the system's CAs. `ca_file` trusts that PEM bundle instead;
    `cert_file` and `key_file` (both or neither) present a client certificate;
    `server_name` checks the server's certificate against that name rather than
    the target's host (for connecting by IP address or through a tunnel)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("Tls: give cert_file and key_file together, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file),
            private_key=_read(self.key_file),
            certificate_chain=_read(self.cert_file),
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def open_channel(
    target: str, tls: Tls | bool | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A plaintext channel, or a TLS one (`True`: the system's CAs)."""
    if not tls:
        return grpc.aio.insecure_channel(target, options=list(options))
    settings = tls if isinstance(tls, Tls) else Tls()
    return grpc.aio.secure_channel(target, settings.credentials(), [*options, *settings.options()])


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None
