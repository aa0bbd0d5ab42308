"""Sharded ``replicator sync`` (N processes, ``--shard I/N``) next to one process.

    python -m benchmarks.shard_bench [--repositories 120] [--tags 5] [--shards 3]
                                     [--reps 3] [--tmp DIR] [--out DIR]

A world of signed images, indexes and Docker manifests (:mod:`benchmarks.world`,
``WorldSpec(repositories, tags_per_repo)``) is built once into a source
registry.  One config (a catalog job: every ``bench/*`` repository, with its
referrers, to ``DST/{repository}``) is then synced, each repetition into fresh
destination registries:

* **one process**: ``replicator sync CONFIG``;
* **N shards**: N ``replicator sync CONFIG --shard I/N`` processes started at
  once against one destination registry (as the pods of an Indexed Job);

the order alternating between repetitions.  Every command is a child process
measured by :func:`benchmarks.harness.measure` (wall, CPU, peak RSS); the shards'
wall time is from the first start to the last end.

Checked after every sharded run (a failed check fails the benchmark):

* coverage, from the shards' JSON reports: every repository of the world was
  handled by exactly one shard (the union is the world, no repository in two
  shards), the one :func:`replicator.sync.shard.shard_of` names;
* the destination, digest for digest: every tag points at the source's digest,
  and for every root the graph at the destination (manifests and their exact
  bytes, referrer edges, blobs, each blob present) equals the source's.

Duplicated blobs: a blob used by repositories of different shards is uploaded
once per shard (one process mounts it across repositories instead).  Reported
two ways: *expected* from the world (each blob's size times the number of
shards using it, minus one) and *measured* (the shards' bytes sent minus the
single process's, and the same for blob uploads).

Writes ``shard_results.json`` to ``--out``; RESULTS-shards.md is written by hand
from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness import REPLICATOR, REPO_ROOT, Measurement, measure
from benchmarks.run import Registries, machine, prepare_bytecode, proc_cpu, reg_pid
from benchmarks.world import BenchWorld, WorldSpec, build_world
from replicator.graph.filters import GraphFilter
from replicator.graph.walk import GraphSnapshot, snapshot_graph
from replicator.observe.logging import configure_logging
from replicator.sync.shard import shard_of
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.registry import RunningRegistry

OPTIONS = RegistryOptions(plain_http=True)
#: Where the destination repositories go: ``DST/<DST_PREFIX>/<source repository>``.
DST_PREFIX = "mirror"


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[shards {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the config and the commands ------------------------------------------------------


def write_config(path: Path, src_host: str, dst_host: str, prefix: str = "bench") -> Path:
    """A sync config of one catalog job: every ``prefix/*`` repository, referrers included."""
    path.write_text(
        f"""\
version: 1
jobs:
  - name: mirror
    source: {{registry: "{src_host}", repositories: ["{prefix}/*"]}}
    destinations: ["{dst_host}/{DST_PREFIX}/{{repository}}"]
    referrers: true
"""
    )
    return path


def sync_argv(config: Path, report: Path, journal: Path, shard: str | None = None) -> list[str]:
    """``replicator sync CONFIG --report R --journal J [--shard I/N]``."""
    argv = [REPLICATOR, "sync", str(config), "--report", str(report), "--journal", str(journal)]
    return argv + (["--shard", shard] if shard else [])


@dataclass
class SyncRun:
    """One way of syncing the world once: its processes' measurements and reports."""

    label: str
    wall_s: float
    processes: list[Measurement] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    registry_cpu_s: dict[str, float] = field(default_factory=dict)
    loadavg_1m: list[float] = field(default_factory=list)

    def total(self, key: str) -> int:
        """Sum of a run-report counter (``bytes_sent``, ``blobs_uploaded``) over the processes."""
        return sum(int(r.get("run", {}).get(key, 0)) for r in self.reports)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures of the run (reports reduced to their counters)."""
        return {
            "label": self.label,
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(sum(m.cpu_s for m in self.processes), 3),
            "max_rss_mib": round(max(m.max_rss_mib for m in self.processes), 1),
            "processes": [
                {
                    "wall_s": round(m.wall_s, 3),
                    "cpu_s": round(m.cpu_s, 3),
                    "max_rss_mib": round(m.max_rss_mib, 1),
                    "exit_code": m.returncode,
                    "shard": r.get("shard"),
                    "repositories": _repositories(r),
                    "tags": len(r.get("run", {}).get("jobs", [])),
                    "bytes_sent": r.get("run", {}).get("bytes_sent"),
                    "blobs_uploaded": r.get("run", {}).get("blobs_uploaded"),
                    "blobs_mounted": r.get("run", {}).get("blobs_mounted"),
                    "manifests_pushed": r.get("run", {}).get("manifests_pushed"),
                    "requests": _requests(r),
                }
                for m, r in zip(self.processes, self.reports, strict=True)
            ],
            "bytes_sent": self.total("bytes_sent"),
            "blobs_uploaded": self.total("blobs_uploaded"),
            "blobs_mounted": self.total("blobs_mounted"),
            "registry_cpu_s": self.registry_cpu_s,
            "loadavg_1m": self.loadavg_1m,
        }


def _requests(report: dict[str, Any]) -> int:
    """Requests the run made (every kind at every location; byte and retry counters left out)."""
    return sum(
        n
        for counts in report.get("run", {}).get("requests", {}).values()
        for kind, n in counts.items()
        if kind not in ("bytes_sent", "bytes_received", "retries")
    )


def _repositories(report: dict[str, Any]) -> list[str]:
    """The source repositories (paths) a sync report says it handled."""
    return [
        repo["source"].split("/", 1)[1]
        for job in report.get("jobs", {}).values()
        for repo in job.get("repositories", [])
    ]


def run_syncs(
    label: str, argvs: Sequence[list[str]], reports: Sequence[Path], work: Path
) -> SyncRun:
    """Start every command at once, wait for all; their measurements and reports."""
    started = time.perf_counter()
    load = os.getloadavg()[0]

    def one(i: int) -> Measurement:
        return measure(
            f"{label} [{i}]",
            argvs[i],
            log=work / f"{label.replace(' ', '-')}-{i}.log",
            env={"NO_COLOR": "1"},
            check=False,
        )

    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        measured = list(pool.map(one, range(len(argvs))))
    wall = time.perf_counter() - started
    run = SyncRun(label, wall, measured, loadavg_1m=[round(load, 2), round(os.getloadavg()[0], 2)])
    for m, report in zip(measured, reports, strict=True):
        if m.returncode != 0:
            raise RuntimeError(f"{m.label} exited {m.returncode} (log in {work})")
        run.reports.append(json.loads(report.read_text()))
    return run


def sync_once(config: Path, work: Path, shards: int | None) -> SyncRun:
    """One process (``shards`` None) or ``shards`` processes of ``--shard I/N``."""
    tag = f"{time.monotonic_ns()}"
    if shards is None:
        report = work / f"single-{tag}.json"
        argvs = [sync_argv(config, report, work / f"single-{tag}.sqlite")]
        return run_syncs("one process", argvs, [report], work)
    reports = [work / f"shard-{tag}-{i}.json" for i in range(shards)]
    journal = work / f"shards-{tag}.sqlite"  # each shard makes it shards-<tag>.shard-I-of-N.sqlite
    argvs = [sync_argv(config, reports[i], journal, f"{i}/{shards}") for i in range(shards)]
    return run_syncs(f"{shards} shards", argvs, reports, work)


# -- checks ------------------------------------------------------------------------------


def coverage(reports: Sequence[dict[str, Any]], world: BenchWorld, shards: int) -> dict[str, Any]:
    """Which shard handled which repository, from the shards' reports (in shard order).

    Raises when a repository of the world is missing, handled twice, handled by
    another shard than :func:`shard_of` names, or not of the world.
    """
    handled: dict[str, list[int]] = {}
    for index, report in enumerate(reports):
        assert report["shard"]["index"] == index and report["shard"]["count"] == shards
        for repo in _repositories(report):
            handled.setdefault(repo, []).append(index)
    world_repos = set(world.repositories)
    doubled = {r: s for r, s in handled.items() if len(s) > 1}
    misplaced = {r: s for r, s in handled.items() if s != [shard_of(r, shards)]}
    missing = world_repos - set(handled)
    extra = set(handled) - world_repos
    if doubled or misplaced or missing or extra:
        raise AssertionError(
            f"coverage: doubled {doubled}, misplaced {misplaced}, missing {missing}, extra {extra}"
        )
    sizes = [sum(1 for s in handled.values() if s == [i]) for i in range(shards)]
    return {"repositories": len(handled), "per_shard": sizes, "union_is_the_world": True}


async def source_graphs(host: str, world: BenchWorld) -> dict[tuple[str, str], GraphSnapshot]:
    """The graph (referrers included) of every root of the world at the source."""
    out = {}
    async with RegistryTarget(host, OPTIONS) as t:
        for repo, tag, _, _ in world.roots:
            out[(repo, tag)] = await snapshot_graph(t, repo, tag, GraphFilter(referrers=True))
    return out


async def check_destination(
    dst_host: str, world: BenchWorld, graphs: dict[tuple[str, str], GraphSnapshot], *, blobs: bool
) -> dict[str, int]:
    """Every tag at its source digest and every graph equal to the source's; raises otherwise.

    ``blobs``: also ask the destination about every blob of every graph.
    """
    checked = {"tags": 0, "manifests": 0, "blobs": 0}
    async with RegistryTarget(dst_host, OPTIONS) as t:
        for repo, tag, _, digest in world.roots:
            dst_repo = f"{DST_PREFIX}/{repo}"
            got = await t.resolve(dst_repo, tag)
            assert got.digest == digest, f"{dst_repo}:{tag} is {got.digest}, not {digest}"
            src = graphs[(repo, tag)]
            dst = await snapshot_graph(t, dst_repo, tag, GraphFilter(referrers=True))
            assert dst.manifests == src.manifests, f"{dst_repo}:{tag}: manifests differ"
            assert dst.referrers == src.referrers, f"{dst_repo}:{tag}: referrers differ"
            assert set(dst.blobs) == set(src.blobs), f"{dst_repo}:{tag}: blobs differ"
            if blobs:
                for desc in src.blobs.values():
                    assert await t.blob_exists(dst_repo, desc), f"{dst_repo}: {desc.digest} missing"
            checked["tags"] += 1
            checked["manifests"] += len(src.manifests)
            checked["blobs"] += len(src.blobs)
    return checked


def expected_duplication(
    world: BenchWorld, graphs: dict[tuple[str, str], GraphSnapshot], shards: int
) -> dict[str, Any]:
    """Bytes and blobs a sharded run uploads more than one process, from the world's shape."""
    users: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for (repo, _tag), snap in graphs.items():
        for digest, desc in snap.blobs.items():
            users.setdefault(digest, set()).add(shard_of(repo, shards))
            sizes[digest] = desc.size
    shared = {d: s for d, s in users.items() if len(s) > 1}
    return {
        "distinct_blobs": len(sizes),
        "distinct_blob_bytes": sum(sizes.values()),
        "blobs_in_several_shards": len(shared),
        "extra_uploads": sum(len(s) - 1 for s in shared.values()),
        "extra_bytes": sum(sizes[d] * (len(s) - 1) for d, s in shared.items()),
    }


# -- the benchmark ------------------------------------------------------------------------


def _registry_cpu(regs: dict[str, RunningRegistry]) -> dict[str, float]:
    return {k: proc_cpu(reg_pid(r)) for k, r in regs.items()}


def measure_pair(
    regs: Registries, src: RunningRegistry, work: Path, shards: int, sharded_first: bool
) -> tuple[SyncRun, SyncRun, RunningRegistry]:
    """One repetition: one process and N shards, each into a fresh destination registry.

    The single run's destination is discarded at once; the shards' is returned
    (to be checked, then discarded by the caller).
    """
    runs: dict[bool, SyncRun] = {}
    sharded_dst: RunningRegistry | None = None
    for sharded in (sharded_first, not sharded_first):
        dst = regs.start("dst-shards" if sharded else "dst-single")
        config = write_config(
            work / f"sync-{dst.instance.host.rsplit(':', 1)[1]}.yaml",
            src.instance.host,
            dst.instance.host,
        )
        watched = {"src": src, "dst": dst}
        before = _registry_cpu(watched)
        run = sync_once(config, work, shards if sharded else None)
        after = _registry_cpu(watched)
        run.registry_cpu_s = {k: round(after[k] - before[k], 3) for k in watched}
        log(
            f"  {run.label}: {run.wall_s:.2f}s wall, {sum(m.cpu_s for m in run.processes):.2f}s CPU"
        )
        runs[sharded] = run
        if sharded:
            sharded_dst = dst
        else:
            regs.discard(dst)
    assert sharded_dst is not None
    return runs[False], runs[True], sharded_dst


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Build the world, run the repetitions, check, and gather the figures."""
    work = root / "work"
    work.mkdir()
    results: dict[str, Any] = {"machine": machine(), "reps": args.reps, "shards": args.shards}
    results["machine"]["bytecode"] = prepare_bytecode()
    regs = Registries(root)
    try:
        src = regs.start("src")
        spec = WorldSpec(repositories=args.repositories, tags_per_repo=args.tags)

        async def build() -> BenchWorld:
            async with RegistryTarget(src.instance.host, OPTIONS) as t:
                return await build_world(t, src.instance.host, spec)

        t0 = time.perf_counter()
        world = asyncio.run(build())
        results["world"] = world.summary() | {"build_s": round(time.perf_counter() - t0, 1)}
        log(f"world: {results['world']}")
        graphs = asyncio.run(source_graphs(src.instance.host, world))
        results["expected_duplication"] = expected_duplication(world, graphs, args.shards)
        pairs = []
        for rep in range(args.reps):
            log(f"repetition {rep + 1}/{args.reps}")
            single, sharded, dst = measure_pair(regs, src, work, args.shards, rep % 2 == 1)
            cover = coverage(sharded.reports, world, args.shards)
            checked = asyncio.run(
                check_destination(dst.instance.host, world, graphs, blobs=rep == args.reps - 1)
            )
            log(f"  coverage {cover['per_shard']}, destination checked: {checked}")
            regs.discard(dst)
            pairs.append(
                {
                    "one_process": single.summary(),
                    "shards": sharded.summary(),
                    "coverage": cover,
                    "destination_checked": checked,
                    "measured_duplication": {
                        "extra_bytes_sent": sharded.total("bytes_sent")
                        - single.total("bytes_sent"),
                        "extra_blob_uploads": sharded.total("blobs_uploaded")
                        - single.total("blobs_uploaded"),
                    },
                }
            )
        results["pairs"] = pairs
        one = [p["one_process"]["wall_s"] for p in pairs]
        many = [p["shards"]["wall_s"] for p in pairs]
        results["summary"] = {
            "one_process_wall_s_median": round(_median(one), 2),
            "shards_wall_s_median": round(_median(many), 2),
            "speedup_median_of_ratios": round(
                _median([a / b for a, b in zip(one, many, strict=True)]), 2
            ),
            "one_process_cpu_s_median": round(
                _median([p["one_process"]["cpu_s"] for p in pairs]), 2
            ),
            "shards_cpu_s_median": round(_median([p["shards"]["cpu_s"] for p in pairs]), 2),
        }
    finally:
        regs.close()
    return results


def markdown(results: dict[str, Any]) -> str:
    """The figures of a results dict as Markdown tables (for RESULTS-shards.md)."""
    n = results["shards"]
    lines = [
        "| rep | one process: wall s | CPU s | N shards: wall s | CPU s | shards' walls s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, pair in enumerate(results["pairs"], 1):
        one, many = pair["one_process"], pair["shards"]
        walls = " / ".join(f"{q['wall_s']:.1f}" for q in many["processes"])
        lines.append(
            f"| {i} | {one['wall_s']:.1f} | {one['cpu_s']:.1f} | {many['wall_s']:.1f} | "
            f"{many['cpu_s']:.1f} | {walls} | {one['wall_s'] / many['wall_s']:.2f} |"
        )
    last = results["pairs"][-1]
    lines += [
        "",
        f"| per shard (last rep, {n} shards) | repositories | tags | bytes sent | blobs uploaded | mounted | requests | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in last["shards"]["processes"]:
        lines.append(
            f"| {q['shard']['label']} | {len(q['repositories'])} | {q['tags']} | {q['bytes_sent']} | "
            f"{q['blobs_uploaded']} | {q['blobs_mounted']} | {q['requests']} | {q['max_rss_mib']} |"
        )
    one = last["one_process"]["processes"][0]
    lines.append(
        f"| one process | {len(one['repositories'])} | {one['tags']} | {one['bytes_sent']} | "
        f"{one['blobs_uploaded']} | {one['blobs_mounted']} | {one['requests']} | {one['max_rss_mib']} |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: run, write shard_results.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repositories", type=int, default=120, help="repositories of the world")
    p.add_argument("--tags", type=int, default=5, help="tags per repository")
    p.add_argument("--shards", type=int, default=3, help="N of --shard I/N")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temporary directory")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks", help="output directory")
    args = p.parse_args(argv)
    configure_logging(debug=False, fmt="console")
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="replicator-shards-", dir=args.tmp))
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    try:
        results = benchmark(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True, check=False
    ).stdout.strip()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "shard_results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['total_s']}s): {results['summary']}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
