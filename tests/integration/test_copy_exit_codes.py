"""A failed copy exits with the code of its most severe cause, and the report lists each.

A scheduler must tell a wrong password from a partial copy by the exit code
alone: the causes met inside a copy (after the root was read) keep their own
codes — 4 for credentials, 6 for content that does not verify, 2 for a
selection the source cannot satisfy — instead of all becoming 9.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from replicator.errors import EXIT_AUTH, EXIT_INTEGRITY, EXIT_USAGE
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, run_cli
from tests.integration.graphs import GraphBuilder


def _seed(instance: RegistryInstance, repo: str, *, index: bool = False) -> str:
    async def main() -> str:
        async with RegistryTarget(instance.host, instance.options()) as reg:
            g = GraphBuilder(reg, repo)
            if index:
                return (await g.multiarch("multi", tags=["v1"]))[0].digest
            return (await g.image("one", layers=2, layer_size=4096, tags=["v1"])).digest

    return asyncio.run(main())


def _docker_config(home: Path, host: str, user: str, password: str) -> None:
    docker = home / ".docker"
    docker.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def _report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _one_error_line(result: CliResult) -> str:
    lines = result.non_log_stderr_lines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_wrong_password_at_the_destination_exits_4_not_9(
    registry_open: RegistryInstance,
    registry_basic: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    _seed(registry_open, str(unique_repo))
    _docker_config(tmp_path, registry_basic.host, "alice", "not-the-password")
    report = tmp_path / "report.json"
    result = run_cli(
        "copy",
        f"{registry_open.host}/{unique_repo}:v1",
        f"{registry_basic.host}/{unique_repo}:v1",
        "--no-journal",
        "--report",
        str(report),
        home=tmp_path,
    )
    assert result.code == EXIT_AUTH, result.stderr
    line = _one_error_line(result)
    assert "destination" in line and "not-the-password" not in result.output
    data = _report(report)
    assert data["exit_code"] == EXIT_AUTH
    assert data["causes"] and all(c["exit_code"] == EXIT_AUTH for c in data["causes"])
    assert data["causes"][0]["error"] == "AuthenticationError"


def test_source_blob_with_wrong_bytes_exits_6(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    _seed(registry_open, str(unique_repo))
    proxy = fault_proxy(registry_open)
    proxy.flip("GET", r"/blobs/sha256:", offset=10, times=None)
    report = tmp_path / "report.json"
    result = run_cli(
        "copy",
        f"{proxy.host}/{unique_repo}:v1",
        f"{registry_open.host}/{unique_repo}-dst:v1",
        "--no-journal",
        "--report",
        str(report),
        home=tmp_path,
    )
    assert result.code == EXIT_INTEGRITY, result.stderr
    assert "source" in _one_error_line(result)
    data = _report(report)
    assert data["exit_code"] == EXIT_INTEGRITY
    assert {c["error"] for c in data["causes"]} == {"IntegrityError"}
    assert all(c["side"] == "source" for c in data["causes"])


def test_unknown_platform_exits_2_and_names_what_the_index_has(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    _seed(registry_open, str(unique_repo), index=True)
    result = run_cli(
        "copy",
        "--platform",
        "linux/s390x",
        f"{registry_open.host}/{unique_repo}:v1",
        f"{registry_open.host}/{unique_repo}-dst:v1",
        "--no-journal",
        home=tmp_path,
    )
    assert result.code == EXIT_USAGE, result.stderr
    line = _one_error_line(result)
    assert "linux/s390x" in line and "linux/amd64" in line, line


def test_the_most_severe_cause_wins_and_every_cause_is_reported(
    registry_open: RegistryInstance,
    registry_basic: RegistryInstance,
    fault_proxy: Any,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    """Two jobs: one source blob corrupt (6), one destination refusing the password (4)."""
    _seed(registry_open, str(unique_repo))
    _seed(registry_open, f"{unique_repo}-b")
    proxy = fault_proxy(registry_open)
    proxy.flip("GET", rf"/{unique_repo}/blobs/sha256:", offset=10, times=None)
    _docker_config(tmp_path, registry_basic.host, "alice", "not-the-password")
    pairs = tmp_path / "pairs"
    pairs.write_text(
        f"{proxy.host}/{unique_repo}:v1 {registry_open.host}/{unique_repo}-dst:v1\n"
        f"{registry_open.host}/{unique_repo}-b:v1 {registry_basic.host}/{unique_repo}-b:v1\n"
    )
    report = tmp_path / "report.json"
    result = run_cli(
        "copy",
        "--keep-going",
        "--from-file",
        str(pairs),
        "--no-journal",
        "--report",
        str(report),
        home=tmp_path,
    )
    assert result.code == EXIT_AUTH, result.stderr
    data = _report(report)
    codes = {c["exit_code"] for c in data["causes"]}
    assert codes == {EXIT_AUTH, EXIT_INTEGRITY}, data["causes"]
    assert "most severe cause" in _one_error_line(result)
