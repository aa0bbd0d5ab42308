"""A forged referrers fallback tag never makes replicator delete another image.

Anyone who can push a tag can point ``sha256-<A>`` at an image index that other
tags rely on (``v1`` of image B).  Adding A's referrers there (a copy into that
registry), or removing them, must neither delete B's index nor its tag: only
an index replicator wrote itself is ever deleted when superseded.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder


def test_copying_referrers_under_a_forged_fallback_tag_keeps_the_index_it_named(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    src_repo, dst_repo = f"{unique_repo}-src", str(unique_repo)

    async def setup() -> tuple[str, str]:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            signed = await GraphBuilder(reg, src_repo).signed_image("a", tags=["v1"])
            victim, _ = await GraphBuilder(reg, dst_repo).multiarch("b", tags=["b-v1"])
            # the forger points A's fallback tag, at the destination, at B's index
            _, raw = await reg.fetch_manifest(dst_repo, victim)
            await reg.put_manifest_bytes(
                dst_repo, referrers_tag(signed.image.digest), raw, victim.media_type
            )
            return signed.image.digest, victim.digest

    subject, victim = asyncio.run(setup())
    result = run_cli(
        "copy",
        "-r",
        "--no-journal",
        f"{registry_open.host}/{src_repo}:v1",
        f"{registry_open.host}/{dst_repo}:a-v1",
        home=tmp_path,
    )
    assert result.code == 0, result.stderr

    async def check() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            assert (await reg.resolve(dst_repo, "b-v1")).digest == victim
            await reg.fetch_manifest(dst_repo, victim)  # still there, by digest
            listed = await reg.referrers(dst_repo, await reg.resolve(dst_repo, "a-v1"))
            assert SIGNATURE_TYPE in {d.artifact_type for d in listed}

    asyncio.run(check())
    del subject


def test_unlisting_every_referrer_of_a_forged_tag_keeps_the_index_it_named(
    registry_open: RegistryInstance, unique_repo: Any
) -> None:
    repo = str(unique_repo)

    async def main() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as reg:
            g = GraphBuilder(reg, repo)
            subject = await g.image("a", tags=["a"])
            victim, _ = await g.multiarch("b", tags=["b-v1"])
            _, raw = await reg.fetch_manifest(repo, victim)
            tag = referrers_tag(subject.digest)
            await reg.put_manifest_bytes(repo, tag, raw, victim.media_type)
            listed = [e["digest"] for e in json.loads(raw)["manifests"]]
            removed = await reg.unlist_referrers(repo, subject, listed)
            assert removed == len(listed)
            assert tag not in await reg.tags(repo)
            assert (await reg.resolve(repo, "b-v1")).digest == victim.digest
            await reg.fetch_manifest(repo, victim)

    asyncio.run(main())
