"""Per-registry credentials of a sync config, against Basic and token registries.

The source is the htpasswd (Basic) registry, its password read from an
environment variable; the destination is the token registry, its user name
from a variable and its password from a file next to the config.  The
process's own credential sources (``REPLICATOR_*``, Docker config) are empty:
only the config can have opened them.  A variable that is unset, and a wrong
password, fail with a message naming the key and never the secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder, assert_same_graph
from tests.integration.sync_helpers import run_sync, with_target, write_config


def _config(path: Path, src: RegistryInstance, dst: RegistryInstance, base: str) -> Path:
    return write_config(
        path,
        f"""\
version: 1
registries:
  {src.host}:
    credentials: {{username: alice, password-env: SRC_PASSWORD}}
  {dst.host}:
    credentials:
      username-env: DST_USER
      password-file: secrets/dst-password
jobs:
  - name: promote
    source: {src.host}/{base}/api
    destinations: [{dst.host}/{base}/api]
    tags: {{include: [v1]}}
""",
    )


def test_credentials_from_env_and_file_for_basic_and_token_registries(
    registry_basic: RegistryInstance,
    registry_token: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = str(unique_repo)

    async def seed(t: RegistryTarget) -> None:
        await GraphBuilder(t, f"{base}/api").signed_image("api", tags=["v1"])

    with_target(registry_basic, seed)
    config = _config(tmp_path / "sync.yaml", registry_basic, registry_token, base)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    password_file = secrets_dir / "dst-password"
    password_file.write_text(registry_token.users["admin"] + "\n")
    password_file.chmod(0o600)
    alice = registry_basic.users["alice"]
    monkeypatch.setenv("DST_USER", "admin")

    # The source's variable is unset: the job fails naming file, line, key and variable.
    monkeypatch.delenv("SRC_PASSWORD", raising=False)
    unset = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert unset.code == 2, unset.cli.stderr[-2000:]
    assert (
        f"sync.yaml:4: registries[{registry_basic.host}].credentials.password-env: "
        "environment variable SRC_PASSWORD is not set"
    ) in unset.cli.stderr

    # A wrong password: an authentication failure (exit 4), the secret never shown.
    monkeypatch.setenv("SRC_PASSWORD", "not-" + alice)
    wrong = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert wrong.code == 4, wrong.cli.stderr[-2000:]
    assert "not-" + alice not in wrong.cli.output

    monkeypatch.setenv("SRC_PASSWORD", alice)
    run = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert run.code == 0, run.cli.stderr[-2000:]
    for secret in (alice, registry_token.users["admin"]):
        assert secret not in run.cli.output
        assert secret not in (tmp_path / "sync-report.json").read_text()

    async def compare() -> None:
        async with (
            RegistryTarget(registry_basic.host, registry_basic.options()) as src,
            RegistryTarget(registry_token.host, registry_token.options("admin")) as dst,
        ):
            await assert_same_graph(src, f"{base}/api", "v1", dst, f"{base}/api", "v1")

    anyio.run(compare)

    audit = run_sync("verify", config, "--deep", home=tmp_path)
    assert audit.code == 0, audit.stdout + audit.cli.stderr[-2000:]
