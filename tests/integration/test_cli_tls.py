"""`bb` against a server with TLS, client certificates and bearer tokens: the flags
and BB_* variables reach the SDK, and the token never appears in what bb prints."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.identities import Pki, TokenFile
from tests.servers import ServerProcess

pytestmark = pytest.mark.timeout(90)
BB = str(Path(sys.executable).parent / "bb")
AUTH_EXIT = 5


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, Pki, dict[str, str]]]:
    workdir = tmp_path_factory.mktemp("cli-tls")
    pki = Pki(workdir / "pki")
    tokens = TokenFile(workdir / "tokens.json")
    issued = {
        "admin": tokens.add("acme", "boss", ["admin"]),
        "reader": tokens.add("acme", "viewer", ["reader"]),
    }
    client = grpc.ssl_channel_credentials(Path(pki.ca_file).read_bytes())
    process = ServerProcess(
        workdir / "server",
        *pki.server_args(),
        "--auth", "tokens", "--auth-tokens-file", str(tokens.path),
        credentials=client,
    )  # fmt: skip
    process.start()
    yield process, pki, issued
    process.stop()


def bb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BB_")}
    return subprocess.run(
        [BB, *args], env={**clean, **env}, capture_output=True, text=True, timeout=30, check=False
    )


def test_bb_speaks_tls_with_a_token_from_the_environment(
    secured: tuple[ServerProcess, Pki, dict[str, str]],
) -> None:
    process, pki, tokens = secured
    base = {"BB_TARGET": process.address, "BB_TLS_CA": pki.ca_file}
    admin = {**base, "BB_TOKEN": tokens["admin"]}
    done = bb(admin, "conv", "create", "cli-tls")
    assert done.returncode == 0, done.stderr
    done = bb({"BB_TARGET": process.address}, "--tls-ca", pki.ca_file, "--token", tokens["admin"],
              "put", "cli-tls", "k", "v")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert bb({**admin}, "health").returncode == 0

    denied = bb({**base, "BB_TOKEN": tokens["reader"]}, "put", "cli-tls", "k", "w")
    assert denied.returncode == AUTH_EXIT and "ROLE_REQUIRED" in denied.stderr
    assert bb({**base, "BB_TOKEN": tokens["reader"]}, "get", "cli-tls", "k").stdout.strip() == "v"

    anonymous = bb(base, "get", "cli-tls", "k")
    assert anonymous.returncode == AUTH_EXIT and "CREDENTIALS_MISSING" in anonymous.stderr
    wrong = bb({**base, "BB_TOKEN": "bbt_wrong-token-value"}, "get", "cli-tls", "k")
    assert wrong.returncode == AUTH_EXIT and "CREDENTIALS_INVALID" in wrong.stderr
    plaintext = bb(
        {"BB_TARGET": process.address, "BB_TOKEN": tokens["admin"]}, "get", "cli-tls", "k"
    )
    assert plaintext.returncode == 6  # UNAVAILABLE: the server speaks TLS only
    half = bb({**admin, "BB_TLS_CERT": pki.cert_file}, "get", "cli-tls", "k")
    assert half.returncode == 2 and "--tls-key" in half.stderr

    for run in (done, denied, anonymous, wrong, plaintext, half):
        for token in (*tokens.values(), "bbt_wrong-token-value"):
            assert token not in run.stdout + run.stderr
