"""Per-registry rate limits of ``replicator sync``, measured at the counting proxy.

The limits come from the config (``registries[HOST].limits``) and are applied
by the registry transport; the proxy in front of a real registry records when
every request arrived and when every body byte went through, so the rates a
registry would see are measured from its side:

* ``requests-per-second``: a sync of a few dozen small images paced to the
  limit over about ten seconds;
* ``bandwidth``: a multi-MiB layer read from one limited host and written to
  another, both at the limit;
* ``min-remaining``: a proxy that answers Docker Hub's quota headers makes the
  run pause until the reset it announced, and say so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path
from typing import Any

from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, run_cli
from tests.integration.graphs import GraphBuilder

MIB = 1024 * 1024


def sync(config: Path, tmp: Path, *args: str) -> tuple[CliResult, dict[str, Any]]:
    report = tmp / "report.json"
    result = run_cli(
        "sync", str(config), "--no-journal", "--report", str(report), *args, home=tmp, timeout=120
    )
    return result, json.loads(report.read_text()) if report.exists() else {}


def config(path: Path, source: str, dest: str, registries: str) -> Path:
    path.write_text(
        f"""\
version: 1
registries:
{registries}
jobs:
  - name: mirror
    source: {source}
    destinations: [{dest}]
"""
    )
    return path


def test_requests_per_second_hold_within_ten_percent_over_ten_seconds(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)

    async def seed() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            builder = GraphBuilder(t, repo)
            for i in range(20):
                await builder.image(f"img{i}", tags=[f"t{i}"], layer_size=64)

    asyncio.run(seed())
    source: FaultProxy = fault_proxy(registry_open)
    limit = 8.0
    cfg = config(
        tmp_path / "sync.yaml",
        f"{source.host}/{repo}",
        f"{registry_open.host}/{repo}-copy",
        f"  {source.host}:\n    limits: {{requests-per-second: {limit}}}",
    )
    result, report = sync(cfg, tmp_path)
    assert result.code == 0, result.output
    stats = source.stats()
    times = sorted(r.started for r in stats.log)
    rate = stats.request_rate()
    print(f"requests: {len(times)} in {times[-1] - times[0]:.2f} s: {rate:.2f}/s (limit {limit})")
    assert times[-1] - times[0] >= 9.0, "a run of about ten seconds"
    assert abs(rate - limit) / limit < 0.10
    # No second much over the limit (a request whose connection took a moment to
    # open may arrive next to the one after it).
    per_second = [sum(1 for t in times if start <= t < start + 1.0) for start in times]
    assert max(per_second) <= limit + 3
    assert report["run"]["requests"][source.host]["manifest_get"] >= 20


def test_bandwidth_holds_within_ten_percent_both_ways(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)
    layer = os.urandom(16 * MIB)

    async def seed() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            await GraphBuilder(t, repo).image("big", tags=["v1"], layers=0, shared_layers=[layer])

    asyncio.run(seed())
    # The source proxy keeps a small send buffer: it then counts a byte when the
    # client's window took it, not when its own kernel queued it.
    source: FaultProxy = fault_proxy(registry_open, send_buffer=64 * 1024)
    dest: FaultProxy = fault_proxy(registry_open)
    limit = 2 * MIB
    cfg = config(
        tmp_path / "sync.yaml",
        f"{source.host}/{repo}",
        f"{dest.host}/{repo}-copy",
        f"  {source.host}:\n    limits: {{bandwidth: 2MiB}}\n"
        f"  {dest.host}:\n    limits: {{bandwidth: 2MiB}}",
    )
    result, report = sync(cfg, tmp_path, "--chunk-size", "4MiB")
    assert result.code == 0, result.output
    assert report["run"]["bytes_sent"] >= len(layer)
    down = source.stats().byte_rate(method="GET", kind="blob")
    up = dest.stats().byte_rate(kind="upload")
    print(f"download {down / MIB:.3f} MiB/s, upload {up / MIB:.3f} MiB/s (limit 2 MiB/s)")
    assert source.stats().bytes_down(method="GET", kind="blob") >= len(layer)
    assert dest.stats().bytes_up(kind="upload") >= len(layer)
    assert abs(down - limit) / limit < 0.10
    assert abs(up - limit) / limit < 0.10


def test_a_low_quota_pauses_the_run_until_the_reset_and_says_so(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)

    async def seed() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            builder = GraphBuilder(t, repo)
            for i in range(4):
                await builder.image(f"img{i}", tags=[f"t{i}"], layer_size=64)

    asyncio.run(seed())
    source: FaultProxy = fault_proxy(registry_open)

    def quota(n: int) -> dict[str, str]:
        # Docker Hub's form; the fourth answer says only 2 are left, for 2 more seconds.
        if n == 4:
            return {"ratelimit-remaining": "2;w=21600", "ratelimit-reset": "2"}
        return {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": f"{100 - n};w=21600"}

    source.headers(None, r"^/v2/", quota)
    cfg = config(
        tmp_path / "sync.yaml",
        f"{source.host}/{repo}",
        f"{registry_open.host}/{repo}-copy",
        f"  {source.host}:\n    limits: {{min-remaining: 5}}",
    )
    result, report = sync(cfg, tmp_path)
    assert result.code == 0, result.output
    times = sorted(r.started for r in source.stats().log)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    print(f"gaps over 1 s: {[round(g, 2) for g in gaps if g > 1.0]}")
    assert [g for g in gaps if g > 1.0] and all(1.9 <= g < 4.0 for g in gaps if g > 1.0)
    assert len([g for g in gaps if g > 1.0]) == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    paused = [e for e in events if e.get("event") == "registry.rate_limit_paused"]
    assert len(paused) == 1 and paused[0]["host"] == source.host
    assert paused[0]["remaining"] == 2 and paused[0]["min_remaining"] == 5
    assert f"Rate limit: requests to {source.host} paused 1 time (2.0 s in all)" in result.stdout
    assert report["rate_limit_pauses"] == {source.host: {"pauses": 1, "paused_ms": 2000}}
    assert report["run"]["requests"][source.host]["rate_limit_pauses"] == 1
