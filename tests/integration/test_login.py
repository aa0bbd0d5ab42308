"""``replicator login`` / ``logout`` end to end: real CLI processes, real registries.

Each test gets its own ``DOCKER_CONFIG`` directory; the CLI runs as
``python -m replicator`` with the password on stdin.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from replicator.cli.cmd_login import ask_credentials, normalize_login_host
from replicator.errors import UsageError
from replicator.oci.digest import descriptor_for
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.credentials import resolve_credentials
from replicator.targets.registry.options import Credentials
from tests.infra.registry import RegistryInstance

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli(config_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env["DOCKER_CONFIG"] = str(config_dir)
    return subprocess.run(
        [sys.executable, "-m", "replicator", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def stored_auths(config_dir: Path) -> dict[str, dict[str, str]]:
    path = config_dir / "config.json"
    if not path.exists():
        return {}
    auths: dict[str, dict[str, str]] = json.loads(path.read_text()).get("auths", {})
    return auths


def push_image(instance: RegistryInstance, repo: str) -> str:
    """Push a minimal image ``repo:v1`` as admin; its manifest digest."""
    config = descriptor_for(b"{}", "application/vnd.oci.empty.v1+json")
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.to_json(),
            "layers": [],
        }
    ).encode()
    manifest = descriptor_for(raw, "application/vnd.oci.image.manifest.v1+json")

    async def opener(offset: int) -> AsyncIterator[bytes]:
        yield b"{}"[offset:]

    async def push() -> None:
        async with RegistryTarget(instance.host, instance.options("admin")) as target:
            await target.push_blob(repo, config, opener)
            await target.push_manifest(repo, manifest, raw, ("v1",))

    asyncio.run(push())
    return manifest.digest


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "docker-config"


def test_login_stores_credentials_that_are_then_used_and_logout_removes_them(
    registry_token: RegistryInstance, config_dir: Path, unique_repo: str
) -> None:
    host = registry_token.host
    password = registry_token.users["reader"]
    result = cli(config_dir, "login", host, "-u", "reader", "--password-stdin", stdin=password)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Login Succeeded\n"
    expected = base64.b64encode(f"reader:{password}".encode()).decode()
    assert stored_auths(config_dir) == {host: {"auth": expected}}
    assert stat.S_IMODE((config_dir / "config.json").stat().st_mode) == 0o600
    assert password not in result.stderr

    # The stored credentials are found for the host ...
    env = {"DOCKER_CONFIG": str(config_dir), "PATH": os.environ.get("PATH", "")}
    assert resolve_credentials(host, env=env) == Credentials("reader", password)
    # ... and a command without credential flags authenticates with them.
    digest = push_image(registry_token, unique_repo)
    before = len(registry_token.token_log())
    resolved = cli(config_dir, "resolve", f"{host}/{unique_repo}:v1")
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout == digest + "\n"
    assert any(e["user"] == "reader" for e in registry_token.token_log()[before:])

    result = cli(config_dir, "logout", host)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Removed login credentials for {host}\n"
    assert stored_auths(config_dir) == {}
    assert resolve_credentials(host, env=env) is None

    again = cli(config_dir, "logout", host)
    assert again.returncode == 0
    assert again.stdout == f"Not logged in to {host}\n"

    # Logged out, the same command is anonymous and refused.
    anonymous = cli(config_dir, "resolve", f"{host}/{unique_repo}:v1")
    assert anonymous.returncode == 4, anonymous.stderr
    assert "authentication required" in anonymous.stderr


def test_login_with_wrong_password_fails_and_stores_nothing(
    registry_token: RegistryInstance, config_dir: Path
) -> None:
    secret = "Not-The-Password-99"
    result = cli(
        config_dir, "login", registry_token.host, "-u", "admin", "--password-stdin", stdin=secret
    )
    assert result.returncode == 4, result.stderr
    assert "authentication failed (wrong user name or password?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert secret not in result.stderr + result.stdout
    assert stored_auths(config_dir) == {}


def test_login_to_basic_registry(registry_basic: RegistryInstance, config_dir: Path) -> None:
    user = registry_basic.username
    password = registry_basic.password
    assert user is not None and password is not None
    ok = cli(
        config_dir, "login", registry_basic.host, "-u", user, "--password-stdin", stdin=password
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "Login Succeeded\n"
    assert registry_basic.host in stored_auths(config_dir)

    bad = cli(config_dir / "other", "login", registry_basic.host, "-u", user, "-p", "wrong-pw-1234")
    assert bad.returncode == 4
    assert "wrong user name or password" in bad.stderr
    assert "wrong-pw-1234" not in bad.stderr
    assert stored_auths(config_dir / "other") == {}


def test_login_without_password_off_a_terminal_refuses_clearly(
    registry_basic: RegistryInstance, config_dir: Path
) -> None:
    result = cli(config_dir, "login", registry_basic.host, "-u", "alice")
    assert result.returncode == 2
    assert "standard input is not a terminal" in result.stderr
    assert "--password-stdin" in result.stderr
    assert stored_auths(config_dir) == {}


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("localhost:5000", "localhost:5000"),
        ("https://Registry.Example.com/", "registry.example.com"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("127.0.0.1:5001", "127.0.0.1:5001"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_normalize_login_host(text: str, key: str) -> None:
    assert normalize_login_host(text) == key


@pytest.mark.parametrize("text", ["localhost:5000/repo", "", "bad host", "host:port:x", "-x.com"])
def test_normalize_login_host_rejects_non_hosts(text: str) -> None:
    with pytest.raises(UsageError, match="login"):
        normalize_login_host(text)


def test_ask_credentials_uses_given_values_and_refuses_to_prompt_off_tty() -> None:
    assert ask_credentials("h", "u", "p", stdin=io.StringIO("")) == ("u", "p")
    with pytest.raises(UsageError, match=r"a user name \(-u\) is needed"):
        ask_credentials("h", None, "p", stdin=io.StringIO(""))
    with pytest.raises(UsageError, match="the password is empty"):
        ask_credentials("h", "u", "", stdin=io.StringIO(""))
