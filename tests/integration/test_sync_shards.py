"""Three ``replicator sync --shard I/3`` processes at once over a world of 12
repositories (signed images, OCI indexes, Docker manifests and manifest lists):
every repository handled by exactly one shard, the destination equal to the
source digest for digest, and the duplicated blob bytes exactly the blobs that
repositories of different shards share.  The small version of
``benchmarks/shard_bench.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.shard_bench import (
    check_destination,
    coverage,
    expected_duplication,
    source_graphs,
    write_config,
)
from benchmarks.world import BenchWorld, WorldSpec, build_world
from replicator.sync.shard import shard_of
from replicator.targets.registry.client import RegistryTarget
from tests.integration.cli_helpers import REPLICATOR, isolated_env, run_cli

SHARDS = 3
#: Fixed names (fresh registries): the split over the shards is the same every run.
SPEC = WorldSpec(repositories=12, tags_per_repo=2)


def _build(instance: Any) -> BenchWorld:
    async def build() -> BenchWorld:
        async with RegistryTarget(instance.host, instance.options()) as t:
            return await build_world(t, instance.host, SPEC)

    return asyncio.run(build())


def _start_shards(config: Path, home: Path, reports: list[Path]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                REPLICATOR,
                "sync",
                str(config),
                "--shard",
                f"{i}/{SHARDS}",
                "--report",
                str(reports[i]),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=isolated_env(home),
        )
        for i in range(SHARDS)
    ]


def test_three_shards_cover_the_world_once_and_the_destination_equals_the_source(
    registry_factory: Callable[..., Any], tmp_path: Path
) -> None:
    src, dst = registry_factory("open").instance, registry_factory("open").instance
    world = _build(src)
    graphs = asyncio.run(source_graphs(src.host, world))
    expected = {shard_of(repo, SHARDS) for repo in world.repositories}
    assert expected == set(range(SHARDS))  # the fixed names give every shard some work
    config = write_config(tmp_path / "sync.yaml", src.host, dst.host)
    reports = [tmp_path / f"shard-{i}.json" for i in range(SHARDS)]

    procs = _start_shards(config, tmp_path, reports)
    outputs = [p.communicate(timeout=300) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, err[-3000:]
        mine = sum(1 for repo in world.repositories if shard_of(repo, SHARDS) == i)
        assert f"Shard {i}/{SHARDS}: {mine} source repositor" in out
        assert f"{12 - mine} in other shards" in out
    loaded = [json.loads(r.read_text()) for r in reports]

    cover = coverage(loaded, world, SHARDS)
    assert cover["repositories"] == 12 and sum(cover["per_shard"]) == 12
    checked = asyncio.run(check_destination(dst.host, world, graphs, blobs=True))
    assert checked["tags"] == len(world.roots) == 24

    # Each shard uploads the blobs its repositories use once; a blob of repositories
    # in k shards is uploaded k times: exactly the world's distinct blobs plus that.
    dup = expected_duplication(world, graphs, SHARDS)
    assert dup["blobs_in_several_shards"] > 0  # the world's shared base layers
    sent = sum(r["run"]["bytes_sent"] for r in loaded)
    uploads = sum(r["run"]["blobs_uploaded"] for r in loaded)
    assert sent == dup["distinct_blob_bytes"] + dup["extra_bytes"]
    assert uploads == dup["distinct_blobs"] + dup["extra_uploads"]

    # Each shard kept its own journal run, in its own file of the default state directory.
    state = tmp_path / ".local" / "state" / "replicator"
    assert sorted(p.name for p in state.glob("journal*.sqlite")) == [
        f"journal.shard-{i}-of-{SHARDS}.sqlite" for i in range(SHARDS)
    ]
    for i, report in enumerate(loaded):
        assert report["shard"]["label"] == f"{i}/{SHARDS}"
        assert report["run"]["run"]["journal"] == str(
            state / f"journal.shard-{i}-of-{SHARDS}.sqlite"
        )

    # A shard again: its share is up to date; verify of the whole config agrees.
    again = run_cli("sync", str(config), "--shard", f"1/{SHARDS}", home=tmp_path, timeout=300)
    assert again.code == 0, again.stderr
    assert "Copied" not in again.stdout and "Up to date:" in again.stdout
    audit = run_cli("verify", str(config), home=tmp_path, timeout=300)
    assert audit.code == 0, audit.stdout[-3000:]
    one = run_cli(
        "verify", str(config), "--shard", f"2/{SHARDS}", "--deep", home=tmp_path, timeout=300
    )
    assert one.code == 0, one.stdout[-3000:]
    assert f"Shard 2/{SHARDS}: {cover['per_shard'][2]} source repositor" in one.stdout
