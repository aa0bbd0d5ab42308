"""Every file in config/ runs against real registries and copies complete graphs.

The example files name placeholder hosts (``dev.registry.example:5000`` ...) and
repositories under ``team/``; the tests swap in the addresses of real
docker-registry processes and a repository prefix of their own and build the
source images (each signed, with an SBOM and the SBOM's signature).

* Job files (``*.pairs``): ``replicator copy -r --from-file`` on the rewritten
  file, then every destination graph is compared with its source digest for
  digest.
* Sync configs (``*.yaml``): a world per example (:data:`SYNC_WORLDS`: the
  source tags, and which of them each job must select), ``replicator sync
  --dry-run`` (nothing written), ``sync``, ``verify --deep``, then every
  selected graph is compared at every destination with the job's referrer
  rules, independently of the product's own audit.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from replicator.graph.filters import GraphFilter
from replicator.oci.reference import parse_reference
from replicator.targets.base import Target
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance, RunningRegistry
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import SBOM_TYPE, GraphBuilder, assert_same_graph

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config").glob("*.pairs"))
REF_NAME = "org.opencontainers.image.ref.name"
SYNC_EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))


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
    # An ocidir:// destination of a job file is a layout of its own with plain tags.
    for _, *dst_texts in jobs:
        for dst_text in dst_texts:
            if dst_text.startswith("ocidir://"):
                ref = parse_reference(dst_text)
                assert ref.layout_path is not None and ref.tag is not None
                assert _ref_names(Path(ref.layout_path)) == {ref.tag}, dst_text


def _ref_names(layout: Path) -> set[str]:
    """The tags (``ref.name`` annotations) listed in a layout's ``index.json``."""
    index = json.loads((layout / "index.json").read_text())
    return {
        m["annotations"][REF_NAME]
        for m in index["manifests"]
        if REF_NAME in m.get("annotations", {})
    }


# --------------------------------------------------------------------------- sync configs

COSIGN_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM_ONLY = GraphFilter(exclude_types=(SBOM_TYPE,))


@dataclass(frozen=True)
class SyncWorld:
    """What one sync example runs against, and what it must do.

    ``tags``: source repository (under the ``team/`` prefix) -> its tags, each
    a signed image with an SBOM and the SBOM's signature; ``selected``: per
    job, the ``(repository, tag)`` pairs it must select; ``destination``: where
    a source repository lands, ``("prod" | "layout", repository)`` with
    ``{prefix}`` for the test's repository prefix; ``flt``: the job's referrer
    rules, to compare graphs with; ``prod``: the registry variant behind
    ``prod.registry.example:5000``; ``prod_tags``: tags already at the
    destination on an old image (a backup must keep it).
    """

    tags: dict[str, tuple[str, ...]]
    selected: dict[str, set[tuple[str, str]]]
    destination: Callable[[str], tuple[str, str]]
    flt: GraphFilter = field(default_factory=GraphFilter)
    prod: str = "referrers"
    prod_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)


SYNC_WORLDS: dict[str, SyncWorld] = {
    "promote.yaml": SyncWorld(
        tags={
            "api": ("1.3.0", "1.4.0", "1.4.1", "1.4.2", "1.5.0-rc.1", "2.0.0", "stable"),
            "worker": ("1.4.2", "1.5.0"),
        },
        selected={
            "promote-api": {("api", "1.4.1"), ("api", "1.4.2"), ("api", "stable")},
            "promote-worker": {("worker", "1.4.2")},
        },
        destination=lambda repo: ("prod", f"{{prefix}}/{repo}"),
        prod="basic",
        prod_tags={"api": ("stable",)},
    ),
    "mirror-team.yaml": SyncWorld(
        tags={
            "api": ("1.0.0", "v1.1.0", "1.2.0", "1.3.0", "1.4.0-rc.1", "latest"),
            "web": ("2.0.0",),
            "tools/cli": ("0.9.0",),
            "legacy-old": ("0.1.0",),
        },
        selected={
            "mirror-team": {
                ("api", "v1.1.0"),
                ("api", "1.2.0"),
                ("api", "1.3.0"),
                ("web", "2.0.0"),
                ("tools/cli", "0.9.0"),
            }
        },
        destination=lambda repo: ("prod", f"mirror/{{prefix}}/{repo}"),
        flt=SBOM_ONLY,
    ),
    "airgap-layout.yaml": SyncWorld(
        tags={
            "api": ("1.4.1", "1.4.2"),
            "worker": ("1.4.2", "1.5.0-beta.1"),
            "tools/cli": ("1.0.0",),
        },
        selected={"export": {("api", "1.4.2"), ("worker", "1.4.2")}},
        destination=lambda repo: ("layout", f"{{prefix}}/{repo}"),
    ),
}


def test_every_sync_example_has_a_world() -> None:
    assert {p.name for p in SYNC_EXAMPLES} == set(SYNC_WORLDS)


async def _build_world(src: Target, prefix: str, world: SyncWorld) -> None:
    for repo, tags in world.tags.items():
        builder = GraphBuilder(src, f"{prefix}/{repo}")
        for tag in tags:
            image = await builder.image(f"{repo}:{tag}", tags=[tag])
            await builder.referrer(image, COSIGN_TYPE)
            sbom = await builder.referrer(image, SBOM_TYPE)
            await builder.referrer(sbom, COSIGN_TYPE)


@pytest.mark.parametrize("example", SYNC_EXAMPLES, ids=[p.name for p in SYNC_EXAMPLES])
def test_sync_example_runs_against_real_registries(
    example: Path,
    registry_open: RegistryInstance,
    registry_basic: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = SYNC_WORLDS[example.name]
    prod = registry_basic if world.prod == "basic" else registry_referrers
    prefix = str(unique_repo)
    monkeypatch.setenv("PROD_USER", "alice")
    monkeypatch.setenv("PROD_PASSWORD", registry_basic.users["alice"])
    text = example.read_text().replace("team/", f"{prefix}/")
    text = text.replace("dev.registry.example:5000", registry_open.host)
    text = text.replace("prod.registry.example:5000", prod.host)
    config = tmp_path / example.name
    config.write_text(text)
    home = tmp_path / "home"

    async def build() -> dict[str, str]:
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(
                prod.host, prod.options("alice" if prod is registry_basic else None)
            ) as dst,
        ):
            await _build_world(src, prefix, world)
            old = {}
            for repo, tags in world.prod_tags.items():
                _, where = world.destination(repo)
                desc = await GraphBuilder(dst, where.format(prefix=prefix)).image("old", tags=tags)
                old.update({f"{repo}:{t}": desc.digest for t in tags})
            return old

    old = anyio.run(build)

    plan = run_cli("sync", str(config), "--dry-run", home=home)
    assert plan.code == 0, plan.output[-3000:]
    assert "Plan (dry run: nothing was written)" in plan.stdout
    assert not (tmp_path / "airgap").exists()

    report = tmp_path / "report.json"
    run = run_cli("sync", str(config), "--report", str(report), home=home)
    assert run.code == 0, run.output[-3000:]
    jobs = json.loads(report.read_text())["jobs"]
    for job, expected in world.selected.items():
        selected = {
            (repo["source"].split("/", 1)[1].removeprefix(f"{prefix}/"), t["tag"])
            for repo in jobs[job]["repositories"]
            for t in repo["tags"]
            if t["selected"]
        }
        assert selected == expected, job
        assert all(r["status"] == "copied" for r in jobs[job]["results"]), job

    audit = run_cli("verify", str(config), "--deep", home=home)
    assert audit.code == 0, audit.output[-3000:]

    async def compare() -> None:
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(
                prod.host, prod.options("alice" if prod is registry_basic else None)
            ) as dst,
        ):
            layout = (
                OCILayoutTarget(tmp_path / "airgap") if (tmp_path / "airgap").exists() else None
            )
            for pairs in world.selected.values():
                for repo, tag in pairs:
                    kind, where = world.destination(repo)
                    target = layout if kind == "layout" else dst
                    assert target is not None
                    await assert_same_graph(
                        src,
                        f"{prefix}/{repo}",
                        tag,
                        target,
                        where.format(prefix=prefix),
                        tag,
                        world.flt,
                    )
            if world.flt.exclude_types:  # the rule left the SBOMs out
                repo, tag = sorted(next(iter(world.selected.values())))[0]
                with pytest.raises(AssertionError):
                    await assert_same_graph(
                        src,
                        f"{prefix}/{repo}",
                        tag,
                        dst,
                        world.destination(repo)[1].format(prefix=prefix),
                        tag,
                    )
            for name, digest in old.items():
                repo, tag = name.split(":")
                where = world.destination(repo)[1].format(prefix=prefix)
                assert (await dst.resolve(where, f"{tag}-previous")).digest == digest

    anyio.run(compare)
