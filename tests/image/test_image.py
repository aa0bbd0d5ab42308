"""The built image: its configuration, its user, what it runs."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.image.container import CONFIG_DIR, GID, STATE_DIR, UID, Container

pytestmark = pytest.mark.image

REPO_ROOT = Path(__file__).resolve().parents[2]


def _version() -> str:
    with (REPO_ROOT / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


def test_version_runs_as_the_fixed_non_root_user(container: Callable[[], Container]) -> None:
    c = container()
    version = c.entrypoint("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"replicator {_version()}"
    who = c.run("sh", "-c", "id -u; id -g; echo $HOME")
    assert who.returncode == 0, who.stderr
    assert who.stdout.split() == [str(UID), str(GID), "/home/replicator"]
    print(f"$ replicator --version\n{version.stdout}$ id -u; id -g; echo $HOME\n{who.stdout}")


def test_no_arguments_print_the_help(
    container: Callable[[], Container], image_info: dict[str, Any]
) -> None:
    """ENTRYPOINT plus the default CMD, as `docker run IMAGE` runs it."""
    cmd = image_info["OCIv1"]["config"]["Cmd"]
    result = container().entrypoint(*cmd)
    assert result.returncode == 0, result.stderr
    assert "usage: replicator" in result.stdout


def test_configuration_user_paths_entrypoint_labels(image_info: dict[str, Any]) -> None:
    config = image_info["OCIv1"]["config"]
    assert config["User"] == f"{UID}:{GID}"  # numeric: runAsNonRoot can check it
    assert config["Entrypoint"] == ["replicator"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["DOCKER_CONFIG"] == CONFIG_DIR
    assert env["XDG_STATE_HOME"] == STATE_DIR
    assert env["PATH"].startswith("/opt/replicator/bin:")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "replicator"
    assert labels["org.opencontainers.image.version"] == _version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    for name in ("revision", "created", "base.name"):
        assert labels[f"org.opencontainers.image.{name}"] not in ("", "unknown"), name
    # No HEALTHCHECK: Kubernetes probes are used instead.
    assert not (image_info.get("Docker") or {}).get("config", {}).get("Healthcheck")
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert not [
        line for line in dockerfile.splitlines() if line.strip().upper().startswith("HEALTHCHECK")
    ]


def test_inside_state_is_writable_code_is_not_and_uvloop_is_there(
    container: Callable[[], Container],
) -> None:
    script = f"""
set -u
stat -c '%u:%g %a' {STATE_DIR}
touch {STATE_DIR}/probe && echo state-writable
touch /opt/replicator/probe 2>/dev/null && echo code-writable || echo code-read-only
test -d {CONFIG_DIR} && echo config-dir
python3 -c 'import uvloop; print("uvloop", uvloop.__version__)'
/opt/replicator/bin/python -m pip --version >/dev/null 2>&1 && echo pip || echo no-pip
"""
    result = container().run("sh", "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{UID}:{GID} 700"
    assert lines[1:4] == ["state-writable", "code-read-only", "config-dir"]
    assert lines[4].startswith("uvloop ")
    assert lines[5] == "no-pip"
