"""Bad command-line input is a usage error (exit 2) before anything is sent or written.

Through the real console script and a real registry: an ``--artifact-type``
that is not a media type (``push`` and ``attach``), and a reference naming a
registry without a repository (``127.0.0.1:PORT``), for every command that
parses references.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replicator.errors import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, push_tiny_image, run_cli


def only_error(result: CliResult) -> str:
    assert "Traceback" not in result.output, result.stderr
    lines = result.non_log_stderr_lines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


@pytest.fixture
def readme(tmp_path: Path) -> Path:
    path = tmp_path / "readme.md"
    path.write_text("hello\n")
    return path


# --------------------------------------------------------------------------- --artifact-type

NOT_MEDIA_TYPES = [
    "notatype",
    "application/",
    "/json",
    "application/json/extra",
    "text/plain; charset=utf-8",
    "my type/x",
    "-bad/start",
    "application/vnd.thing@v1",
]


@pytest.mark.parametrize("artifact_type", NOT_MEDIA_TYPES)
def test_push_refuses_an_artifact_type_that_is_not_a_media_type(
    registry_open: RegistryInstance,
    unique_repo: str,
    readme: Path,
    tmp_path: Path,
    artifact_type: str,
) -> None:
    ref = f"{registry_open.host}/{unique_repo}:v1"
    result = run_cli(
        "push", ref, str(readme), f"--artifact-type={artifact_type}", home=tmp_path / "h"
    )
    assert result.code == EXIT_USAGE, result.stderr
    line = only_error(result)
    assert "--artifact-type" in line and "is not a media type" in line
    assert result.stdout == ""
    # Nothing was pushed: the tag does not exist.
    after = run_cli("resolve", ref, home=tmp_path / "h")
    assert after.code == EXIT_NOT_FOUND, after.stderr


@pytest.mark.parametrize(
    "artifact_type", ["readme/example", "application/vnd.dev.cosign.artifact.sig.v1+json"]
)
def test_push_accepts_media_type_artifact_types(
    registry_open: RegistryInstance,
    unique_repo: str,
    readme: Path,
    tmp_path: Path,
    artifact_type: str,
) -> None:
    ref = f"{registry_open.host}/{unique_repo}:v1"
    result = run_cli(
        "push", ref, str(readme), "--artifact-type", artifact_type, home=tmp_path / "h"
    )
    assert result.code == EXIT_OK, result.stderr
    assert f"ArtifactType: {artifact_type}" in result.stdout


def test_attach_refuses_an_artifact_type_that_is_not_a_media_type(
    registry_open: RegistryInstance, unique_repo: str, readme: Path, tmp_path: Path
) -> None:
    push_tiny_image(registry_open, unique_repo, "v1")
    ref = f"{registry_open.host}/{unique_repo}:v1"
    home = tmp_path / "h"
    result = run_cli("attach", ref, str(readme), "--artifact-type", "signature", home=home)
    assert result.code == EXIT_USAGE, result.stderr
    assert "is not a media type" in only_error(result)
    found = run_cli("discover", "-o", "json", ref, home=home)
    assert found.code == EXIT_OK, found.stderr
    assert json.loads(found.stdout)["manifests"] == []


# --------------------------------------------------------------------------- registry only


def commands(host: str, readme: Path, out: Path) -> list[list[str]]:
    """Every command that parses a reference, given ``host`` alone where the reference goes."""
    elsewhere = f"ocidir://{out / 'layout'}:v1"
    return [
        ["resolve", host],
        ["manifest", "fetch", host],
        ["manifest", "delete", "--force", host],
        ["discover", host],
        ["repo", "tags", host],
        ["pull", "-o", str(out / "pulled"), host],
        ["push", host, str(readme)],
        ["attach", "--artifact-type", "a/b", host, str(readme)],
        ["copy", host, elsewhere],
        ["copy", f"{host}/some/repo:v1", host],
    ]


@pytest.mark.parametrize("index", range(10))
def test_every_command_hints_at_the_repository_a_registry_only_reference_lacks(
    registry_open: RegistryInstance, readme: Path, tmp_path: Path, index: int
) -> None:
    host = registry_open.host
    args = commands(host, readme, tmp_path)[index]
    result = run_cli(*args, home=tmp_path / "h")
    assert result.code == EXIT_USAGE, (args, result.stderr)
    line = only_error(result)
    assert line == (
        f'Error: invalid reference "{host}": names a registry but no repository: '
        f"did you mean {host}/<repository>:<tag>?"
    )
    assert not (tmp_path / "pulled").exists() and not (tmp_path / "layout").exists()


@pytest.mark.parametrize("text", ["localhost:5000", "registry.example.com"])
def test_other_registry_only_references_get_the_hint(tmp_path: Path, text: str) -> None:
    result = run_cli("resolve", text, home=tmp_path / "h")
    assert result.code == EXIT_USAGE, result.stderr
    assert f"did you mean {text}/<repository>:<tag>?" in only_error(result)
