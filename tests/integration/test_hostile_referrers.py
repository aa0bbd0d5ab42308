"""Hostile referrer listings: oversize, self-references, cycles, foreign entries, 10,000 entries.

A :class:`~tests.integration.test_hostile_registry.Hostile` server stands in
front of a real docker-registry and answers the referrers API (or a fallback
tag) itself; everything else reaches the registry.  A copy must end in bounded
time with the destination holding only genuine referrers — manifests whose own
``subject`` names the node they are listed under — or fail with one clear
error and no tag.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from replicator.artifacts.delete import left_in_place_note
from replicator.errors import EXIT_REFUSED, EXIT_REGISTRY
from replicator.graph.rules import foreign_subject_warning
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder
from tests.integration.test_hostile_registry import (
    Handler,
    Hostile,
    assert_copy_failed,
    cli,
    tag_exists,
)

MiB = 1024 * 1024


@pytest.fixture
def hostile(registry_open: RegistryInstance) -> Iterator[Hostile]:
    """A hostile server in front of the open registry."""
    server = Hostile(registry_open.url).start()
    try:
        yield server
    finally:
        server.stop()


def _index(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    ).encode()


def _entry(desc: Descriptor, artifact_type: str = SIGNATURE_TYPE) -> dict[str, Any]:
    return {
        "mediaType": desc.media_type,
        "digest": desc.digest,
        "size": desc.size,
        "artifactType": artifact_type,
    }


def _listing(table: dict[str, bytes]) -> Handler:
    """Serve the referrers API from ``table`` (subject digest -> index bytes; else empty)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        subject = request.path.rsplit("/", 1)[-1]
        body = table.get(subject, _index([]))
        return web.Response(status=200, body=body, headers={"Content-Type": mt.OCI_INDEX})

    return handler


async def _listed_at(reg: RegistryInstance, repo: str, subject: str) -> set[str]:
    """The digests the destination's fallback tag of ``subject`` lists (none: empty)."""
    async with RegistryTarget(reg.host, reg.options()) as t:
        if referrers_tag(subject) not in await t.tags(repo):
            return set()
        _, raw = await t.fetch_manifest(repo, referrers_tag(subject))
        return {m["digest"] for m in json.loads(raw)["manifests"]}


def _build_cast(reg: RegistryInstance, repo: str) -> dict[str, Descriptor]:
    """An image with a genuine signature, an unrelated image, and another image's referrer."""

    async def go() -> dict[str, Descriptor]:
        async with RegistryTarget(reg.host, reg.options()) as t:
            g = GraphBuilder(t, repo)
            image = await g.image("hostile", tags=["v1"])
            signature = await g.referrer(image, SIGNATURE_TYPE)
            unrelated = await g.image("unrelated", tags=["u"])
            other = await g.image("other", tags=["o"])
            others_signature = await g.referrer(other, SIGNATURE_TYPE)
            return {
                "image": image,
                "signature": signature,
                "unrelated": unrelated,
                "others_signature": others_signature,
            }

    return asyncio.run(go())


def test_referrers_api_that_lies_leaves_only_genuine_referrers_at_the_destination(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """The API lists the image itself, an unrelated image, another image's referrer and,
    under the signature, the image again (a cycle): only the signature is a referrer."""
    cast = _build_cast(registry_open, str(unique_repo))
    image, signature = cast["image"], cast["signature"]
    hostile.rule(
        "GET",
        "/referrers/",
        _listing(
            {
                image.digest: _index(
                    [
                        _entry(image),
                        _entry(signature),
                        _entry(cast["unrelated"]),
                        _entry(cast["others_signature"]),
                    ]
                ),
                signature.digest: _index([_entry(image)]),
            }
        ),
    )
    dst_repo = str(unique_repo())
    result, took = cli(
        tmp_path,
        "copy",
        "-r",
        f"{hostile.host}/{unique_repo}:v1",
        f"{registry_open.host}/{dst_repo}:v1",
    )
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.output and took < 60
    assert asyncio.run(_listed_at(registry_open, dst_repo, image.digest)) == {signature.digest}
    assert asyncio.run(_listed_at(registry_open, dst_repo, signature.digest)) == set()
    # The foreign entries are not written at all, and said so as for a forged fallback tag.
    foreign = [cast["unrelated"].digest, cast["others_signature"].digest]
    assert asyncio.run(_manifests_at(registry_open, dst_repo, foreign)) == []
    for digest in foreign:
        assert foreign_subject_warning(digest, image.digest) in " ".join(result.output.split())
    assert foreign_subject_warning(image.digest, signature.digest) in " ".join(
        result.output.split()
    )


async def _manifests_at(reg: RegistryInstance, repo: str, digests: list[str]) -> list[str]:
    """The digests of ``digests`` that ``repo`` holds as manifests."""
    async with RegistryTarget(reg.host, reg.options()) as t:
        return [
            d for d in digests if await t.manifest_exists(repo, Descriptor(mt.OCI_MANIFEST, d, 0))
        ]


def test_delete_through_a_referrers_api_that_lies_deletes_only_genuine_referrers(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """``manifest delete`` reads what a lying API lists before deleting: an unrelated image
    and another image's referrer listed under the root stay, with their tags."""
    repo = str(unique_repo)
    cast = _build_cast(registry_open, repo)
    image, signature = cast["image"], cast["signature"]
    unrelated, others_signature = cast["unrelated"], cast["others_signature"]
    hostile.rule(
        "GET",
        "/referrers/",
        _listing(
            {
                image.digest: _index(
                    [_entry(image), _entry(signature), _entry(unrelated), _entry(others_signature)]
                ),
                signature.digest: _index([_entry(image), _entry(unrelated)]),
            }
        ),
    )
    result, took = cli(tmp_path, "manifest", "delete", "-f", f"{hostile.host}/{repo}:v1")
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.output and took < 60
    everything = [image.digest, signature.digest, unrelated.digest, others_signature.digest]
    left = asyncio.run(_manifests_at(registry_open, repo, everything))
    assert left == [unrelated.digest, others_signature.digest]
    assert tag_exists(registry_open, repo, "u") and tag_exists(registry_open, repo, "o")
    said = " ".join(result.stdout.split())
    for digest in (unrelated.digest, others_signature.digest):
        assert left_in_place_note(digest, image.digest) in said
    assert left_in_place_note(unrelated.digest, signature.digest) in said


def test_a_gate_is_not_opened_by_a_signature_a_lying_api_lists_for_another_image(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """``require`` counts only referrers whose own manifest names the root: the unrelated
    (unsigned) image is refused although the API lists another image's signature under
    it, while the signed image, through the same API, is promoted."""
    repo = str(unique_repo)
    cast = _build_cast(registry_open, repo)
    image, signature = cast["image"], cast["signature"]
    unrelated, others_signature = cast["unrelated"], cast["others_signature"]
    hostile.rule(
        "GET",
        "/referrers/",
        _listing(
            {
                image.digest: _index([_entry(signature)]),
                unrelated.digest: _index([_entry(others_signature), _entry(signature)]),
            }
        ),
    )
    dst = str(unique_repo()) + "-prod"
    config = tmp_path / "gate.yaml"
    config.write_text(
        "version: 1\njobs:\n"
        "  - name: gate\n"
        f"    source: {hostile.host}/{repo}\n"
        f"    destinations: [{registry_open.host}/{dst}]\n"
        "    tags: {include: [v1, u]}\n"
        f"    require: [{SIGNATURE_TYPE}]\n"
    )
    result, _ = cli(tmp_path, "sync", str(config), "--no-journal")
    assert result.code == EXIT_REFUSED, result.output
    assert "Traceback" not in result.output
    refused = [line for line in result.stdout.splitlines() if "Refused" in line]
    assert len(refused) == 1 and f"{repo}:u" in refused[0], result.stdout

    async def tags() -> list[str]:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            return sorted(x for x in await t.tags(dst) if not x.startswith("sha256-"))

    assert asyncio.run(tags()) == ["v1"]


def test_an_honest_referrers_api_costs_no_read_for_the_subject_check(
    registry_referrers: RegistryInstance,
    registry_open: RegistryInstance,
    fault_proxy: Any,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    """The check of a trusted listing's entries uses the reads the copy makes anyway:
    each of the 8 manifests is read once cold, and a re-run reads only the root."""
    repo = str(unique_repo)

    async def build() -> None:
        async with RegistryTarget(registry_referrers.host, registry_referrers.options()) as t:
            g = GraphBuilder(t, repo)
            a, b = await g.image("a"), await g.image("b")
            idx = await g.index([(a, None, None), (b, None, None)], tags=["v1"])
            sig = await g.referrer(idx, SIGNATURE_TYPE)
            sbom = await g.referrer(idx, SBOM_TYPE)
            await g.referrer(sbom, SIGNATURE_TYPE)
            await g.referrer(a, SIGNATURE_TYPE)
            await g.referrer(sig, SBOM_TYPE)

    asyncio.run(build())
    src, dst = fault_proxy(registry_referrers), fault_proxy(registry_open)
    dst_repo = str(unique_repo())
    reads = []
    for _ in ("cold", "rerun"):
        src.reset()
        result, _ = cli(
            tmp_path, "copy", "-r", f"{src.host}/{repo}:v1", f"{dst.host}/{dst_repo}:v1"
        )
        assert result.code == 0, result.stderr
        assert "is listed as a referrer" not in result.output
        reads.append(src.stats().requests("GET", "manifest"))
    assert reads == [8, 1]


def test_referrers_api_self_reference_and_cycle_terminate_with_the_genuine_referrer(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """Listings that name the node itself and loop back (A lists B, B lists A) end."""
    cast = _build_cast(registry_open, str(unique_repo))
    image, signature = cast["image"], cast["signature"]
    hostile.rule(
        "GET",
        "/referrers/",
        _listing(
            {
                image.digest: _index([_entry(image), _entry(signature), _entry(signature)]),
                signature.digest: _index([_entry(signature)]),
            }
        ),
    )
    dst_repo = str(unique_repo())
    result, took = cli(
        tmp_path,
        "copy",
        "-r",
        f"{hostile.host}/{unique_repo}:v1",
        f"{registry_open.host}/{dst_repo}:v1",
    )
    assert result.code == 0, result.stderr
    assert took < 60
    assert tag_exists(registry_open, dst_repo, "v1")
    assert asyncio.run(_listed_at(registry_open, dst_repo, image.digest)) == {signature.digest}
    assert asyncio.run(_listed_at(registry_open, dst_repo, signature.digest)) == set()


def test_fallback_tag_listing_foreign_manifests_copies_only_the_genuine_referrer(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """A forged fallback tag (no referrers API) lists an unrelated image, another
    image's referrer and the image itself."""
    repo = str(unique_repo)
    cast = _build_cast(registry_open, repo)
    image, signature = cast["image"], cast["signature"]

    async def forge() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            raw = _index(
                [
                    _entry(signature),
                    _entry(cast["unrelated"]),
                    _entry(cast["others_signature"]),
                    _entry(image),
                ]
            )
            await GraphBuilder(t, repo).manifest(raw, mt.OCI_INDEX, [referrers_tag(image.digest)])

    asyncio.run(forge())
    dst_repo = str(unique_repo())
    result, took = cli(
        tmp_path,
        "copy",
        "-r",
        f"{registry_open.host}/{repo}:v1",
        f"{registry_open.host}/{dst_repo}:v1",
    )
    assert result.code == 0, result.stderr
    assert took < 60
    assert asyncio.run(_listed_at(registry_open, dst_repo, image.digest)) == {signature.digest}


def test_fallback_tag_that_is_not_an_index_is_skipped(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """``sha256-<image>`` names a plain image and, for the signature, a blob-less garbage
    JSON document: the copy completes with the genuine graph it can see."""
    repo = str(unique_repo)

    async def build() -> Descriptor:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            g = GraphBuilder(t, repo)
            image = await g.image("notindex", tags=["v1"])
            other = await g.image("other", tags=[referrers_tag(image.digest)])
            assert other.digest != image.digest
            return image

    image = asyncio.run(build())
    dst_repo = str(unique_repo())
    result, _ = cli(
        tmp_path,
        "copy",
        "-r",
        f"{registry_open.host}/{repo}:v1",
        f"{registry_open.host}/{dst_repo}:v1",
    )
    assert result.code == 0, result.stderr
    assert tag_exists(registry_open, dst_repo, "v1")
    assert asyncio.run(_listed_at(registry_open, dst_repo, image.digest)) == set()


@pytest.mark.parametrize("where", ["api", "fallback-tag"])
def test_referrer_listing_over_4_mib_is_one_clear_error(
    hostile: Hostile,
    registry_open: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
    where: str,
) -> None:
    cast = _build_cast(registry_open, str(unique_repo))
    image = cast["image"]
    fake = _entry(cast["signature"])
    big = _index([{**fake, "annotations": {"pad": "x" * 1000}}] * (5 * 1024))
    assert len(big) > 4 * MiB

    async def answer(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": mt.OCI_INDEX}
        if where == "fallback-tag":
            headers["Docker-Content-Digest"] = descriptor_for(big, mt.OCI_INDEX).digest
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(len(big))})
        return web.Response(status=200, body=big, headers=headers)

    if where == "api":
        hostile.rule("GET", "/referrers/", answer)
    else:
        hostile.rule(None, f"/manifests/{referrers_tag(image.digest)}$", answer)
    dst_repo = str(unique_repo())
    result, took = cli(
        tmp_path,
        "copy",
        "-r",
        f"{hostile.host}/{unique_repo}:v1",
        f"{registry_open.host}/{dst_repo}:v1",
    )
    assert_copy_failed(result, EXIT_REGISTRY, "source")
    assert took < 60
    assert not tag_exists(registry_open, dst_repo, "v1")


def _many_referrers(count: int, subject: Descriptor) -> dict[str, bytes]:
    """``count`` artifact manifests whose subject is ``subject`` (all on the empty blob)."""
    empty = {"mediaType": mt.OCI_EMPTY, "digest": mt.EMPTY_JSON_DIGEST, "size": 2}
    out = {}
    for i in range(count):
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "artifactType": SIGNATURE_TYPE,
                "config": empty,
                "layers": [empty],
                "subject": subject.to_json(),
                "annotations": {"n": str(i)},
            },
            separators=(",", ":"),
        ).encode()
        out[descriptor_for(raw, mt.OCI_MANIFEST).digest] = raw
    return out


def _copy_many(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path, n: int
) -> None:
    repo = str(unique_repo)

    async def build() -> Descriptor:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            g = GraphBuilder(t, repo)
            await g.blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
            return await g.image("crowded", tags=["v1"])

    image = asyncio.run(build())
    manifests = _many_referrers(n, image)
    listing = _index(
        [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": d,
                "size": len(raw),
                "artifactType": SIGNATURE_TYPE,
            }
            for d, raw in manifests.items()
        ]
    )

    async def manifest(request: web.Request) -> web.StreamResponse:
        digest = request.path.rsplit("/", 1)[-1]
        raw = manifests.get(digest)
        if raw is None:
            return await hostile.forward(request)
        headers = {"Content-Type": mt.OCI_MANIFEST, "Docker-Content-Digest": digest}
        if request.method == "HEAD":
            return web.Response(status=200, headers={**headers, "Content-Length": str(len(raw))})
        return web.Response(status=200, body=raw, headers=headers)

    hostile.rule("GET", f"/referrers/{image.digest}", _listing({image.digest: listing}))
    hostile.rule("GET", "/referrers/", _listing({}))
    hostile.rule(None, "/manifests/sha256:", manifest)
    dst_repo = str(unique_repo())
    result, took = cli(
        tmp_path,
        "copy",
        "-r",
        f"{hostile.host}/{repo}:v1",
        f"{registry_open.host}/{dst_repo}:v1",
        timeout=900,
    )
    assert result.code == 0, result.stderr[-2000:]
    assert tag_exists(registry_open, dst_repo, "v1")
    assert asyncio.run(_listed_at(registry_open, dst_repo, image.digest)) == set(manifests)
    print(f"{n} referrers on one subject copied in {took:.1f}s")


def test_five_hundred_referrers_on_one_subject(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    _copy_many(hostile, registry_open, unique_repo, tmp_path, 500)


@pytest.mark.slow
def test_ten_thousand_referrers_on_one_subject(
    hostile: Hostile, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    _copy_many(hostile, registry_open, unique_repo, tmp_path, 10_000)
