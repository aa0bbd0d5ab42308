"""Incremental bundles against real registries.

A first bundle of registry A is imported into B; its receipt comes back.  Then A gets new
tags (a new image, a tag on an old image) and new signatures on old images (one on an image,
one on an old SBOM: a referrer of a referrer the base holds).  The next bundle, built against
the receipt, holds only the new manifests and blobs — counted against the graphs themselves —
imports onto B, and B equals A tag for tag.  Imported onto an empty registry it stops before
writing anything, naming what the destination lacks.  Built against the first bundle's
``bundle.json`` instead of the receipt, it holds the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from replicator.bundle.documents import load_bundle_document
from replicator.graph.walk import snapshot_graph
from replicator.oci import mediatype as mt
from tests.infra.registry import RegistryInstance
from tests.integration.bundle_helpers import assert_same_tags, make_key, registry, write_requests
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder

REPOS = ("team/api", "team/web")


def _first_world(a: RegistryInstance) -> dict[str, Any]:
    async def build() -> dict[str, Any]:
        target = registry(a)
        try:
            out = {}
            for repo in REPOS:
                g = GraphBuilder(target, repo)
                for tag in ("v1", "v2"):
                    out[(repo, tag)] = await g.signed_image(f"{repo}:{tag}", tags=[tag])
            return out
        finally:
            await target.aclose()

    return anyio.run(build)


def _content(
    a: RegistryInstance, tags: list[tuple[str, str]]
) -> tuple[set[tuple[str, str]], set[str]]:
    """``(repository, manifest digest)`` pairs and blob digests of every tag's graph at A."""

    async def walk() -> tuple[set[tuple[str, str]], set[str]]:
        target = registry(a)
        try:
            manifests: set[tuple[str, str]] = set()
            blobs: set[str] = set()
            for repo, tag in tags:
                snap = await snapshot_graph(target, repo, tag)
                manifests |= {(repo, d) for d in snap.manifests}
                blobs |= set(snap.blobs)
            return manifests, blobs
        finally:
            await target.aclose()

    return anyio.run(walk)


def _grow(a: RegistryInstance, first: dict[str, Any]) -> None:
    """New tags and new signatures on old images at A."""

    async def build() -> None:
        target = registry(a)
        try:
            api = GraphBuilder(target, "team/api")
            await api.signed_image("team/api:v3", tags=["v3"])  # a new signed image
            await api.referrer(
                first[("team/api", "v1")].image, SIGNATURE_TYPE
            )  # new sig, old image
            web = GraphBuilder(target, "team/web")
            old_sbom = first[("team/web", "v1")].sbom
            await web.referrer(old_sbom, SIGNATURE_TYPE)  # a second signature of an old SBOM
            v2 = first[("team/web", "v2")].image
            _, raw = await target.fetch_manifest("team/web", v2)
            await web.manifest(raw, mt.OCI_MANIFEST, ["stable"])  # a new tag on an old image
        finally:
            await target.aclose()

    anyio.run(build)


def _tags(a: RegistryInstance) -> list[tuple[str, str]]:
    async def listing() -> list[tuple[str, str]]:
        target = registry(a)
        try:
            return [
                (repo, tag)
                for repo in REPOS
                for tag in await target.tags(repo)
                if not tag.startswith("sha256-")
            ]
        finally:
            await target.aclose()

    return anyio.run(listing)


def test_an_incremental_bundle_holds_only_what_is_new_and_needs_its_base(
    registry_factory: Callable[..., Any], fault_proxy: Callable[..., Any], tmp_path: Path
) -> None:
    a = registry_factory("open").instance
    b = registry_factory("open").instance
    c = registry_factory("open").instance
    first = _first_world(a)
    journal = str(tmp_path / "journal.sqlite")
    refs = [f"{a.host}/{repo}" for repo in REPOS]

    one = tmp_path / "bundle-1"
    made = run_cli(
        "bundle", "create", "-o", str(one), "--journal", journal, *refs, home=tmp_path, timeout=300
    )
    assert made.code == 0, made.stderr[-3000:]
    key, pub = make_key(tmp_path)
    _, other_pub = make_key(tmp_path, "other")
    imported = run_cli(
        "bundle", "import", str(one), f"{b.host}/m", "--journal", journal, "--sign-key", str(key),
        home=tmp_path, timeout=300,
    )  # fmt: skip
    assert imported.code == 0, imported.stderr[-3000:]
    receipt = tmp_path / "bundle-1.receipt.json"
    before_tags = _tags(a)
    before_manifests, before_blobs = _content(a, before_tags)
    assert_same_tags(a, before_tags, b, prefix="m")

    _grow(a, first)
    after_tags = _tags(a)
    after_manifests, after_blobs = _content(a, after_tags)
    new_manifests = {d for _, d in after_manifests - before_manifests}
    new_blobs = after_blobs - before_blobs
    assert len(new_manifests) == 6 and new_blobs  # image + sig + SBOM + SBOM sig, two sigs

    # a receipt signed by another key than the one required is refused, nothing created
    refused_base = run_cli(
        "bundle", "create", "-o", str(tmp_path / "never"), "--base", str(receipt),
        "--base-key", str(other_pub), "--no-journal", *refs, home=tmp_path,
    )  # fmt: skip
    assert refused_base.code == 6 and "does not verify" in refused_base.stderr
    assert not (tmp_path / "never").exists()

    two = tmp_path / "bundle-2"
    made = run_cli(
        "bundle", "create", "-o", str(two), "--base", str(receipt), "--base-key", str(pub),
        "--journal", journal, *refs, home=tmp_path, timeout=300,
    )  # fmt: skip
    assert made.code == 0, made.stderr[-3000:]
    doc, _, _ = load_bundle_document(two)
    assert set(doc.content.manifests) == new_manifests
    assert set(doc.content.blobs) == new_blobs
    assert doc.base is not None and doc.base.kind == "receipt"
    shown = run_cli("bundle", "show", str(two), home=tmp_path)
    assert shown.code == 0 and f"Incremental to receipt {doc.base.content_digest}" in shown.stdout
    assert f"{len(new_manifests)} manifests, {len(new_blobs)} blobs" in shown.stdout
    assert sorted(
        (r, t) for r, repo in doc.content.repositories.items() for t in repo.tags
    ) == sorted(after_tags)

    # against the first bundle's bundle.json: the same content
    three = tmp_path / "bundle-3"
    made = run_cli(
        "bundle", "create", "-o", str(three), "--base", str(one / "bundle.json"), "--no-journal",
        *refs, home=tmp_path, timeout=300,
    )  # fmt: skip
    assert made.code == 0, made.stderr[-3000:]
    doc3, _, _ = load_bundle_document(three)
    assert set(doc3.content.manifests) == new_manifests and set(doc3.content.blobs) == new_blobs

    # onto an empty registry: refused before anything is written
    proxy = fault_proxy(c)
    refused = run_cli(
        "bundle", "import", str(two), f"{proxy.host}/m", "--no-journal", home=tmp_path, timeout=120
    )
    assert refused.code == 9, refused.stderr[-2000:]
    assert f"Error: {proxy.host}/m lacks " in refused.stderr
    assert "the bundle's base" in refused.stderr and "nothing was written" in refused.stderr
    assert write_requests(proxy.stats()) == 0
    assert proxy.stats().requests(method="HEAD") > 0

    # onto B, which holds the base: B equals A
    done = run_cli(
        "bundle",
        "import",
        str(two),
        f"{b.host}/m",
        "--journal",
        journal,
        home=tmp_path,
        timeout=300,
    )
    assert done.code == 0, done.stderr[-3000:]
    assert_same_tags(a, after_tags, b, prefix="m")
    second_receipt = json.loads((tmp_path / "bundle-2.receipt.json").read_text())
    held = second_receipt["content"]
    assert set(held["manifests"]) == {d for _, d in after_manifests}
    assert set(held["blobs"]) == after_blobs
