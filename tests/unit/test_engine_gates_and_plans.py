"""Policies the sync jobs rely on, proven on in-memory registries: promotion gates,
the overwrite policy, backups of moved tags, and dry runs that write nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import pytest

from replicator.engine import CopyEngine, CopyJob, CopyOptions, CopyReport, Destination, Endpoint
from replicator.engine.audit import Difference, differences
from replicator.engine.copier import raise_for_report
from replicator.errors import EXIT_REFUSED, GateRefusedError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.reference import is_referrers_tag, referrers_tag
from replicator.targets.memory import MemoryTarget
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder

WRITES = (
    "blob_upload_start",
    "blob_patch",
    "blob_put",
    "blob_mount",
    "manifest_put",
    "manifest_delete",
)


def at(t: MemoryTarget, repo: str) -> Endpoint:
    return Endpoint(t, t.display, repo)


def to(t: MemoryTarget, repo: str, *tags: str, **kw: Any) -> Destination:
    return Destination(at(t, repo), tags, display=f"{t.display}/{repo}", **kw)


async def run(*jobs: CopyJob, **options: Any) -> CopyReport:
    with anyio.fail_after(5):
        return await CopyEngine(CopyOptions(**options)).run(jobs)


def writes(t: MemoryTarget) -> int:
    return sum(t.stats.as_dict()[k] for k in WRITES)


@pytest.mark.anyio
async def test_the_gate_refuses_an_unsigned_image_and_promotes_a_signed_one_in_the_same_run() -> (
    None
):
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    g = GraphBuilder(src, "app")
    await g.signed_image("signed", tags=["v1"])
    await g.image("bare", tags=["v2"])
    require = (SIGNATURE_TYPE,)
    report = await run(
        CopyJob(at(src, "app"), "v1", (to(dst, "app", "v1"),), "app:v1", require=require),
        CopyJob(at(src, "app"), "v2", (to(dst, "app", "v2"),), "app:v2", require=require),
    )
    signed, bare = report.jobs
    assert signed.status == "copied" and await dst.tags("app") != []
    assert bare.status == "refused" and bare.refused == [SIGNATURE_TYPE]
    assert "v2" not in await dst.tags("app")
    with pytest.raises(GateRefusedError) as err:
        raise_for_report(report)
    assert err.value.exit_code == EXIT_REFUSED == report.exit_code


@pytest.mark.anyio
async def test_a_forged_fallback_listing_does_not_open_the_gate() -> None:
    """A signature of another image listed under v2's fallback tag is not v2's signature."""
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    g = GraphBuilder(src, "app")
    signed = await g.signed_image("signed", tags=["v1"])
    bare = await g.image("bare", tags=["v2"])
    forged = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [signed.signature.to_json()],
        }
    ).encode()
    await src.push_manifest(
        "app", descriptor_for(forged, mt.OCI_INDEX), forged, (referrers_tag(bare.digest),)
    )
    report = await run(
        CopyJob(at(src, "app"), "v2", (to(dst, "app", "v2"),), "app:v2", require=(SIGNATURE_TYPE,))
    )
    assert report.jobs[0].status == "refused"
    assert writes(dst) == 0


@pytest.mark.anyio
async def test_required_types_are_globs_and_every_one_must_be_met() -> None:
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    await GraphBuilder(src, "app").signed_image("signed", tags=["v1"])
    ok = await run(
        CopyJob(
            at(src, "app"), "v1", (to(dst, "app", "v1"),), "a", require=("*.signature.*", SBOM_TYPE)
        )
    )
    assert ok.jobs[0].status == "copied"
    refused = await run(
        CopyJob(
            at(src, "app"),
            "v1",
            (to(dst, "app2", "v1"),),
            "b",
            require=("*.signature.*", "x/attest*"),
        )
    )
    assert refused.jobs[0].refused == ["x/attest*"]


async def _moved_tag_world() -> tuple[MemoryTarget, MemoryTarget, Descriptor, Descriptor]:
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    new = await GraphBuilder(src, "app").image("new", tags=["v1"])
    old = await GraphBuilder(dst, "app").image("old", tags=["v1"])
    return src, dst, new, old


@pytest.mark.anyio
async def test_overwrite_never_leaves_a_tag_that_points_elsewhere_and_copies_nothing_there() -> (
    None
):
    src, dst, _, old = await _moved_tag_world()
    dst.reset_stats()
    report = await run(
        CopyJob(at(src, "app"), "v1", (to(dst, "app", "v1", overwrite="never"),), "app:v1")
    )
    job = report.jobs[0]
    assert job.status == "kept" and report.ok
    assert job.kept == [f"dst/app:v1 -> {old.digest}"]
    assert (await dst.resolve("app", "v1")).digest == old.digest
    assert writes(dst) == 0


@pytest.mark.anyio
async def test_overwrite_if_changed_moves_the_tag_and_backup_keeps_the_old_digest_first() -> None:
    src, dst, new, old = await _moved_tag_world()
    report = await run(
        CopyJob(at(src, "app"), "v1", (to(dst, "app", "v1", backup="{tag}-previous"),), "app:v1")
    )
    job = report.jobs[0]
    assert job.status == "copied" and job.tags_moved == ["v1"]
    assert (await dst.resolve("app", "v1")).digest == new.digest
    assert (await dst.resolve("app", "v1-previous")).digest == old.digest
    assert job.backups == [f"v1-previous -> {old.digest}"]
    tag_writes = [w for w in dst.writes if w.action == "tag"]
    assert [w.tag for w in tag_writes][-2:] == ["v1-previous", "v1"]


@pytest.mark.anyio
async def test_overwrite_always_rewrites_an_unchanged_tag_and_checks_the_graph_below() -> None:
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    await GraphBuilder(src, "app").signed_image("img", tags=["v1"])
    job = CopyJob(at(src, "app"), "v1", (to(dst, "app", "v1"),), "app:v1", require=())
    await run(job)
    dst.reset_stats()
    again = await run(job)
    assert again.tags_set == 0 and dst.stats.manifest_put == 0
    dst.reset_stats()
    always = replace(job, destinations=(to(dst, "app", "v1", overwrite="always"),))
    forced = await run(always)
    assert forced.tags_set == 1 and forced.jobs[0].tags_moved == ["v1"]
    assert dst.stats.manifest_head >= 1  # the tag no longer vouches for the root


@pytest.mark.anyio
async def test_a_dry_run_writes_nothing_and_plans_what_the_real_run_then_does() -> None:
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    g = GraphBuilder(src, "app")
    await g.signed_image("a", tags=["v1"])
    await g.multiarch("b", tags=["v2"])
    jobs = [
        CopyJob(at(src, "app"), t, (to(dst, "app", t),), f"app:{t}", require=())
        for t in ("v1", "v2")
    ]
    src.reset_stats()
    plan = await run(*jobs, plan=True)
    assert writes(dst) == 0 and src.stats.blob_get == 0
    assert plan.ok and plan.planned
    real = await run(*jobs)
    planned = {p.digest for p in plan.planned if p.action == "push"}
    indexes = {w.digest for w in dst.writes if w.action == "tag" and is_referrers_tag(w.tag or "")}
    pushed = {w.digest for w in dst.writes if w.action == "manifest"}
    assert planned == pushed - indexes
    assert sum(p.action == "index" for p in plan.planned) == len(indexes)
    assert plan.manifests_pushed == real.manifests_pushed
    assert plan.blobs_uploaded + plan.blobs_mounted == real.blobs_uploaded + real.blobs_mounted
    assert plan.planned_bytes == real.bytes_sent
    assert sorted(t for p in plan.planned if p.action == "tag" for t in [p.tag]) == ["v1", "v2"]
    assert [j.new_manifests for j in plan.jobs] == [j.new_manifests for j in real.jobs]


@pytest.mark.anyio
async def test_new_referrers_on_an_old_image_are_told_apart_from_a_new_graph() -> None:
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    g = GraphBuilder(src, "app")
    img = await g.image("img", tags=["v1"])
    job = CopyJob(at(src, "app"), "v1", (to(dst, "app", "v1"),), "app:v1")
    first = await run(job)
    assert first.jobs[0].root_new and first.jobs[0].new_referrers == 0
    await g.referrer(img, SIGNATURE_TYPE)
    second = await run(job, plan=True)
    assert not second.jobs[0].root_new and second.jobs[0].new_referrers == 1


async def _copied_signed() -> tuple[MemoryTarget, MemoryTarget, Any, CopyJob]:
    src, dst = MemoryTarget("src"), MemoryTarget("dst")
    graph = await GraphBuilder(src, "app").signed_image("img", tags=["v1"])
    job = CopyJob(at(src, "app"), "v1", (to(dst, "app", "v1"),), "app:v1")
    assert (await run(job)).ok
    return src, dst, graph, job


async def _audit(job: CopyJob, *, deep: bool = False) -> list[Difference]:
    report = await run(job, plan=True, deep_check=True, check_blobs=deep)
    return differences(report)


@pytest.mark.anyio
async def test_an_audit_of_a_complete_copy_finds_nothing_and_writes_nothing() -> None:
    _, dst, _, job = await _copied_signed()
    dst.reset_stats()
    assert await _audit(job, deep=True) == []
    assert writes(dst) == 0


@pytest.mark.anyio
async def test_an_audit_names_each_kind_of_difference_made_out_of_band() -> None:
    _, dst, graph, job = await _copied_signed()
    repo = dst.repo("app")
    # a referrer deleted (and left listed), a blob of the image lost, the tag moved
    await dst.delete_manifest("app", graph.sbom_signature, update_referrers=False)
    lost = next(iter(json.loads((await dst.fetch_manifest("app", graph.image))[1])["layers"]))
    del repo.blobs[lost["digest"]]
    other = await GraphBuilder(dst, "app").image("other", tags=["v1"])
    found = await _audit(job, deep=True)
    kinds = {(d.kind, d.digest) for d in found}
    assert ("referrer-missing", graph.sbom_signature.digest) in kinds
    assert ("blob-missing", lost["digest"]) in kinds
    assert ("tag-moved", graph.image.digest) in kinds
    moved = next(d for d in found if d.kind == "tag-moved")
    assert other.digest in moved.detail
    # without --deep the lost blob is not looked for
    assert "blob-missing" not in {d.kind for d in await _audit(job)}


@pytest.mark.anyio
async def test_an_audit_finds_a_referrer_missing_from_its_subjects_index() -> None:
    _, dst, graph, job = await _copied_signed()
    await dst.unlist_referrers("app", graph.image, [graph.signature.digest])
    found = await _audit(job)
    assert [(d.kind, d.digest) for d in found] == [("index-entry-missing", graph.signature.digest)]
