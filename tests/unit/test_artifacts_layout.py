"""The artifact layer end to end over a real OCI image layout on disk (no registry)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from replicator.artifacts.delete import delete_graph
from replicator.artifacts.discover import discover_referrers, render_tree
from replicator.artifacts.files import parse_file_arg
from replicator.artifacts.pull import pull_artifact
from replicator.artifacts.push import ArtifactSpec, push_artifact
from replicator.errors import InputError, NotFoundError, UnsafePathError
from replicator.oci import mediatype
from replicator.oci.manifest import parse_manifest
from replicator.targets.ocilayout import OCILayoutTarget


@pytest.fixture
def files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "details").mkdir(parents=True)
    (src / "readme.md").write_text("Readme Content\n")
    (src / "details" / "readme-details.md").write_text("Detailed Content\n")
    (src / "details" / "readme-more-details.md").write_text("More detailed Content\n")
    (src / "sig.json").write_text('{"signature": "x"}\n')
    return src


def test_push_attach_discover_pull_delete_on_a_layout(tmp_path: Path, files: Path) -> None:
    events: list[tuple[str, str]] = []

    async def scenario() -> None:
        target = OCILayoutTarget(tmp_path / "layout", create=True)
        try:
            spec = ArtifactSpec(
                files=[
                    parse_file_arg(f"{files / 'readme.md'}:application/markdown"),
                    parse_file_arg(str(files / "details")),
                ],
                artifact_type="readme/example",
                annotations={"team": "net"},
            )
            pushed = await push_artifact(
                target, "", spec, tags=("readme",), on_event=lambda a, d, n: events.append((a, n))
            )
            desc, raw = await target.fetch_manifest("", "readme")
            assert desc.digest == pushed.descriptor.digest
            m = parse_manifest(raw)
            assert m.artifact_type == "readme/example"
            assert m.config is not None and m.config.digest == mediatype.EMPTY_JSON_DIGEST
            assert [layer.title for layer in m.layers] == ["readme.md", "details"]
            assert m.annotations["team"] == "net"
            assert "org.opencontainers.image.created" in m.annotations

            sig = ArtifactSpec(
                files=[parse_file_arg(f"{files / 'sig.json'}:application/json")],
                artifact_type="signature/example",
                subject=desc,
            )
            attached = await push_artifact(target, "", sig)
            nodes = await discover_referrers(target, "", desc)
            assert render_tree("layout:readme", nodes) == (
                f"layout:readme\n└── signature/example\n    └── {attached.descriptor.digest}\n"
            )

            out = tmp_path / "download"
            _, placed = await pull_artifact(target, "", "readme", str(out))
            assert sorted(p.title for p in placed) == ["details", "readme.md"]
            assert (out / "readme.md").read_bytes() == b"Readme Content\n"
            assert (out / "details" / "readme-more-details.md").read_text() == (
                "More detailed Content\n"
            )
            assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []

            deleted = await delete_graph(target, "", desc)
            assert [x.digest for x in deleted] == [attached.descriptor.digest, desc.digest]
            assert await target.tags("") == []
            with pytest.raises(NotFoundError):
                await target.fetch_manifest("", attached.descriptor.digest)
        finally:
            await target.aclose()

    anyio.run(scenario)
    assert ("Uploaded", "readme.md") in events and ("Uploaded", "details") in events
    assert ("Uploaded", mediatype.OCI_EMPTY) in events or ("Exists", mediatype.OCI_EMPTY) in events


def test_annotation_file_applies_per_title(tmp_path: Path, files: Path) -> None:
    async def scenario() -> None:
        target = OCILayoutTarget(tmp_path / "layout", create=True)
        try:
            spec = ArtifactSpec(
                files=[parse_file_arg(str(files / "readme.md"))],
                artifact_type="a/b",
                annotation_file={
                    "$manifest": {"org.opencontainers.image.created": "2023-01-10T14:44:06Z"},
                    "$config": {"c": "1"},
                    "readme.md": {"x": "y"},
                },
            )
            result = await push_artifact(target, "", spec, tags=("t",))
            _, raw = await target.fetch_manifest("", result.descriptor)
            doc = json.loads(raw)
            assert doc["annotations"] == {
                "org.opencontainers.image.created": "2023-01-10T14:44:06Z"
            }
            assert doc["config"]["annotations"] == {"c": "1"}
            assert doc["layers"][0]["annotations"] == {
                "org.opencontainers.image.title": "readme.md",
                "x": "y",
            }
            assert doc["layers"][0]["mediaType"] == mediatype.OCI_LAYER
            bad = ArtifactSpec(
                files=spec.files, artifact_type="a/b", annotation_file={"nope.md": {"x": "y"}}
            )
            with pytest.raises(InputError, match="not a pushed file"):
                await push_artifact(target, "", bad)
        finally:
            await target.aclose()

    anyio.run(scenario)


def test_pull_replaces_existing_paths_without_following_links(tmp_path: Path, files: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    out = tmp_path / "out"
    (out / "details").mkdir(parents=True)
    (out / "details" / "stale.md").write_text("old\n")
    (out / "readme.md").symlink_to(victim)

    async def scenario() -> None:
        target = OCILayoutTarget(tmp_path / "layout", create=True)
        try:
            spec = ArtifactSpec(
                files=[
                    parse_file_arg(str(files / "readme.md")),
                    parse_file_arg(str(files / "details")),
                ],
                artifact_type="readme/example",
            )
            await push_artifact(target, "", spec, tags=("v1",))
            await pull_artifact(target, "", "v1", str(out))
        finally:
            await target.aclose()

    anyio.run(scenario)
    assert victim.read_text() == "untouched\n"
    assert not (out / "readme.md").is_symlink()
    assert (out / "readme.md").read_text() == "Readme Content\n"
    assert sorted(p.name for p in (out / "details").iterdir()) == [
        "readme-details.md",
        "readme-more-details.md",
    ]


def test_pull_refuses_a_title_below_a_symlinked_directory(tmp_path: Path, files: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside)

    async def scenario() -> None:
        target = OCILayoutTarget(tmp_path / "layout", create=True)
        try:
            layer = parse_file_arg(str(files / "readme.md"))
            spec = ArtifactSpec(
                files=[layer, type(layer)(layer.path, "sub/readme.md", layer.media_type, False)],
                artifact_type="readme/example",
            )
            await push_artifact(target, "", spec, tags=("v1",))
            with pytest.raises(UnsafePathError, match="symbolic link"):
                await pull_artifact(target, "", "v1", str(out))
        finally:
            await target.aclose()

    anyio.run(scenario)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["sub"]
