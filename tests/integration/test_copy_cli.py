"""``replicator copy`` end to end: the real console script against real registries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import (
    SBOM_TYPE,
    SIGNATURE_TYPE,
    GraphBuilder,
    SignedImage,
    assert_same_graph,
    build_world,
)

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def target(reg: Any) -> RegistryTarget:
    return RegistryTarget(reg.host, reg.options())


def report_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def make_signed(reg: Any, repo: str, tag: str = "v1") -> SignedImage:
    async def main() -> SignedImage:
        async with target(reg) as t:
            return await GraphBuilder(t, repo).signed_image(repo, tags=[tag])

    return run(main)


def test_same_registry_promotion_mounts_everything_and_moves_no_blob_bytes(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    src_repo = f"{unique_repo}/net-monitor"
    dst_repo = f"{unique_repo}/sample-staging/net-monitor"
    signed = make_signed(registry_open, src_repo)
    proxy = fault_proxy(registry_open)
    rep = tmp_path / "r.json"
    res = run_cli(
        "copy",
        "-r",
        "--report",
        str(rep),
        f"{proxy.host}/{src_repo}:v1",
        f"{proxy.host}/{dst_repo}:v1",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    assert f"Copied {proxy.host}/{src_repo}:v1 => {proxy.host}/{dst_repo}:v1" in res.stdout
    assert f"Digest: {signed.image.digest}" in res.stdout
    stats = proxy.stats()
    assert stats.bytes_up(kind="upload") == 0  # no blob byte moved
    assert stats.requests("GET", "blob") == 0  # and none read
    report = report_of(rep)
    assert report["ok"] and report["blobs_uploaded"] == 0 and report["bytes_sent"] == 0
    assert report["blobs_mounted"] >= 4
    assert report["manifests_pushed"] == 4

    async def check() -> None:
        async with target(registry_open) as t:
            await assert_same_graph(t, src_repo, "v1", t, dst_repo, "v1")

    run(check)


def test_fan_out_reads_each_source_blob_and_manifest_once(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    fault_proxy: Any,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    make_signed(registry_open, unique_repo)
    src = fault_proxy(registry_open)
    res = run_cli(
        "copy",
        "-r",
        f"{src.host}/{unique_repo}:v1",
        f"{registry_referrers.host}/{unique_repo}-a:v1",
        f"ocidir://{tmp_path / 'layout'}:v1",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    stats = src.stats()
    assert stats.requests("GET", "blob") >= 5
    assert stats.duplicates("GET", "blob") == {}
    assert stats.duplicates("GET", "manifest") == {}

    async def check() -> None:
        async with target(registry_open) as s, target(registry_referrers) as d:
            await assert_same_graph(s, unique_repo, "v1", d, f"{unique_repo}-a", "v1")
            layout = OCILayoutTarget(tmp_path / "layout")
            try:
                await assert_same_graph(s, unique_repo, "v1", layout, "", "v1")
            finally:
                await layout.aclose()

    run(check)


def test_kitchen_sink_graph_is_copied_digest_for_digest(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    """Multi-arch + attestations, Docker lists with odd JSON, referrers on children,
    three referrer levels, an artifact index with a subject."""

    async def build() -> Descriptor:
        async with target(registry_open) as t:
            g = GraphBuilder(t, unique_repo)
            index, images = await g.multiarch("ks", tags=["multi"])
            # referrers on an index child, three levels deep
            sig = await g.referrer(images[1], SIGNATURE_TYPE)
            sig2 = await g.referrer(sig, SIGNATURE_TYPE)
            await g.referrer(sig2, "application/vnd.example.timestamp")
            await g.artifact_index(index, "application/vnd.example.bundle")
            await g.referrer(index, SBOM_TYPE)
            # Docker schema2 images in a Docker manifest list, both non-canonical
            d1 = await g.image("d1", docker=True, pretty=True, platform=("linux", "amd64"))
            d2 = await g.image("d2", docker=True, pretty=True, platform=("linux", "arm64"))
            dlist = await g.index(
                [
                    (d1, {"os": "linux", "architecture": "amd64"}, None),
                    (d2, {"os": "linux", "architecture": "arm64"}, None),
                ],
                docker=True,
                pretty=True,
                tags=["docker"],
            )
            await g.referrer(dlist, SIGNATURE_TYPE)
            # the outer index holding both
            return await g.index([(index, None, None), (dlist, None, None)], tags=["v1"])

    root = run(build)
    src_ref = f"{registry_open.host}/{unique_repo}:v1"
    res = run_cli(
        "copy",
        "-r",
        src_ref,
        f"{registry_referrers.host}/{unique_repo}:v1",
        f"{registry_open.host}/{unique_repo}-copy:v1",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    assert f"Digest: {root.digest}" in res.stdout

    async def check() -> None:
        async with target(registry_open) as s, target(registry_referrers) as d:
            snap = await assert_same_graph(s, unique_repo, "v1", d, unique_repo, "v1")
            assert len(snap.manifests) >= 16
            assert sum(len(v) for v in snap.referrers.values()) == 6
            await assert_same_graph(s, unique_repo, "v1", s, f"{unique_repo}-copy", "v1")

    run(check)


def test_layout_registry_layout_round_trip_of_a_world(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    async def build() -> list[tuple[str, str, SignedImage]]:
        async with target(registry_open) as t:
            world = await build_world(t, unique_repo, repositories=2, tags=2)
            return world.roots

    roots = run(build)
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    reg, back = registry_open.host, registry_referrers.host

    def lines(pairs: list[tuple[str, str]]) -> Path:
        f = tmp_path / f"pairs-{len(list(tmp_path.iterdir()))}.txt"
        f.write_text("# generated\n" + "\n".join(f"{a} {b}" for a, b in pairs) + "\n")
        return f

    def name(repo: str, tag: str) -> str:
        return f"{repo.rsplit('/', 1)[-1]}-{tag}"

    step1 = lines([(f"{reg}/{r}:{t}", f"ocidir://{l1}:{name(r, t)}") for r, t, _ in roots])
    step2 = lines([(f"ocidir://{l1}:{name(r, t)}", f"{back}/{r}-rt:{t}") for r, t, _ in roots])
    step3 = lines([(f"{back}/{r}-rt:{t}", f"ocidir://{l2}:{name(r, t)}") for r, t, _ in roots])
    for f in (step1, step2, step3):
        res = run_cli("copy", "-r", "--from-file", str(f), home=tmp_path)
        assert res.code == 0, res.stderr
        assert res.stdout.count("Copied ") == len(roots)

    async def check() -> None:
        async with target(registry_open) as s:
            layout = OCILayoutTarget(l2)
            try:
                for r, t, signed in roots:
                    snap = await assert_same_graph(s, r, t, layout, "", name(r, t))
                    assert snap.referrers[signed.image.digest] == {
                        signed.signature.digest,
                        signed.sbom.digest,
                    }
            finally:
                await layout.aclose()

    run(check)


def test_referrer_cycles_and_bogus_fallback_tags_terminate(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    async def build() -> SignedImage:
        async with target(registry_open) as t:
            g = GraphBuilder(t, unique_repo)
            signed = await g.signed_image("cyc", tags=["v1"])
            # the signature's fallback tag lists the image itself (a cycle) and itself
            bogus = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_INDEX,
                    "manifests": [signed.image.to_json(), signed.signature.to_json()],
                }
            ).encode()
            await g.manifest(bogus, mt.OCI_INDEX, tags=[referrers_tag(signed.signature.digest)])
            # the SBOM signature's fallback tag holds an image, not an index
            await t.tag(
                unique_repo,
                signed.image,
                (await t.fetch_manifest(unique_repo, signed.image))[1],
                referrers_tag(signed.sbom_signature.digest),
            )
            return signed

    signed = run(build)
    rep = tmp_path / "r.json"
    res = run_cli(
        "copy",
        "-r",
        "--report",
        str(rep),
        f"{registry_open.host}/{unique_repo}:v1",
        f"{registry_open.host}/{unique_repo}-dst:v1",
        home=tmp_path,
        timeout=60,
    )
    assert res.code == 0, res.stderr
    report = report_of(rep)
    assert report["manifests_pushed"] == 4
    assert any(
        "lists itself" in w or "another subject" in w or "does not name" in w
        for w in report["warnings"]
    )
    assert f"Digest: {signed.image.digest}" in res.stdout


def test_all_tags_skips_fallback_tags_and_artifact_filters_apply(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    make_signed(registry_open, unique_repo, "v1")
    make_signed(registry_open, unique_repo, "v2")
    rep = tmp_path / "r.json"
    dst = f"{unique_repo}-dst"
    res = run_cli(
        "copy",
        "-r",
        "--all-tags",
        "--artifact-type",
        "application/spdx*",
        "--report",
        str(rep),
        f"{registry_open.host}/{unique_repo}",
        f"{registry_open.host}/{dst}",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    report = report_of(rep)
    assert [j["status"] for j in report["jobs"]] == ["copied", "copied"]
    # image + SBOM per tag; the signatures (and the SBOM's signature) are filtered out
    assert report["manifests_pushed"] == 4
    assert report["referrers_filtered"] >= 2

    async def tags() -> list[str]:
        async with target(registry_open) as t:
            return await t.tags(dst)

    got = run(tags)
    assert [t for t in got if not t.startswith("sha256-")] == ["v1", "v2"]


def test_depth_limits_referrer_levels(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    signed = make_signed(registry_open, unique_repo)
    rep = tmp_path / "r.json"
    res = run_cli(
        "copy",
        "-r",
        "--depth",
        "1",
        "--report",
        str(rep),
        f"{registry_open.host}/{unique_repo}:v1",
        f"ocidir://{tmp_path / 'out'}",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    assert report_of(rep)["manifests_pushed"] == 3

    async def check() -> None:
        layout = OCILayoutTarget(tmp_path / "out")
        try:
            assert await layout.manifest_exists("", signed.sbom)
            assert not await layout.manifest_exists("", signed.sbom_signature)
        finally:
            await layout.aclose()

    run(check)


def test_platform_subset_writes_a_new_index_and_reports_its_digest(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    async def build() -> tuple[Descriptor, list[Descriptor]]:
        async with target(registry_open) as t:
            return await GraphBuilder(t, unique_repo).multiarch(
                "pf",
                tags=["v1"],
                platforms=(("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")),
            )

    index, images = run(build)
    rep = tmp_path / "r.json"
    res = run_cli(
        "copy",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--report",
        str(rep),
        f"{registry_open.host}/{unique_repo}:v1",
        f"{registry_open.host}/{unique_repo}-sub:v1",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    job = report_of(rep)["jobs"][0]
    assert job["source_digest"] == index.digest
    assert job["digest"] != index.digest
    assert f"Digest: {job['digest']}" in res.stdout
    assert "new index" in res.stdout

    async def check() -> None:
        async with target(registry_open) as t:
            _, raw = await t.fetch_manifest(f"{unique_repo}-sub", "v1")
            doc = json.loads(raw)
            digests = [m["digest"] for m in doc["manifests"]]
            # two images and their two attestation manifests, s390x gone
            assert images[0].digest in digests and images[1].digest in digests
            assert images[2].digest not in digests
            assert len(digests) == 4

    run(check)


def test_keep_going_copies_what_it_can_and_fails_with_the_cause(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    signed = make_signed(registry_open, unique_repo)
    pairs = tmp_path / "pairs.txt"
    host = registry_open.host
    pairs.write_text(
        f"{host}/{unique_repo}:missing {host}/{unique_repo}-dst:missing\n"
        f"{host}/{unique_repo}:v1 {host}/{unique_repo}-dst:v1  # the good one\n"
    )
    res = run_cli("copy", "-r", "--keep-going", "--from-file", str(pairs), home=tmp_path)
    assert res.code == 3, res.stderr
    assert f"Digest: {signed.image.digest}" in res.stdout

    async def check() -> None:
        async with target(registry_open) as t:
            assert (await t.resolve(f"{unique_repo}-dst", "v1")).digest == signed.image.digest

    run(check)


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    res = run_cli("copy", "only-one-ref", home=tmp_path)
    assert res.code == 2
    assert "Traceback" not in res.stderr
    res = run_cli("copy", "--chunk-size", "lots", "a/b:c", "d/e:f", home=tmp_path)
    assert res.code == 2 and "Traceback" not in res.stderr
    bad = tmp_path / "pairs.txt"
    bad.write_text("just-one\n")
    res = run_cli("copy", "--from-file", str(bad), home=tmp_path)
    assert res.code == 2 and "pairs.txt:1" in res.stderr


def test_destination_with_several_tags_and_one_without_a_tag(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    signed = make_signed(registry_open, unique_repo, "v1")
    host = registry_open.host
    res = run_cli(
        "copy",
        f"{host}/{unique_repo}:v1",
        f"{host}/{unique_repo}-multi:stable,latest,v1",
        f"{host}/{unique_repo}-bare",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    assert res.stdout.count(f"Digest: {signed.image.digest}") == 1

    async def check() -> None:
        async with target(registry_open) as t:
            for tag in ("stable", "latest", "v1"):
                assert (await t.resolve(f"{unique_repo}-multi", tag)).digest == signed.image.digest
            # a destination without a tag takes the source's tag
            assert (await t.resolve(f"{unique_repo}-bare", "v1")).digest == signed.image.digest
            # without -r no referrer travels
            assert await t.referrers(f"{unique_repo}-bare", signed.image) == []

    run(check)


def test_concurrency_of_one_completes_a_fan_out_between_registries(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    signed = make_signed(registry_open, unique_repo)
    res = run_cli(
        "copy",
        "-r",
        "--concurrency",
        "1",
        f"{registry_open.host}/{unique_repo}:v1",
        f"{registry_referrers.host}/{unique_repo}-c1:v1",
        f"{registry_open.host}/{unique_repo}-c1:v1",
        home=tmp_path,
    )
    assert res.code == 0, res.stderr
    assert f"Digest: {signed.image.digest}" in res.stdout


def test_all_tags_from_an_oci_layout_to_a_registry(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    make_signed(registry_open, unique_repo, "v1")
    make_signed(registry_open, unique_repo, "v2")
    host = registry_open.host
    lay = tmp_path / "lay"
    for tag in ("v1", "v2"):
        res = run_cli("copy", "-r", f"{host}/{unique_repo}:{tag}", f"ocidir://{lay}", home=tmp_path)
        assert res.code == 0, res.stderr
    dst = f"{unique_repo}-from-layout"
    res = run_cli("copy", "-r", "--all-tags", f"ocidir://{lay}", f"{host}/{dst}", home=tmp_path)
    assert res.code == 0, res.stderr

    async def check() -> None:
        async with target(registry_open) as t:
            got = [x for x in await t.tags(dst) if not x.startswith("sha256-")]
            assert got == ["v1", "v2"]
            for tag in ("v1", "v2"):
                await assert_same_graph(t, unique_repo, tag, t, dst, tag)

    run(check)


def test_deep_check_restores_a_signature_deleted_out_of_band(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    signed = make_signed(registry_open, unique_repo)
    host = registry_open.host
    src, dst = f"{host}/{unique_repo}:v1", f"{host}/{unique_repo}-dst:v1"
    assert run_cli("copy", "-r", src, dst, home=tmp_path).code == 0

    async def lose_it() -> None:
        # a plain DELETE, as a tool unaware of fallback indexes sends: the listing stays
        async with target(registry_open) as t:
            await t.delete_manifest_digest(f"{unique_repo}-dst", signed.signature.digest)

    async def present() -> bool:
        async with target(registry_open) as t:
            return await t.manifest_exists(f"{unique_repo}-dst", signed.signature)

    run(lose_it)
    trusting = tmp_path / "trusting.json"
    res = run_cli("copy", "-r", src, dst, "--report", str(trusting), home=tmp_path)
    assert res.code == 0, res.stderr
    assert report_of(trusting)["manifests_pushed"] == 0 and not run(present)
    deep = tmp_path / "deep.json"
    res = run_cli("copy", "-r", "--deep-check", src, dst, "--report", str(deep), home=tmp_path)
    assert res.code == 0, res.stderr
    assert report_of(deep)["manifests_pushed"] == 1 and run(present)
