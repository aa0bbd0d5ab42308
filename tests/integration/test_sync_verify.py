"""``replicator verify`` finds every kind of difference made out of band, and passes after a sync.

A config job is synced to a registry without the referrers API (referrers
listed through fallback indexes).  Then, out of band, at the destination: a tag
is moved, a source tag is added whose manifest the destination already holds
(tag missing), an index child is deleted (manifest missing), a layer blob is
deleted (blob missing, found with ``--deep`` only), a second-level referrer is
deleted while its subject's index still lists it (referrer missing), and a
subject's fallback index is rewritten without one of its referrers (index entry
missing).  ``verify`` lists each, exits 9 and writes nothing; a plain ``sync``
repairs what its presence checks can see, ``sync --deep`` the rest, and
``verify --deep`` passes again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicator.oci import mediatype as mt
from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder
from tests.integration.sync_helpers import (
    WRITING_METHODS,
    SyncRun,
    http,
    run_sync,
    with_target,
    write_config,
)

KINDS = (
    "tag-moved",
    "tag-missing",
    "manifest-missing",
    "blob-missing",
    "referrer-missing",
    "index-entry-missing",
)


def _seed(reg: RegistryInstance, repo: str) -> dict[str, Any]:
    async def work(t: RegistryTarget) -> dict[str, Any]:
        b = GraphBuilder(t, repo)
        _, images = await b.multiarch("multi", tags=["multi"])
        out: dict[str, Any] = {"child": images[1].digest}
        for tag in ("retagged", "blob", "deep", "listing", "aliased"):
            out[tag] = await b.signed_image(tag, tags=[tag])
        return out

    return with_target(reg, work)


def _found(run: SyncRun) -> set[tuple[str, str]]:
    return {(d["kind"], d["digest"]) for d in run.report.get("differences", [])}


def test_verify_finds_every_kind_of_difference_and_passes_after_a_sync(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    src_repo, dst_repo = f"{base}/app", f"{base}/prod"
    g = _seed(registry_open, src_repo)
    proxy = fault_proxy(registry_open)
    config = write_config(
        tmp_path / "sync.yaml",
        f"""\
version: 1
jobs:
  - name: mirror
    source: {registry_open.host}/{src_repo}
    destinations: [{proxy.host}/{dst_repo}]
""",
    )
    first = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert first.code == 0, first.cli.stderr[-3000:]
    clean = run_sync("verify", config, "--deep", home=tmp_path)
    assert clean.code == 0, clean.stdout + clean.cli.stderr[-2000:]
    assert "Verified: 6 tags, every graph complete at every destination" in clean.stdout

    # Out of band, at the destination.
    async def damage(t: RegistryTarget) -> dict[str, str]:
        other = await GraphBuilder(t, dst_repo).image("intruder", tags=["retagged"])
        _, raw = await t.fetch_manifest(src_repo, g["aliased"].image.digest)
        await t.tag(src_repo, g["aliased"].image, raw, "alias")  # at the source
        fallback = referrers_tag(g["listing"].image.digest)
        _, index_raw = await t.fetch_manifest(dst_repo, fallback)
        index = json.loads(index_raw)
        index["manifests"] = [
            m for m in index["manifests"] if m["digest"] != g["listing"].signature.digest
        ]
        await GraphBuilder(t, dst_repo).manifest(
            json.dumps(index).encode(), mt.OCI_INDEX, tags=[fallback]
        )
        return {"intruder": other.digest}

    damaged = with_target(registry_open, damage)
    layer = _first_layer(registry_open, dst_repo, g["blob"].image.digest)
    assert http(registry_open, "DELETE", f"/v2/{dst_repo}/manifests/{g['child']}") == 202
    assert http(registry_open, "DELETE", f"/v2/{dst_repo}/blobs/{layer}") == 202
    sbom_signature = g["deep"].sbom_signature.digest
    assert http(registry_open, "DELETE", f"/v2/{dst_repo}/manifests/{sbom_signature}") == 202

    expected = {
        ("tag-moved", g["retagged"].image.digest),
        ("tag-missing", g["aliased"].image.digest),
        ("manifest-missing", g["child"]),
        ("blob-missing", layer),
        ("referrer-missing", sbom_signature),
        ("index-entry-missing", g["listing"].signature.digest),
    }
    proxy.reset()
    shallow = run_sync("verify", config, home=tmp_path)
    assert shallow.code == 9, shallow.stdout + shallow.cli.stderr[-2000:]
    assert _found(shallow) == expected - {("blob-missing", layer)}
    deep = run_sync("verify", config, "--deep", home=tmp_path)
    assert deep.code == 9, deep.stdout + deep.cli.stderr[-2000:]
    assert _found(deep) == expected
    assert {kind for kind, _ in _found(deep)} == set(KINDS)
    for line in (
        f"tag-moved: {proxy.host}/{dst_repo} {g['retagged'].image.digest} "
        f"(tag retagged points at {damaged['intruder']})",
        f"tag-missing: {proxy.host}/{dst_repo} {g['aliased'].image.digest} (tag alias)",
        f"blob-missing: {proxy.host}/{dst_repo} {layer} (256 bytes)",
        f"referrer-missing: {proxy.host}/{dst_repo} {sbom_signature} (referrer)",
        f"index-entry-missing: {proxy.host}/{dst_repo} {g['listing'].signature.digest} "
        f"(not listed among the referrers of {g['listing'].image.digest})",
        "Verify: 6 differences in 7 tags checked",
    ):
        assert line in deep.stdout, deep.stdout
    writes = [r.path for r in proxy.stats().log if r.method in WRITING_METHODS]
    assert writes == []

    # A plain sync repairs what its presence checks see; --deep the rest.
    repaired = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert repaired.code == 0, repaired.cli.stderr[-3000:]
    after_plain = run_sync("verify", config, "--deep", home=tmp_path)
    assert _found(after_plain) == {
        ("manifest-missing", g["child"]),
        ("blob-missing", layer),
        ("referrer-missing", sbom_signature),
    }, after_plain.stdout
    deep_sync = run_sync("sync", config, "--deep", "--no-journal", home=tmp_path)
    assert deep_sync.code == 0, deep_sync.cli.stderr[-3000:]
    final = run_sync("verify", config, "--deep", home=tmp_path)
    assert final.code == 0, final.stdout + final.cli.stderr[-2000:]
    assert "Verified: 7 tags" in final.stdout


def _first_layer(reg: RegistryInstance, repo: str, digest: str) -> str:
    async def work(t: RegistryTarget) -> str:
        _, raw = await t.fetch_manifest(repo, digest)
        return str(json.loads(raw)["layers"][0]["digest"])

    return with_target(reg, work)


def test_a_missing_index_child_is_reported_as_a_child(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    base = str(unique_repo)

    async def seed(t: RegistryTarget) -> str:
        _, images = await GraphBuilder(t, f"{base}/app").multiarch("m", tags=["m"])
        return images[0].digest

    child = with_target(registry_open, seed)
    config = write_config(
        tmp_path / "sync.yaml",
        f"version: 1\njobs:\n  - name: a\n    source: {registry_open.host}/{base}/app\n"
        f"    destinations: [{registry_open.host}/{base}/prod]\n",
    )
    assert run_sync("sync", config, "--no-journal", home=tmp_path).code == 0
    assert http(registry_open, "DELETE", f"/v2/{base}/prod/manifests/{child}") == 202
    audit = run_sync("verify", config, home=tmp_path)
    assert audit.code == 9
    found = [(d["kind"], d["digest"], d["detail"]) for d in audit.report["differences"]]
    assert found == [("manifest-missing", child, "child")], found
