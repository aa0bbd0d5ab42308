"""Broken and hostile OCI layouts, through the real console script.

A source layout that is damaged — ``index.json`` not JSON, ``oci-layout``
gone, a manifest or blob missing, truncated or not matching its digest, a
blob that is a symbolic link out of the layout, descriptors whose digest or
tag names try to climb out — ends a copy in one clear ``Error:`` line with the
documented exit code, no traceback, no tag at the destination, and no byte
read from outside the layout reaching it.

A destination layout with planted symbolic links (``index.json`` or a blob
file pointing out of the layout, the ``blobs`` or ``blobs/sha256`` directory
itself a link) never gets a byte written outside the layout; a linked
directory is refused (exit 7).

(Bundles get the same cases once ``bundle import`` lands: not yet, see
docs/RELIABILITY.md.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from replicator.errors import (
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_REGISTRY,
    EXIT_USAGE,
    NotFoundError,
)
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, run_cli
from tests.integration.graphs import GraphBuilder
from tests.integration.test_hostile_registry import assert_one_error, tag_exists


def _layout_with_image(path: Path) -> dict[str, Any]:
    """A layout holding one signed image under ``v1``; its manifest and blob digests."""

    async def go() -> dict[str, Any]:
        target = OCILayoutTarget(path, create=True)
        try:
            g = GraphBuilder(target, "")
            image = await g.image("hostile-layout", tags=["v1"], layer_size=3000)
            sig = await g.referrer(image, "application/vnd.example.signature")
            _, raw = await target.fetch_manifest("", image)
            doc = json.loads(raw)
            return {
                "image": image.digest,
                "signature": sig.digest,
                "config": doc["config"]["digest"],
                "layers": [layer["digest"] for layer in doc["layers"]],
            }
        finally:
            await target.aclose()

    return asyncio.run(go())


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _copy(tmp_path: Path, src: str, dst: str, *extra: str) -> CliResult:
    return run_cli("copy", "-r", "--no-journal", *extra, src, dst, home=tmp_path / "home")


def _index(layout: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return doc


def _write_index(layout: Path, doc: dict[str, Any]) -> None:
    (layout / "index.json").write_text(json.dumps(doc))


# -- broken source layouts -------------------------------------------------------------


def _break_index_not_json(layout: Path, cast: dict[str, Any]) -> None:
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": [')


def _break_no_oci_layout_file(layout: Path, cast: dict[str, Any]) -> None:
    (layout / "oci-layout").unlink()


def _break_manifest_missing(layout: Path, cast: dict[str, Any]) -> None:
    _blob(layout, cast["image"]).unlink()


def _break_manifest_corrupt(layout: Path, cast: dict[str, Any]) -> None:
    path = _blob(layout, cast["image"])
    path.write_bytes(path.read_bytes().replace(b'"layers"', b'"Layers"'))


def _break_layer_missing(layout: Path, cast: dict[str, Any]) -> None:
    _blob(layout, cast["layers"][0]).unlink()


def _break_layer_truncated(layout: Path, cast: dict[str, Any]) -> None:
    path = _blob(layout, cast["layers"][0])
    path.write_bytes(path.read_bytes()[:-10])


def _break_layer_flipped(layout: Path, cast: dict[str, Any]) -> None:
    path = _blob(layout, cast["layers"][0])
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def _break_signature_corrupt(layout: Path, cast: dict[str, Any]) -> None:
    path = _blob(layout, cast["signature"])
    path.write_bytes(path.read_bytes() + b" ")


BROKEN: list[tuple[str, Any, int, str]] = [
    ("index-not-json", _break_index_not_json, EXIT_REGISTRY, "index.json"),
    ("no-oci-layout-file", _break_no_oci_layout_file, EXIT_REGISTRY, "oci-layout"),
    ("manifest-missing", _break_manifest_missing, EXIT_NOT_FOUND, ""),
    ("manifest-corrupt", _break_manifest_corrupt, EXIT_INTEGRITY, ""),
    ("layer-missing", _break_layer_missing, EXIT_NOT_FOUND, ""),
    ("layer-truncated", _break_layer_truncated, EXIT_INTEGRITY, ""),
    ("layer-flipped", _break_layer_flipped, EXIT_INTEGRITY, ""),
]


@pytest.mark.parametrize(("name", "damage", "code", "word"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_source_layout_is_one_clear_error_and_no_tag(
    name: str,
    damage: Any,
    code: int,
    word: str,
    registry_open: RegistryInstance,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    layout = tmp_path / "src"
    cast = _layout_with_image(layout)
    damage(layout, cast)
    result = _copy(tmp_path, f"ocidir://{layout}:v1", f"{registry_open.host}/{unique_repo}:v1")
    assert_one_error(result, code, word)
    assert not tag_exists(registry_open, unique_repo, "v1")
    # Into another layout: no tag there either.
    out = tmp_path / "out"
    result = _copy(tmp_path, f"ocidir://{layout}:v1", f"ocidir://{out}:v1")
    assert_one_error(result, code, word)
    if (out / "index.json").exists():
        assert not any(
            m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"
            for m in _index(out)["manifests"]
        )


def test_corrupt_referrer_in_a_source_layout_is_never_copied(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    """A layout finds referrers by reading its listed manifests: one that does not
    match its digest cannot say whose referrer it is.  It is skipped with a warning
    (``layout.manifest_unreadable``) and never reaches the destination; the image
    and its tag do.  (A registry source fails the copy instead, exit 6, since there
    the listing names the referrer: docs/RELIABILITY.md.)"""
    layout = tmp_path / "src"
    cast = _layout_with_image(layout)
    _break_signature_corrupt(layout, cast)
    result = _copy(tmp_path, f"ocidir://{layout}:v1", f"{registry_open.host}/{unique_repo}:v1")
    assert "Traceback" not in result.output
    assert result.code == 0, result.stderr
    assert "layout.manifest_unreadable" in result.stderr
    assert tag_exists(registry_open, unique_repo, "v1")

    async def signature_absent() -> bool:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            try:
                await t.resolve(unique_repo, cast["signature"])
            except NotFoundError:
                return True
            return False

    assert asyncio.run(signature_absent())


# -- climbing out of a source layout ---------------------------------------------------


def test_source_blob_that_is_a_symlink_out_of_the_layout_is_not_copied(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    layout = tmp_path / "src"
    cast = _layout_with_image(layout)
    secret = tmp_path / "outside-secret.txt"
    secret.write_bytes(b"the contents of a file outside the layout\n" * 100)
    layer = _blob(layout, cast["layers"][0])
    layer.unlink()
    layer.symlink_to(secret)
    result = _copy(tmp_path, f"ocidir://{layout}:v1", f"{registry_open.host}/{unique_repo}:v1")
    assert result.code != 0
    assert_one_error(result, result.code)
    assert result.code in (EXIT_INTEGRITY, EXIT_REGISTRY, EXIT_NOT_FOUND)
    assert not tag_exists(registry_open, unique_repo, "v1")
    leaked = "sha256:" + hashlib.sha256(secret.read_bytes()).hexdigest()

    async def absent() -> bool:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            desc = Descriptor("application/octet-stream", leaked, secret.stat().st_size)
            return not await t.blob_exists(unique_repo, desc)

    assert asyncio.run(absent())


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../../../etc/passwd", "sha256:" + "../" * 20 + "etc/passwd", "md5:../../x"],
    ids=["dotdot", "long-dotdot", "other-algorithm"],
)
def test_descriptor_digest_that_climbs_out_is_refused(
    digest: str, registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    layout = tmp_path / "src"
    _layout_with_image(layout)
    doc = _index(layout)
    doc["manifests"].append(
        {
            "mediaType": mt.OCI_MANIFEST,
            "digest": digest,
            "size": 100,
            "annotations": {"org.opencontainers.image.ref.name": "evil"},
        }
    )
    _write_index(layout, doc)
    result = _copy(tmp_path, f"ocidir://{layout}:evil", f"{registry_open.host}/{unique_repo}:v1")
    assert_one_error(result, result.code)
    assert result.code in (EXIT_REGISTRY, EXIT_USAGE, EXIT_INTEGRITY)
    assert not tag_exists(registry_open, unique_repo, "v1")


def test_tag_names_that_climb_out_are_not_followed_by_all_tags(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    """``ref.name`` values such as ``../../x`` or ``a/../../b`` in a source layout are
    no tags: ``--all-tags`` copies the valid one and never makes up another name."""
    layout = tmp_path / "src"
    cast = _layout_with_image(layout)
    doc = _index(layout)
    entry = next(
        m
        for m in doc["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1"
    )
    for name in ("../../escaped", "a/../../b", "/etc/passwd", "..", "v1/../../x"):
        doc["manifests"].append(
            {**entry, "annotations": {"org.opencontainers.image.ref.name": name}}
        )
    _write_index(layout, doc)
    out = tmp_path / "out"
    result = _copy(tmp_path, f"ocidir://{layout}", f"ocidir://{out}", "--all-tags")
    assert "Traceback" not in result.output
    if result.code == 0:
        names = {
            m.get("annotations", {}).get("org.opencontainers.image.ref.name")
            for m in _index(out)["manifests"]
        } - {None}
        assert names == {"v1"}, names
    else:
        assert_one_error(result, result.code)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    assert cast["image"]


# -- planted links in a destination layout --------------------------------------------


def _fresh_destination(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    asyncio.run(OCILayoutTarget(out, create=True).aclose())
    return out


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_destination_index_json_that_is_a_symlink_out_is_never_written_through(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    _layout_with_image(src)
    out = _fresh_destination(tmp_path)
    victim = tmp_path / "victim" / "index.json"
    victim.parent.mkdir()
    victim.write_text((out / "index.json").read_text())
    (out / "index.json").unlink()
    (out / "index.json").symlink_to(victim)
    before = victim.read_bytes()
    result = _copy(tmp_path, f"ocidir://{src}:v1", f"ocidir://{out}:v1")
    assert "Traceback" not in result.output
    assert victim.read_bytes() == before
    if result.code != 0:
        assert_one_error(result, result.code)


def test_destination_blob_that_is_a_symlink_out_is_never_written_through(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    cast = _layout_with_image(src)
    out = _fresh_destination(tmp_path)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    planted = {}
    for digest in [cast["config"], *cast["layers"], cast["image"]]:
        victim = victim_dir / digest.split(":", 1)[1]
        victim.write_bytes(b"precious data that must not change\n")
        link = _blob(out, digest)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(victim)
        planted[victim] = victim.read_bytes()
    result = _copy(tmp_path, f"ocidir://{src}:v1", f"ocidir://{out}:v1")
    assert "Traceback" not in result.output
    for victim, data in planted.items():
        assert victim.read_bytes() == data, f"{victim.name} was written through a link"
    if result.code != 0:
        assert_one_error(result, result.code)


@pytest.mark.parametrize("linked", ["blobs/sha256", "blobs"])
def test_destination_blobs_directory_that_is_a_symlink_out_gets_nothing_written_outside(
    linked: str, tmp_path: Path
) -> None:
    """A ``blobs`` or ``blobs/sha256`` that is a link out of the destination layout is
    refused with one error (exit 7, the link named): nothing lands in the directory
    it names, and no tag is set."""
    src = tmp_path / "src"
    _layout_with_image(src)
    out = _fresh_destination(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    if linked == "blobs":
        (outside / "sha256").mkdir()
    os.rmdir(out / "blobs" / "sha256")
    if linked == "blobs":
        os.rmdir(out / "blobs")
    (out / linked).symlink_to(outside, target_is_directory=True)
    result = _copy(tmp_path, f"ocidir://{src}:v1", f"ocidir://{out}:v1")
    assert "Traceback" not in result.output
    written = [p for p in outside.rglob("*") if not p.is_dir()]
    assert written == [], "blobs were written outside the layout"
    assert_one_error(result, EXIT_REGISTRY, linked, "symbolic link")
    assert _index(out)["manifests"] == []
