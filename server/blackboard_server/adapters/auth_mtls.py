"""Client certificates as identities (tls_client_auth=require, auth includes mtls).

The TLS handshake has already verified the certificate against
`tls_client_ca_file`; this maps its subject to an identity, as Kubernetes maps
client certificates to users:

    O  (organization)        the tenant; exactly one
    CN (common name)         the agent id
    OU (organizational unit) one role binding each (`writer`, `team-1:admin`); optional
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from blackboard_server.domain.auth import Identity, identity
from blackboard_server.domain.errors import CredentialsInvalid

CACHE_MAX = 4096


def certificate_identity(pem: bytes) -> Identity:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CredentialsInvalid("unreadable client certificate") from None
    subject = cert.subject
    tenants = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    agents = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    roles = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if len(tenants) != 1 or len(agents) != 1:
        raise CredentialsInvalid("the client certificate needs one O (tenant) and one CN (agent)")
    try:
        return identity(tenants[0], agents[0], roles, cert.not_valid_after_utc.timestamp())
    except ValueError as error:
        raise CredentialsInvalid(f"client certificate: {error}") from None


class CertificateMapper:
    name = "mtls"

    def __init__(self) -> None:
        # By the certificate's PEM: a connection sends the same one on every call.
        self._cache: dict[bytes, Identity] = {}

    def authenticate(self, token: str, certificate: bytes) -> Identity | None:
        if not certificate:
            return None
        found = self._cache.get(certificate)
        if found is None:
            found = certificate_identity(certificate)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[certificate] = found
        return found
