"""How the client proves who it is to etcd: TLS (optionally with a client
certificate) and user/password authentication.

With a user, the client calls Auth.Authenticate once, sends the token it gets
as the `token` metadata of every call, and authenticates again when etcd
rejects the token (it expired, or the auth store changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc


@dataclass(frozen=True, slots=True)
class EtcdSecurity:
    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    ca_pem: bytes | None = field(default=None, repr=False)  # None: the system's roots
    cert_pem: bytes | None = field(default=None, repr=False)  # with key_pem: a client certificate
    key_pem: bytes | None = field(default=None, repr=False)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


NO_SECURITY = EtcdSecurity()
