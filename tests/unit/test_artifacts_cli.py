"""The artifact commands' command lines, and their output over an OCI layout in process."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from replicator.artifacts.push import ArtifactSpec, check_artifact_type, push_artifact
from replicator.cli.main import build_parser, main
from replicator.errors import UsageError


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


@pytest.mark.parametrize(
    "value",
    [
        "readme/example",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "text/x-shellscript",
        "a/b",
        "application/vnd.a!#$&^_.+-b",
        "x" * 127 + "/" + "y" * 127,
    ],
)
def test_check_artifact_type_accepts_media_types(value: str) -> None:
    assert check_artifact_type(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "notatype",
        "application/",
        "/json",
        "a/b/c",
        "text/plain; charset=utf-8",
        "text/plain;charset=utf-8",
        "my type/x",
        "-bad/start",
        "application/.json",
        "application/vnd@x",
        "application/json\n",
        "x" * 128 + "/y",
        "applicatión/json",
    ],
)
def test_check_artifact_type_refuses_what_is_not_a_media_type(value: str) -> None:
    with pytest.raises(UsageError, match=r"--artifact-type .* is not a media type"):
        check_artifact_type(value, label="--artifact-type")


def test_push_of_a_spec_with_a_bad_artifact_type_refuses_before_writing(tmp_path: Path) -> None:
    from replicator.targets.ocilayout import OCILayoutTarget

    async def attempt() -> None:
        target = OCILayoutTarget(tmp_path / "layout", create=True)
        spec = ArtifactSpec(files=[], artifact_type="not a type")
        await push_artifact(target, "", spec, tags=("v1",))

    with pytest.raises(UsageError, match="artifact type 'not a type' is not a media type"):
        anyio.run(attempt)
    blobs = tmp_path / "layout" / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


def test_push_command_refuses_a_bad_artifact_type_over_a_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "readme.md").write_text("Readme Content\n")
    layout = tmp_path / "layout"
    code = main(
        ["push", f"ocidir://{layout}:v1", str(tmp_path / "readme.md"), "--artifact-type", "sbom"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Error: --artifact-type 'sbom' is not a media type" in err
    assert not layout.exists()
