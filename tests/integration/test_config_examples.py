"""Every job file in config/ runs against real registries and copies complete graphs.

The example files name placeholder hosts (``dev.registry.example:5000`` ...) and
repositories under ``team/``; the test swaps in the addresses of real
docker-registry processes and a repository prefix of its own, builds the source
images (each signed, with an SBOM and the SBOM's signature), runs
``replicator copy -r --from-file`` on the rewritten file, and compares every
destination graph with its source digest for digest.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from replicator.oci.reference import parse_reference
from replicator.targets.base import Target
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance, RunningRegistry
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import GraphBuilder, assert_same_graph

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config").glob("*.pairs"))


def _jobs(text: str) -> list[list[str]]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [shlex.split(line) for line in lines if line]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_job_file_copies_complete_graphs(
    example: Path,
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    registry_factory: Callable[..., RunningRegistry],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    text = example.read_text()
    hosts = {
        "dev.registry.example:5000": registry_open.host,
        "prod.registry.example:5000": registry_referrers.host,
    }
    if "dr.registry.example:5000" in text:
        hosts["dr.registry.example:5000"] = registry_factory("open").instance.host
    text = text.replace("team/", f"{unique_repo}/")
    for placeholder, host in hosts.items():
        text = text.replace(placeholder, host)
    text = text.replace("ocidir://airgap", f"ocidir://{tmp_path / 'airgap'}")
    jobs = _jobs(text)
    assert jobs, f"{example.name} has no job lines"
    job_file = tmp_path / example.name
    job_file.write_text(text)

    async def build_sources() -> None:
        src = RegistryTarget(registry_open.host, registry_open.options())
        try:
            for words in jobs:
                ref = parse_reference(words[0])
                await GraphBuilder(src, ref.repository).signed_image(
                    ref.repository, tags=[ref.tag or "latest"]
                )
        finally:
            await src.aclose()

    anyio.run(build_sources)
    result = run_cli("copy", "-r", "--from-file", str(job_file), home=tmp_path / "home")
    assert result.code == 0, result.stderr[-2000:]

    async def compare() -> None:
        targets: dict[str, Target] = {}

        def target_for(location: str) -> Target:
            if location not in targets:
                if location.startswith("ocidir://"):
                    targets[location] = OCILayoutTarget(location.removeprefix("ocidir://"))
                else:
                    instance = registry_open if location == registry_open.host else None
                    options = instance.options() if instance else registry_referrers.options()
                    targets[location] = RegistryTarget(location, options)
            return targets[location]

        try:
            for src_text, *dst_texts in jobs:
                src = parse_reference(src_text)
                for dst_text in dst_texts:
                    dst = parse_reference(dst_text.split(",")[0])
                    dst_tags = dst_text.rsplit(":", 1)[-1].split(",") if dst.tag else [src.tag]
                    for tag in dst_tags:
                        assert tag is not None
                        await assert_same_graph(
                            target_for(src.location),
                            src.repository,
                            src.reference,
                            target_for(dst.location),
                            dst.repository,
                            tag,
                        )
        finally:
            for t in targets.values():
                await t.aclose()

    anyio.run(compare)
