"""The artifact commands' command lines, and their output over an OCI layout in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replicator.cli.main import build_parser, main


def test_files_may_follow_options_and_options_may_follow_files() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["push", "h.io/r:t", "--artifact-type", "x/y", "a.md", "b:app/json", "-a", "k=v", "dir"]
    )
    assert args.reference == "h.io/r:t"
    assert args.files == ["a.md", "b:app/json", "dir"]
    assert args.artifact_type == "x/y" and args.annotation == ["k=v"]
    args = parser.parse_args(["attach", "--artifact-type", "sig/x", "h.io/r:t", "s.json"])
    assert (args.reference, args.files) == ("h.io/r:t", ["s.json"])


def test_push_defaults_to_the_oras_unknown_artifact_type() -> None:
    args = build_parser().parse_args(["push", "h.io/r:t", "f"])
    assert args.artifact_type == "application/vnd.unknown.artifact.v1"
    assert args.concurrency == 5


def test_attach_requires_an_artifact_type(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["attach", "h.io/r:t", "f"])
    assert exc.value.code == 2
    assert "--artifact-type" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-o", "--output", "--format"])
def test_discover_format_flags(flag: str) -> None:
    args = build_parser().parse_args(["discover", flag, "json", "h.io/r:t", "--depth", "2"])
    assert args.format == "json" and args.depth == 2


def test_manifest_and_repo_subcommands() -> None:
    parser = build_parser()
    assert parser.parse_args(["manifest", "delete", "-f", "h.io/r:t"]).force is True
    fetch = parser.parse_args(["manifest", "fetch", "--pretty", "--descriptor", "h.io/r:t"])
    assert fetch.pretty and fetch.descriptor
    assert parser.parse_args(
        ["repo", "tags", "--include-digest-tags", "h.io/r"]
    ).include_digest_tags


def test_commands_over_a_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "readme.md").write_text("Readme Content\n")
    layout = f"ocidir://{tmp_path / 'layout'}"
    fallback_like = "sha256-" + "ab" * 32

    assert main(["push", f"{layout}:v1,{fallback_like}", str(tmp_path / "readme.md")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "Uploaded  2fdeac43552b readme.md" in out
    assert f"Pushed [oci-layout] {layout}:v1,{fallback_like}" in out
    digest = out[-1].removeprefix("Digest: ")

    assert main(["repo", "tags", layout]) == 0
    assert capsys.readouterr().out == "v1\n"
    assert main(["repo", "tags", "--include-digest-tags", layout]) == 0
    assert capsys.readouterr().out == f"{fallback_like}\nv1\n"

    assert main(["manifest", "fetch", "--descriptor", f"{layout}:v1"]) == 0
    assert json.loads(capsys.readouterr().out)["digest"] == digest

    assert main(["discover", "-o", "json", f"{layout}:v1"]) == 0
    assert json.loads(capsys.readouterr().out) == {"manifests": []}

    assert main(["push", f"{layout}:bad", str(tmp_path / "missing.md")]) == 2
    assert "missing.md: no such file" in capsys.readouterr().err
