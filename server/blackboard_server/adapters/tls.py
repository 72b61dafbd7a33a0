"""Server TLS from PEM files, reloaded when they change (a renewed certificate is
used for new connections without a restart; open connections keep theirs).

gRPC asks for the configuration at each handshake; the files are looked at
(a stat) at most once a second. A certificate and key that do not belong
together are refused at start and, later, ignored with an error logged.
"""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from blackboard_server.watched_file import WatchedFile


def _certificates(data: bytes) -> bytes:
    if not x509.load_pem_x509_certificates(data):
        raise ValueError("no PEM certificate")
    return data


def _key(data: bytes) -> bytes:
    serialization.load_pem_private_key(data, password=None)
    return data


def check_pair(chain: bytes, key: bytes) -> None:
    leaf = x509.load_pem_x509_certificates(chain)[0].public_key()
    private = serialization.load_pem_private_key(key, password=None).public_key()
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_bytes(*public) != private.public_bytes(*public):
        raise ValueError("tls_key_file does not hold the key of tls_cert_file's certificate")


class ServerTls:
    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        self._chain = WatchedFile(cert_file, _certificates)
        self._key = WatchedFile(key_file, _key)
        self._ca = WatchedFile(client_ca_file, _certificates) if client_ca_file else None
        check_pair(self._chain.current(), self._key.current())
        self._version = self._reloads()

    def _reloads(self) -> int:
        return self._chain.reloads + self._key.reloads + (self._ca.reloads if self._ca else 0)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        ca = self._ca.current() if self._ca else None
        return grpc.ssl_server_certificate_configuration(
            [(self._key.current(), self._chain.current())], root_certificates=ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        chain, key = self._chain.current(), self._key.current()
        if self._ca is not None:
            self._ca.current()
        version = self._reloads()
        if version == self._version:
            return None  # unchanged: gRPC keeps the current one
        try:
            check_pair(chain, key)
        except ValueError:
            return None  # half-way through a rotation: the key comes next
        self._version = version
        return self._configuration()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,  # type: ignore[arg-type]  # None means "keep": the stubs forget it
            require_client_authentication=self._ca is not None,
        )
