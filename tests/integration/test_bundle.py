"""``bundle create|verify|import`` against real registries: a round trip of a world of signed
images, indexes, Docker manifests and SBOM signatures through a bundle of small parts (split
blobs), into a registry and into a layout that skopeo reads; and every kind of tampering,
found by ``verify`` and by ``import`` with no request at all reaching the destination."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks.world import WorldSpec, build_world
from replicator.bundle.documents import load_bundle_document
from replicator.bundle.signing import SigningKey
from tests.infra.registry import RegistryInstance
from tests.integration.bundle_helpers import (
    assemble,
    assert_same_tags,
    make_key,
    registry,
    skopeo_inspect,
    write_requests,
)
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder

PART = "8KiB"


def _world(instance: RegistryInstance, prefix: str) -> list[tuple[str, str]]:
    """12 tags of the benchmark world's four kinds (OCI, Docker, OCI index, manifest list),
    each signed with an SBOM and the SBOM's signature; plus one image with a 100 KiB layer."""

    async def build() -> list[tuple[str, str]]:
        target = registry(instance)
        try:
            spec = WorldSpec(prefix=prefix, repositories=3, tags_per_repo=4)
            world = await build_world(target, instance.host, spec)
            tags = [(repo, tag) for repo, tag, _, _ in world.roots]
            g = GraphBuilder(target, f"{prefix}/big")
            signed = await g.signed_image("big", tags=["v1"], layers=1, layer_size=100_000)
            assert signed.image
            tags.append((f"{prefix}/big", "v1"))
            return tags
        finally:
            await target.aclose()

    return anyio.run(build)


def _config(path: Path, host: str, prefix: str) -> Path:
    path.write_text(
        f"""\
version: 1
jobs:
  - name: world
    source: {{registry: {host}, repositories: ["{prefix}/**"]}}
    destinations: ["ocidir://./unused"]
"""
    )
    return path


def test_a_world_travels_through_a_bundle_of_small_parts_digest_for_digest(
    registry_factory: Callable[..., Any], tmp_path: Path
) -> None:
    a = registry_factory("open").instance
    b = registry_factory("open").instance
    tags = _world(a, "w")
    key, pub = make_key(tmp_path)
    config = _config(tmp_path / "bundle.yaml", a.host, "w")
    out = tmp_path / "media" / "bundle-1"
    journal = str(tmp_path / "journal.sqlite")

    made = run_cli(
        "bundle", "create", str(config), "-o", str(out), "--max-part-size", PART,
        "--sign-key", str(key), "--journal", journal, home=tmp_path, timeout=300,
    )  # fmt: skip
    assert made.code == 0, made.stderr[-3000:]
    assert f"Bundled {len(tags)} tags of 4 repositories" in made.stdout
    doc, _, _ = load_bundle_document(out)
    assert all(p.size <= 8192 for p in doc.parts)
    assert sum(1 for spans in doc.spans.values() if len({s.part for s in spans}) > 1) >= 5
    assert doc.jobs[0]["name"] == "world"

    checked = run_cli("bundle", "verify", str(out), "--key", str(pub), home=tmp_path)
    assert checked.code == 0, checked.stderr[-2000:]
    assert f"signature verified with {pub}" in checked.stdout

    imported = run_cli(
        "bundle", "import", str(out), f"{b.host}/mirror", "--key", str(pub), "--journal", journal,
        home=tmp_path, timeout=300,
    )  # fmt: skip
    assert imported.code == 0, imported.stderr[-3000:]
    assert "Warning" not in imported.stderr  # e.g. v1 of two repositories taken for one source
    assert_same_tags(a, tags, b, prefix="mirror")
    receipt = json.loads((tmp_path / "media" / "bundle-1.receipt.json").read_text())
    assert receipt["destination"] == f"{b.host}/mirror"
    assert receipt["bundle"]["contentDigest"] == doc.content_digest

    # into a layout: every graph, and skopeo reads it
    layout = tmp_path / "layout"
    into_layout = run_cli(
        "bundle", "import", str(out), f"ocidir://{layout}", "--no-journal",
        "--receipt", str(tmp_path / "layout-receipt.json"), home=tmp_path, timeout=300,
    )  # fmt: skip
    assert into_layout.code == 0, into_layout.stderr[-3000:]
    assert_same_tags(a, tags, layout)
    repo, tag = tags[6]  # an OCI index
    assert (
        skopeo_inspect(f"oci:{layout}:{repo}:{tag}")["Digest"]
        == doc.content.repositories[repo].tags[tag]
    )

    # the parts concatenated are a layout too, with every tag and referrer
    assembled = assemble(out, tmp_path / "assembled")
    assert_same_tags(a, tags, assembled)
    # (skopeo's oci: transport reads OCI media types only: not the Docker manifests)
    for repo, tag in (tags[0], tags[-1]):  # an OCI image; the image with a split layer
        inspected = skopeo_inspect(f"oci:{assembled}:{repo}:{tag}")
        assert inspected["Digest"] == doc.content.repositories[repo].tags[tag]


# --------------------------------------------------------------------- tampering


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, registries: Any) -> dict[str, Any]:
    """A signed bundle of two signed images (one with a 40 KiB layer) in 16 KiB parts."""
    a = registries.get("open")
    home = tmp_path_factory.mktemp("sealed")

    async def build() -> None:
        target = registry(a)
        try:
            g = GraphBuilder(target, "tamper/app")
            await g.signed_image("app", tags=["v1"], layers=2, layer_size=40_000)
            await g.signed_image("app2", tags=["v2"])
        finally:
            await target.aclose()

    anyio.run(build)
    key, pub = make_key(home)
    other_key, _ = make_key(home, "other")
    out = home / "bundle"
    made = run_cli(
        "bundle", "create", "-o", str(out), "--max-part-size", "16KiB", "--sign-key", str(key),
        "--no-journal", f"{a.host}/tamper/app", home=home, timeout=300,
    )  # fmt: skip
    assert made.code == 0, made.stderr[-3000:]
    return {"bundle": out, "pub": pub, "other_key": other_key, "home": home}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _tamper(bundle: Path, how: str, other_key: Path) -> str:
    """Damage ``bundle``; what the error must name."""
    doc, _, _ = load_bundle_document(bundle)
    if how == "flipped byte":
        digest, spans = max(doc.spans.items(), key=lambda kv: kv[1][0].length)
        part = doc.parts[spans[0].part].name
        _flip(bundle / part, spans[0].offset + 1000)
        return f"{part}: blob {digest}"
    if how == "truncated part":
        part = doc.parts[1]
        (bundle / part.name).write_bytes((bundle / part.name).read_bytes()[: part.size // 2])
        return f"{part.name}: {part.size // 2} bytes, bundle.json says {part.size} (truncated)"
    if how == "missing part":
        (bundle / doc.parts[-1].name).unlink()
        return f"{doc.parts[-1].name}: missing"
    if how == "extra file":
        (bundle / "README.txt").write_text("not part of the bundle\n")
        return "README.txt: unexpected file in the bundle"
    if how == "edited bundle.json":
        data = json.loads((bundle / "bundle.json").read_text())
        tags = data["repositories"]["tamper/app"]["tags"]
        tags["v1"] = tags["v2"]
        (bundle / "bundle.json").write_text(json.dumps(data, indent=1))
        return "bundle.json.sig: does not verify"
    if how == "signed by another key":
        raw = (bundle / "bundle.json").read_bytes()
        (bundle / "bundle.json.sig").write_bytes(SigningKey.load(other_key).sign(raw))
        return "bundle.json.sig: does not verify"
    assert how == "missing signature"
    (bundle / "bundle.json.sig").unlink()
    return "bundle.json.sig: missing"


TAMPERING = [
    "flipped byte",
    "truncated part",
    "missing part",
    "extra file",
    "edited bundle.json",
    "signed by another key",
    "missing signature",
]


@pytest.mark.parametrize("how", TAMPERING)
def test_tampering_is_found_by_verify_and_import_writes_nothing(
    sealed: dict[str, Any],
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., Any],
    tmp_path: Path,
    how: str,
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(sealed["bundle"], bundle)
    named = _tamper(bundle, how, sealed["other_key"])
    pub = str(sealed["pub"])

    verified = run_cli("bundle", "verify", str(bundle), "--key", pub, home=tmp_path)
    assert verified.code == 6, verified.stderr[-2000:]
    error = next(line for line in verified.stderr.splitlines() if line.startswith("Error: "))
    assert error.startswith(f"Error: bundle {bundle}: {named}"), error

    proxy = fault_proxy(registry_open)
    imported = run_cli(
        "bundle", "import", str(bundle), f"{proxy.host}/tampered", "--key", pub, "--no-journal",
        home=tmp_path, timeout=120,
    )  # fmt: skip
    assert imported.code == 6, imported.stderr[-2000:]
    assert any(
        line.startswith(f"Error: bundle {bundle}: ") for line in imported.stderr.splitlines()
    )
    stats = proxy.stats()
    assert write_requests(stats) == 0
    assert stats.log == []  # not even a read: nothing is asked before the bundle verified
    assert not (tmp_path / "bundle.receipt.json").exists()


def test_an_edited_bundle_json_is_found_without_a_key(
    sealed: dict[str, Any], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(sealed["bundle"], bundle)
    _tamper(bundle, "edited bundle.json", sealed["other_key"])
    verified = run_cli("bundle", "verify", str(bundle), home=tmp_path)
    assert verified.code == 6
    assert f"Error: bundle {bundle}: bundle.json: edited after it was written" in verified.stderr


def test_a_promotion_gate_leaves_refused_tags_out_of_a_complete_bundle(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    async def build() -> None:
        target = registry(registry_open)
        try:
            g = GraphBuilder(target, str(unique_repo))
            await g.signed_image("signed", tags=["v1"])
            await g.image("unsigned", tags=["v2"])
        finally:
            await target.aclose()

    anyio.run(build)
    config = tmp_path / "gate.yaml"
    config.write_text(
        f"""\
version: 1
jobs:
  - name: gated
    source: {registry_open.host}/{unique_repo}
    destinations: ["ocidir://./unused"]
    require: [{SIGNATURE_TYPE}]
"""
    )
    out = tmp_path / "bundle"
    made = run_cli("bundle", "create", str(config), "-o", str(out), "--no-journal", home=tmp_path)
    assert made.code == 10, made.stderr[-3000:]
    assert (
        f"Refused by its promotion gate, left out: {registry_open.host}/{unique_repo}:v2"
        in made.stderr
    )
    doc, _, _ = load_bundle_document(out)
    assert sorted(doc.content.repositories[str(unique_repo)].tags) == ["v1"]
    assert run_cli("bundle", "verify", str(out), home=tmp_path).code == 0
