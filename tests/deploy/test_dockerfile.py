"""deploy/docker/Dockerfile, read structurally: no Docker engine is needed (none runs
where the tests run), so these check what a build would produce, not a built image."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from blackboard_server.config import Settings
from tests.deploy.dockerfile import Stage, dockerignore, env_of, ignored, stages

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "python3-dev", "git", "curl", "wget")


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(parsed: tuple[dict[str, str], list[Stage]]) -> Stage:
    return parsed[1][-1]


def scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["scripts"])


def test_multi_stage_from_pinned_slim_python(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    _, found = parsed
    assert len(found) >= 2
    names = {stage.name for stage in found}
    for stage in found:
        if stage.image in names:
            continue
        repository, _, tag = stage.image.partition(":")
        assert tag and tag != "latest", f"{stage.image}: pin a tag"
        assert repository == "python"
        assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), tag


def test_final_stage_copies_the_built_venv_and_builds_nothing(
    parsed: tuple[dict[str, str], list[Stage]], final: Stage
) -> None:
    builder = parsed[1][0]
    assert "pip wheel" in builder.all("RUN")[0].args
    copies = final.all("COPY")
    assert copies and all(copy.flags().get("from") == builder.name for copy in copies)
    for run in final.all("RUN"):
        words = set(re.split(r"[\s;&|]+", run.args))
        assert not words & {"pip", "apt-get", "apt", *BUILD_TOOLS}, run.args
    assert not final.all("ADD")


def test_runs_as_a_fixed_unprivileged_uid(final: Stage) -> None:
    user = final.all("USER")[-1].args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "USER must be numeric so runAsNonRoot can check it"
    assert gid.isdigit() and int(gid) >= 1000
    # The user named by USER is the one the final stage creates.
    created = " ".join(run.args for run in final.all("RUN"))
    arg_uid = next(a.args.partition("=")[2] for a in final.all("ARG") if a.args.startswith("UID"))
    assert arg_uid == uid and "useradd" in created and "--uid ${UID}" in created


def test_entrypoint_is_the_server_script(final: Stage) -> None:
    entrypoint = final.all("ENTRYPOINT")[-1].exec_form()
    assert entrypoint == ["blackboard-server"], "exec form, so SIGTERM reaches the server"
    assert scripts()["blackboard-server"] == "blackboard_server.__main__:main"


def test_environment_is_valid_server_settings(final: Stage) -> None:
    env = env_of(final)
    settings = {k: v for k, v in env.items() if k.startswith("BB_")}
    names = {"BB_" + f.upper() for f in Settings.__dataclass_fields__}
    assert set(settings) <= names, set(settings) - names
    # What every deployment adds: a store, and authentication (required off loopback).
    needed = {
        "BB_REDIS_URL": "redis://redis:6379/0",
        "BB_AUTH": "tokens",
        "BB_AUTH_TOKENS_FILE": "/etc/blackboard/tokens/tokens.json",
    }
    assert not set(needed) & set(settings)
    loaded = Settings.load([], {**settings, **needed})
    assert loaded.health_listen and loaded.listen.startswith("0.0.0.0:")
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "a read-only root cannot take .pyc files"
    exposed = {int(p) for p in final.all("EXPOSE")[-1].args.split()}
    assert {
        int(loaded.listen.rpartition(":")[2]),
        int(loaded.health_listen.rpartition(":")[2]),
    } <= exposed


def test_healthcheck_asks_grpc_health_on_the_health_port(final: Stage, tmp_path: Path) -> None:
    """The HEALTHCHECK command, run for real against a server on a free port."""
    from tests.servers import ServerProcess, free_port

    argv = final.all("HEALTHCHECK")[-1].exec_form()
    assert argv is not None and argv[0] == "bb" and "bb" in scripts()
    target = argv[argv.index("--target") + 1]
    assert target.rpartition(":")[2] == env_of(final)["BB_HEALTH_LISTEN"].rpartition(":")[2]
    health = f"127.0.0.1:{free_port()}"
    server = ServerProcess(tmp_path, "--health-listen", health).start()
    try:
        argv[argv.index("--target") + 1] = health
        cli = [str(Path(sys.executable).parent / argv[0]), *argv[1:]]
        ok = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    finally:
        server.stop()
    down = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert down.returncode == 6, "a stopped server must fail the check"


def test_build_context_has_what_the_dockerfile_copies_and_no_more(
    parsed: tuple[dict[str, str], list[Stage]],
) -> None:
    rules = dockerignore(ROOT / ".dockerignore")
    builder = parsed[1][0]
    for copy in builder.all("COPY"):
        for source in copy.args.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert not ignored(rules, source), f"{source} is left out of the build context"
    assert not ignored(rules, "server/blackboard_server/app.py")
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/servers.py",
        "docs/deploy.md",
        "server/blackboard_server/__pycache__/app.cpython-311.pyc",
        "bench-results/x",
    ):
        assert ignored(rules, path), f"{path} would be sent to the builder"


def test_extras_installed_exist(parsed: tuple[dict[str, str], list[Stage]]) -> None:
    """pip only warns about an unknown extra: a misspelt one would silently install nothing."""
    builder = parsed[1][0]
    extras = next(
        a.args.partition("=")[2] for a in builder.all("ARG") if a.args.startswith("EXTRAS")
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(extras.split(",")) <= set(project["optional-dependencies"])
    assert {"fast", "loadtest"} <= set(extras.split(","))
    assert "bb-loadtest" in project["scripts"]
