"""``replicator sync`` next to ``skopeo sync``, at 60 and 600 tags; writes ``sync_results.json``.

    python -m benchmarks.sync_bench [--sizes 60,600] [--reps N] [--reps-large N]
                                    [--replicator PATH] [--label NAME] [--with-copy]
                                    [--skip-counted] [--ram DIR] [--out FILE]

For each size the world of :mod:`benchmarks.world` (signed images, OCI indexes,
Docker manifests and lists; every root with a signature, an SBOM and the SBOM's
signature) is built with ``tags / 5`` repositories of five tags into a source
``docker-registry`` whose storage, like every destination's, is on a tmpfs
(``--ram``, default ``/dev/shm``): the registries' fsyncs on the VM's shared
disk are left out, so the tools, not the disk, decide the wall times.

Tools, each into a **fresh** destination registry, in alternating order between
repetitions:

* ``skopeo sync`` — ``--src yaml --all`` of exactly the world's tags (subjects
  only: skopeo does not follow the OCI 1.1 ``subject`` field); unscoped, so
  ``bench/r00`` lands at ``r00``;
* ``replicator sync subjects`` — a sync config with one job per source
  repository: ``source: SRC/bench/rNN``, ``destinations: ["DST/{name}"]``,
  ``tags: {include: [v0, ..., v4]}`` (exactly the tags skopeo's YAML lists, to the
  same names; no listing), ``referrers: false``;
* ``replicator sync referrers`` — the same config with ``referrers: true``: the
  whole graph (signatures, SBOMs, their signatures);
* ``replicator copy -r`` (``--with-copy``) — ``copy -r --from-file`` of the same
  pairs, the command measured before ``sync`` existed.

Phases: ``cold`` (fresh destination), then ``resync`` (the same command again:
everything present); for ``sync referrers`` also ``immutable`` (the same config
with ``tags.immutable: ['*']``: each destination repository's tags are listed
once and the tags found there are not looked at again).  Every replicator
command gets its own journal (``--journal``, in the run's temporary directory);
its size after each phase is recorded (SQLite file with ``-wal`` and ``-shm``).

Every measured command is a child process (:func:`benchmarks.harness.measure`:
wall, CPU, peak RSS); the registries' CPU and the load average are recorded
around it.  Request counts come from separate **counted** runs of the same
commands through counting proxies (:class:`tests.infra.proxy.FaultProxy`) in
front of the source and of a fresh destination.  *Graph nodes* are the manifests
and blobs reachable, referrers included, from the world's tags at the source
(:func:`benchmarks.run.graph_counts`).  ``--replicator`` measures another build
(another checkout's ``.venv/bin/replicator``) in the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import REPLICATOR, REPO_ROOT, Measurement, measure
from benchmarks.run import (
    SKOPEO,
    Registries,
    check_roots,
    graph_counts,
    log,
    machine,
    pairs_file,
    prepare_bytecode,
    proc_cpu,
    proxy_for,
    proxy_summary,
    ram_dir,
    reg_pid,
    sync_yaml,
)
from benchmarks.world import BenchWorld, WorldSpec, build_world
from replicator.observe.logging import configure_logging
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.registry import RunningRegistry

TAGS_PER_REPO = 5
SKOPEO_SYNC = "skopeo sync"
SYNC_SUBJECTS = "replicator sync subjects"
SYNC_REFERRERS = "replicator sync referrers"
COPY_R = "replicator copy -r"


# -- configs ---------------------------------------------------------------------------


def _by_repo(world: BenchWorld) -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    for repo, tag, _, _ in world.roots:
        by.setdefault(repo, []).append(tag)
    return by


def sync_config(
    path: Path, src: str, dst: str, world: BenchWorld, *, referrers: bool, immutable: bool = False
) -> Path:
    """A replicator sync config selecting exactly the tags of :func:`benchmarks.run.sync_yaml`.

    One job per source repository, its tags listed under ``include`` (no
    listing, as skopeo's YAML), destination ``DST/{name}`` (skopeo's unscoped
    placement: ``bench/r00`` at ``r00``).
    """
    lines = ["version: 1", "defaults:", f"  referrers: {'true' if referrers else 'false'}", "jobs:"]
    for repo, tags in _by_repo(world).items():
        tag_rule = f"{{include: [{', '.join(tags)}]" + (", immutable: ['*']}" if immutable else "}")
        lines += [
            f"  - name: {repo.replace('/', '-')}",
            f"    source: {src}/{repo}",
            f'    destinations: ["{dst}/{{name}}"]',
            f"    tags: {tag_rule}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class Tool:
    """One way of copying the world, and the phases it runs."""

    label: str
    phases: tuple[str, ...]
    replicator: bool

    def argv(
        self, phase: str, work: Path, src: str, dst: str, world: BenchWorld, exe: str
    ) -> list[str]:
        """The command of ``phase`` from ``src`` to ``dst`` (files written into ``work``)."""
        stem = f"{self.label.replace(' ', '_')}-{src}-{dst}".replace(":", "_")
        if self.label == SKOPEO_SYNC:
            yaml = sync_yaml(work / f"{stem}.yaml", src, world)
            return [
                *(SKOPEO, "sync", "--src", "yaml", "--dest", "docker"),
                *("--dest-tls-verify=false", "--all", str(yaml), dst),
            ]
        if self.label == COPY_R:
            pairs = pairs_file(work / f"{stem}.txt", src, dst, world)
            return [exe, "copy", "-r", "--from-file", str(pairs)]
        referrers = self.label == SYNC_REFERRERS
        immutable = phase == "immutable"
        config = work / f"{stem}{'-immutable' if immutable else ''}.yaml"
        sync_config(config, src, dst, world, referrers=referrers, immutable=immutable)
        return [exe, "sync", str(config)]


def tools(with_copy: bool) -> list[Tool]:
    """skopeo sync, replicator sync without and with referrers (and copy -r)."""
    out = [
        Tool(SKOPEO_SYNC, ("cold", "resync"), replicator=False),
        Tool(SYNC_SUBJECTS, ("cold", "resync"), replicator=True),
        Tool(SYNC_REFERRERS, ("cold", "resync", "immutable"), replicator=True),
    ]
    if with_copy:
        out.append(Tool(COPY_R, ("cold", "resync"), replicator=True))
    return out


# -- one command -----------------------------------------------------------------------


def journal_bytes(path: Path) -> int:
    """Bytes of an SQLite journal with its ``-wal`` and ``-shm`` files (0 when absent)."""
    total = 0
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


_LOG_TIME = re.compile(r'^time="([^"]+)".*msg="response completed"')


def _log_offsets(logs: dict[str, Path | None]) -> dict[str, int]:
    return {k: p.stat().st_size if p and p.exists() else 0 for k, p in logs.items()}


def request_window(
    logs: dict[str, Path | None], offsets: dict[str, int], started: float, ended: float
) -> dict[str, Any]:
    """When the registries saw the command's first and last request, from their access logs.

    ``first_request_s``: seconds from ``started`` (the wall clock just before
    the command's launcher was started) to the first request: start-up
    (interpreter, imports, config, expansion, journal).  ``after_last_s``: from
    the last request to ``ended`` (just after the launcher exited): the end
    (output, report, journal close).  Both include the launcher's own few
    milliseconds.  distribution logs every request it routes ("response
    completed"); requests it has no route for (the referrers API: 404) are not
    logged, so ``logged`` is a lower bound of the requests.
    """
    stamps: list[float] = []
    for key, path in logs.items():
        if path is None or not path.exists():
            continue
        with path.open("rb") as f:
            f.seek(offsets[key])
            for line in f.read().decode(errors="replace").splitlines():
                m = _LOG_TIME.match(line)
                if m:
                    stamp = datetime.datetime.fromisoformat(m.group(1)[:26].rstrip("Z"))
                    stamps.append(stamp.replace(tzinfo=datetime.UTC).timestamp() - started)
    if not stamps:
        return {"logged": 0}
    return {
        "logged": len(stamps),
        "first_request_s": round(min(stamps), 3),
        "last_request_s": round(max(stamps), 3),
        "after_last_s": round(ended - started - max(stamps), 3),
    }


def run_cmd(
    label: str,
    argv: list[str],
    work: Path,
    *,
    journal: Path | None,
    pids: dict[str, int | None],
    logs: dict[str, Path | None] | None = None,
) -> Measurement:
    """Measure one command; a replicator one gets ``--journal`` and ``--report``."""
    argv = list(argv)
    report: Path | None = None
    if journal is not None:
        report = work / f"report-{time.monotonic_ns()}.json"
        argv += ["--journal", str(journal), "--report", str(report)]
    before = {k: proc_cpu(p) for k, p in pids.items()}
    load_before = os.getloadavg()[0]
    offsets = _log_offsets(logs or {})
    started = time.time()
    m = measure(label, argv, log=work / "commands.log", env={"NO_COLOR": "1"}, check=False)
    if logs:
        m.extra["requests_window"] = request_window(logs, offsets, started, time.time())
    if m.returncode != 0:
        log(f"  WARNING: {label} exited {m.returncode} (see {work / 'commands.log'})")
    m.extra["registry_cpu_s"] = {k: round(proc_cpu(p) - before[k], 3) for k, p in pids.items()}
    m.extra["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if journal is not None:
        m.extra["journal_bytes"] = journal_bytes(journal)
    if report is not None and report.exists():
        m.extra["report"] = report_figures(json.loads(report.read_text()))
    return m


def report_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The counters of a ``--report`` (copy's, or sync's ``run`` section)."""
    nested = data.get("run")
    run = nested if isinstance(nested, dict) and "manifests_pushed" in nested else data
    keys = (
        "manifests_pushed",
        "manifests_skipped",
        "blobs_uploaded",
        "blobs_mounted",
        "blobs_skipped",
        "new_blobs",
        "tags_set",
        "bytes_sent",
    )
    out: dict[str, Any] = {k: run[k] for k in keys if k in run}
    out["exit_code"] = data.get("exit_code", run.get("exit_code"))
    out["failures"] = len(run.get("failures", []) or [])
    return out


# -- series ----------------------------------------------------------------------------


def run_tool(
    regs: Registries,
    src: RunningRegistry,
    world: BenchWorld,
    tool: Tool,
    work: Path,
    exe: str,
) -> dict[str, Any]:
    """Every phase of one tool against one fresh destination (timed, direct)."""
    dst = regs.start("dst")
    pids = {"src": reg_pid(src), "dst": reg_pid(dst)}
    logs = {"src": src.instance.log_file, "dst": dst.instance.log_file}
    journal = work / f"journal-{time.monotonic_ns()}.sqlite" if tool.replicator else None
    phases: dict[str, Any] = {}
    try:
        for phase in tool.phases:
            argv = tool.argv(phase, work, src.instance.host, dst.instance.host, world, exe)
            m = run_cmd(tool.label, argv, work, journal=journal, pids=pids, logs=logs)
            if phase == "cold":
                m.extra["tags_ok"] = asyncio.run(check_roots(dst.instance.host, world))
            log(
                f"  {tool.label} {phase}: {m.wall_s:.2f}s wall, {m.cpu_s:.2f}s CPU, "
                f"{m.max_rss_mib:.0f} MiB, load {m.extra['loadavg_1m']}"
                + (f", {m.extra['tags_ok']}/{len(world.roots)} tags" if phase == "cold" else "")
            )
            phases[phase] = m.as_dict()
    finally:
        regs.discard(dst)
        if journal is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(journal) + suffix).unlink(missing_ok=True)
    return phases


def series_timed(
    regs: Registries,
    src: RunningRegistry,
    world: BenchWorld,
    work: Path,
    reps: int,
    tool_list: list[Tool],
    exe: str,
) -> list[dict[str, Any]]:
    """``reps`` repetitions of every tool, order reversed on odd repetitions."""
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        order = tool_list if rep % 2 == 0 else list(reversed(tool_list))
        for tool in order:
            log(f"{len(world.roots)} tags, rep {rep + 1}/{reps}: {tool.label}")
            phases = run_tool(regs, src, world, tool, work, exe)
            runs.append({"rep": rep, "tool": tool.label, "phases": phases})
    return runs


def series_counted(
    regs: Registries,
    src: RunningRegistry,
    world: BenchWorld,
    work: Path,
    tool_list: list[Tool],
    exe: str,
) -> dict[str, Any]:
    """Each tool once more, every phase, through counting proxies at both ends."""
    out: dict[str, Any] = {}
    for tool in tool_list:
        dst = regs.start("dst-counted")
        pids = {"src": reg_pid(src), "dst": reg_pid(dst)}
        journal = work / f"journal-counted-{time.monotonic_ns()}.sqlite"
        entry: dict[str, Any] = {}
        with proxy_for(src) as psrc, proxy_for(dst) as pdst:
            for phase in tool.phases:
                argv = tool.argv(phase, work, psrc.host, pdst.host, world, exe)
                psrc.reset()
                pdst.reset()
                m = run_cmd(
                    tool.label, argv, work, journal=journal if tool.replicator else None, pids=pids
                )
                entry[phase] = {
                    "measurement": m.as_dict(),
                    "src": proxy_summary(psrc.stats()),
                    "dst": proxy_summary(pdst.stats()),
                }
                total = (
                    entry[phase]["src"]["requests_total"] + entry[phase]["dst"]["requests_total"]
                )
                log(f"  counted {tool.label} {phase}: {total} requests, {m.wall_s:.2f}s")
        entry["dst_graph"] = asyncio.run(graph_counts(dst.instance.host, world, same_names=False))
        out[tool.label] = entry
        regs.discard(dst)
    return out


# -- one size --------------------------------------------------------------------------


def build(src: RunningRegistry, tags: int) -> tuple[BenchWorld, dict[str, Any]]:
    """The world of ``tags`` tags (``tags / 5`` repositories) in ``src``, and its summary."""
    if tags % TAGS_PER_REPO:
        raise SystemExit(f"--sizes: {tags} is not a multiple of {TAGS_PER_REPO}")
    spec = WorldSpec(repositories=tags // TAGS_PER_REPO, tags_per_repo=TAGS_PER_REPO)
    opts = RegistryOptions(plain_http=True)

    async def go() -> BenchWorld:
        async with RegistryTarget(src.instance.host, opts) as t:
            return await build_world(t, src.instance.host, spec)

    t0 = time.perf_counter()
    world = asyncio.run(go())
    summary: dict[str, Any] = world.summary() | {"build_s": round(time.perf_counter() - t0, 2)}
    graph = asyncio.run(graph_counts(src.instance.host, world, same_names=True))
    summary["graph_at_source"] = graph
    summary["graph_nodes"] = graph["manifests"] + graph["blobs"]
    return world, summary


def run_size(
    root: Path, tags: int, reps: int, tool_list: list[Tool], exe: str, counted: bool
) -> dict[str, Any]:
    """Build one world, run the timed series, then the counted runs."""
    regs = Registries(root / f"size-{tags}")
    work = root / f"work-{tags}"
    work.mkdir()
    try:
        src = regs.start("src")
        log(f"building the {tags}-tag world")
        world, summary = build(src, tags)
        log(f"world: {summary}")
        out: dict[str, Any] = {"tags": tags, "reps": reps, "world": summary}
        out["timed"] = series_timed(regs, src, world, work, reps, tool_list, exe)
        if counted:
            out["counted"] = series_counted(regs, src, world, work, tool_list, exe)
        return out
    finally:
        regs.close()
        shutil.rmtree(work, ignore_errors=True)


# -- main ------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    """Entry point: every size, then ``sync_results.json``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default=[60, 600], help="tag counts (default 60,600)")
    p.add_argument("--reps", type=int, default=5, help="repetitions at the smallest size")
    p.add_argument(
        "--reps-large", type=int, default=3, help="repetitions at the other sizes (default 3)"
    )
    p.add_argument("--replicator", default=REPLICATOR, help="the replicator console script")
    p.add_argument("--label", default="this checkout", help="name of the build measured")
    p.add_argument("--with-copy", action="store_true", help="also measure copy -r --from-file")
    p.add_argument("--skip-counted", action="store_true", help="no counted runs")
    p.add_argument("--ram", type=Path, default=Path("/dev/shm"), help="tmpfs for the registries")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "sync_results.json",
        help="results file (default benchmarks/sync_results.json)",
    )
    args = p.parse_args(argv)
    configure_logging(debug=False, fmt="console")
    ram = ram_dir(args.ram)
    if ram is None:
        raise SystemExit(f"--ram {args.ram}: not a writable tmpfs with 1 GiB free")
    results: dict[str, Any] = {"machine": machine(), "label": args.label}
    results["machine"]["bytecode"] = prepare_bytecode()
    results["machine"]["storage"] = f"every registry on tmpfs ({ram})"
    results["replicator"] = args.replicator
    results["replicator_version"] = _version(args.replicator)
    tool_list = tools(args.with_copy)
    root = Path(tempfile.mkdtemp(prefix="replicator-syncbench-", dir=ram))
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    started = time.perf_counter()
    results["sizes"] = {}
    try:
        for i, tags in enumerate(args.sizes):
            reps = args.reps if i == 0 else args.reps_large
            results["sizes"][str(tags)] = run_size(
                root, tags, reps, tool_list, args.replicator, not args.skip_counted
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['total_s']}s)")
    return 0


def _version(exe: str) -> str:
    import subprocess

    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip()


if __name__ == "__main__":
    sys.exit(main())
