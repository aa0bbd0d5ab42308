"""Run every benchmark scenario and write ``results.json``.

    python -m benchmarks.run [--reps N] [--out DIR] [--skip-big] [--big-layer-mib M] [--ram DIR]

Scenarios (see benchmarks/RESULTS.md for the latest figures):

* **a** — a world of 60 signed tags in 12 repositories (:mod:`benchmarks.world`)
  built once into a source registry.  ``skopeo sync --src yaml --all`` of the 60
  tags vs ``replicator copy --no-referrers --from-file`` of the same 60 pairs,
  each into a fresh destination registry; and ``replicator copy -r`` of the
  whole graph (referrers included) into another fresh destination.
* **c** — each cold run of (a) is followed by the same command again against the
  destination it just filled (everything present).
* **a and c in RAM** — the same again with every registry's storage on a tmpfs
  (``--ram``, default ``/dev/shm``; skipped when it is not a tmpfs with 1 GiB
  free): the same seeded world, without the disk's fsyncs (see NOTES.md).
* **b** — a 1 GiB image (4 x 256 MiB layers): ``skopeo copy`` vs ``replicator
  copy``, fresh destination each time: wall time, CPU seconds, peak RSS.

Every measured command is a child process (:func:`benchmarks.harness.measure`);
timed runs talk to the registries directly.  Request and byte counts come from
separate *counted* runs of the same commands through counting proxies
(:class:`tests.infra.proxy.FaultProxy`) in front of the source and of a fresh
destination, so the proxies' own cost never enters the timed figures.  The order
of the tools alternates between repetitions.  Registries are fresh
``docker-registry`` processes with temporary storage, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import REPLICATOR, REPO_ROOT, Measurement, measure
from benchmarks.probe import heads, uploads
from benchmarks.world import BenchWorld, BigImage, build_big_image, build_world
from replicator.errors import ReplicatorError
from replicator.graph.filters import GraphFilter
from replicator.graph.walk import snapshot_graph
from replicator.observe.logging import configure_logging
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.proxy import FaultProxy, ProxyStats
from tests.infra.registry import RunningRegistry, start_open

SKOPEO = "/usr/bin/skopeo"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- registries ------------------------------------------------------------------------


def proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a running process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reg_pid(reg: RunningRegistry) -> int | None:
    """Pid of the docker-registry process of an open registry."""
    return reg.processes[0].pid


class Registries:
    """Fresh registries under one temporary directory; all stopped by :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        self.live: list[RunningRegistry] = []

    def start(self, label: str) -> RunningRegistry:
        """Start an open registry with empty storage."""
        self.n += 1
        reg = start_open(self.root / f"{self.n:03d}-{label}")
        self.live.append(reg)
        return reg

    def discard(self, reg: RunningRegistry) -> None:
        """Stop ``reg`` and delete its storage."""
        reg.stop()
        self.live.remove(reg)
        shutil.rmtree(reg.workdir, ignore_errors=True)

    def close(self) -> None:
        """Stop every registry still running."""
        for reg in list(self.live):
            self.discard(reg)


@contextmanager
def proxy_for(reg: RunningRegistry) -> Iterator[FaultProxy]:
    """A counting proxy in front of ``reg`` for the duration of the block."""
    proxy = FaultProxy(reg.instance).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- commands --------------------------------------------------------------------------


def sync_yaml(path: Path, src_host: str, world: BenchWorld) -> Path:
    """skopeo sync's YAML source listing exactly the world's tags."""
    by_repo: dict[str, list[str]] = {}
    for repo, tag, _, _ in world.roots:
        by_repo.setdefault(repo, []).append(tag)
    lines = [f"{src_host}:", "  tls-verify: false", "  images:"]
    for repo, tags in by_repo.items():
        lines.append(f"    {repo}: [{', '.join(tags)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def dst_repo(repo: str) -> str:
    """Where skopeo sync (unscoped) puts a repository: its last path component."""
    return repo.rsplit("/", 1)[-1]


def pairs_file(path: Path, src_host: str, dst_host: str, world: BenchWorld) -> Path:
    """``SRC DST`` lines for ``replicator copy --from-file`` (same names as skopeo's)."""
    path.write_text(
        "".join(
            f"{src_host}/{repo}:{tag} {dst_host}/{dst_repo(repo)}:{tag}\n"
            for repo, tag, _, _ in world.roots
        )
    )
    return path


@dataclass(frozen=True)
class Tool:
    """One way of copying the world: a label and how to build its argv."""

    label: str
    argv: Callable[[Path, str, str], list[str]]  # (workdir, src_host, dst_host) -> argv
    referrers: bool = False
    replicator: bool = False


def world_tools(world: BenchWorld) -> list[Tool]:
    """skopeo sync, replicator --no-referrers, replicator -r."""

    def skopeo(work: Path, src: str, dst: str) -> list[str]:
        yaml = sync_yaml(work / f"sync-{src}.yaml", src, world)
        return [
            SKOPEO,
            "sync",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            "--all",
            str(yaml),
            dst,
        ]

    def repl(flag: str) -> Callable[[Path, str, str], list[str]]:
        def argv(work: Path, src: str, dst: str) -> list[str]:
            pairs = pairs_file(work / f"pairs-{src}-{dst}.txt", src, dst, world)
            return [REPLICATOR, "copy", flag, "--from-file", str(pairs)]

        return argv

    return [
        Tool("skopeo sync", skopeo),
        Tool("replicator --no-referrers", repl("--no-referrers"), replicator=True),
        Tool("replicator -r", repl("-r"), referrers=True, replicator=True),
    ]


def run_cmd(
    label: str,
    argv: list[str],
    work: Path,
    *,
    replicator: bool,
    pids: dict[str, int | None],
) -> Measurement:
    """Measure one command; with replicator add ``--report``; record registries' CPU."""
    argv = list(argv)
    report: Path | None = None
    if replicator:
        report = work / f"report-{time.monotonic_ns()}.json"
        argv += ["--report", str(report)]
    before = {k: proc_cpu(p) for k, p in pids.items()}
    load_before = os.getloadavg()[0]
    m = measure(label, argv, log=work / "commands.log", env={"NO_COLOR": "1"}, check=False)
    if m.returncode != 0:
        log(f"  WARNING: {label} exited {m.returncode} (see {work / 'commands.log'})")
    m.extra["registry_cpu_s"] = {k: round(proc_cpu(p) - before[k], 3) for k, p in pids.items()}
    m.extra["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if report is not None and report.exists():
        data = json.loads(report.read_text())
        data.pop("jobs", None)
        m.extra["report"] = data
    return m


# -- checks ----------------------------------------------------------------------------


async def check_roots(dst_host: str, world: BenchWorld) -> int:
    """Number of the world's tags present at ``dst_host`` with the source's digest."""
    ok = 0
    async with RegistryTarget(dst_host, RegistryOptions(plain_http=True)) as t:
        for repo, tag, _, digest in world.roots:
            try:
                desc = await t.resolve(dst_repo(repo), tag)
            except ReplicatorError:  # counted as missing
                continue
            ok += desc.digest == digest
    return ok


async def graph_counts(host: str, world: BenchWorld, *, same_names: bool) -> dict[str, int]:
    """Manifests and blobs reachable with referrers from the world's tags at ``host``."""
    manifests: set[str] = set()
    blobs: set[str] = set()
    async with RegistryTarget(host, RegistryOptions(plain_http=True)) as t:
        for repo, tag, _, _ in world.roots:
            snap = await snapshot_graph(
                t, repo if same_names else dst_repo(repo), tag, GraphFilter(referrers=True)
            )
            manifests.update(snap.manifests)
            blobs.update(snap.blobs)
    return {"manifests": len(manifests), "blobs": len(blobs)}


def proxy_summary(stats: ProxyStats) -> dict[str, Any]:
    """Counts of one proxy: requests by method/kind, blob bytes, duplicate blob GETs."""
    by: dict[str, int] = {}
    for (method, kind), s in stats.by_kind.items():
        by[f"{method} {kind}"] = s.requests
    per_digest: dict[str, int] = {}
    for r in stats.log:
        if r.method == "GET" and r.kind == "blob":
            digest = r.path.split("?", 1)[0].rsplit("/", 1)[-1]
            per_digest[digest] = per_digest.get(digest, 0) + 1
    manifest_gets = stats.paths(method="GET", kind="manifest")
    return {
        "requests_total": stats.requests(),
        "requests_blob": stats.requests(kind="blob") + stats.requests(kind="upload"),
        "requests_manifest": stats.requests(kind="manifest"),
        "requests_by_kind": dict(sorted(by.items())),
        "blob_bytes_up": stats.bytes_up(kind="upload"),
        "blob_bytes_down": stats.bytes_down(method="GET", kind="blob"),
        "blob_gets": sum(per_digest.values()),
        "blob_get_digests": len(per_digest),
        "duplicate_blob_gets": sum(n - 1 for n in per_digest.values() if n > 1),
        "manifest_gets": sum(manifest_gets.values()),
        "manifest_get_paths": len(manifest_gets),
        "duplicate_manifest_gets": sum(n - 1 for n in manifest_gets.values() if n > 1),
        "manifest_gets_by_reference": {
            "tag": sum(n for p, n in manifest_gets.items() if ":" not in p.rsplit("/", 1)[-1]),
            "digest": sum(n for p, n in manifest_gets.items() if ":" in p.rsplit("/", 1)[-1]),
            "fallback_tag": sum(
                n for p, n in manifest_gets.items() if p.rsplit("/", 1)[-1].startswith("sha256-")
            ),
        },
    }


# -- scenarios -------------------------------------------------------------------------


def scenario_world(
    regs: Registries, src: RunningRegistry, world: BenchWorld, work: Path, reps: int
) -> dict[str, Any]:
    """(a) cold copies and (c) re-runs, timed, ``reps`` times, order alternating."""
    tools = world_tools(world)
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        order = tools if rep % 2 == 0 else list(reversed(tools))
        for tool in order:
            dst = regs.start("dst")
            pids = {"src": reg_pid(src), "dst": reg_pid(dst)}
            argv = tool.argv(work, src.instance.host, dst.instance.host)
            log(f"rep {rep + 1}/{reps}: {tool.label} cold")
            cold = run_cmd(tool.label, argv, work, replicator=tool.replicator, pids=pids)
            cold.extra["tags_ok"] = asyncio.run(check_roots(dst.instance.host, world))
            log(f"  {cold.wall_s:.2f}s, {cold.extra['tags_ok']}/60 tags; re-run")
            warm = run_cmd(tool.label, argv, work, replicator=tool.replicator, pids=pids)
            log(f"  re-run {warm.wall_s:.2f}s")
            runs.append(
                {"rep": rep, "tool": tool.label, "cold": cold.as_dict(), "warm": warm.as_dict()}
            )
            regs.discard(dst)
    return {"runs": runs}


def scenario_counted(
    regs: Registries, src: RunningRegistry, world: BenchWorld, work: Path
) -> dict[str, Any]:
    """Each tool once more, cold then re-run, through counting proxies."""
    out: dict[str, Any] = {}
    for tool in world_tools(world):
        dst = regs.start("dst-counted")
        pids = {"src": reg_pid(src), "dst": reg_pid(dst)}
        with proxy_for(src) as psrc, proxy_for(dst) as pdst:
            argv = tool.argv(work, psrc.host, pdst.host)
            entry: dict[str, Any] = {}
            for phase in ("cold", "warm"):
                psrc.reset()
                pdst.reset()
                log(f"counted: {tool.label} {phase}")
                m = run_cmd(tool.label, argv, work, replicator=tool.replicator, pids=pids)
                entry[phase] = {
                    "measurement": m.as_dict(),
                    "src": proxy_summary(psrc.stats()),
                    "dst": proxy_summary(pdst.stats()),
                }
        if tool.referrers:
            entry["dst_graph"] = asyncio.run(
                graph_counts(dst.instance.host, world, same_names=False)
            )
        out[tool.label] = entry
        regs.discard(dst)
    return out


def scenario_floor(regs: Registries, new_blobs: int, metadata_requests: int) -> dict[str, Any]:
    """The registry alone: ``new_blobs`` uploads and ``metadata_requests`` HEADs."""
    out: dict[str, Any] = {}
    for conc in (8, 32):
        reg = regs.start("floor")
        r = asyncio.run(uploads(reg.instance.host, "probe/uploads", new_blobs, conc))
        out[f"uploads_c{conc}"] = {"requests": r.requests, "wall_s": r.wall_s}
        h = asyncio.run(
            heads(reg.instance.host, "probe/uploads", "sha256:" + "0" * 64, metadata_requests, conc)
        )
        out[f"heads_c{conc}"] = {"requests": h.requests, "wall_s": h.wall_s}
        regs.discard(reg)
        log(
            f"floor c={conc}: {new_blobs} uploads {r.wall_s:.2f}s, {h.requests} HEADs {h.wall_s:.2f}s"
        )
    return out


def scenario_big(
    regs: Registries, src: RunningRegistry, big: BigImage, work: Path, reps: int
) -> dict[str, Any]:
    """(b) the large image: skopeo copy vs replicator copy, fresh destination each."""
    ref = f"{big.repository}:{big.tag}"

    def skopeo(s: str, d: str) -> list[str]:
        return [
            SKOPEO,
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{s}/{ref}",
            f"docker://{d}/{ref}",
        ]

    def repl(s: str, d: str) -> list[str]:
        return [REPLICATOR, "copy", f"{s}/{ref}", f"{d}/{ref}"]

    tools = [("skopeo copy", skopeo, False), ("replicator copy", repl, True)]
    runs: list[dict[str, Any]] = []
    for rep in range(reps):
        order = tools if rep % 2 == 0 else list(reversed(tools))
        for label, argv, is_repl in order:
            dst = regs.start("dst-big")
            pids = {"src": reg_pid(src), "dst": reg_pid(dst)}
            log(f"big rep {rep + 1}/{reps}: {label}")
            m = run_cmd(
                label,
                argv(src.instance.host, dst.instance.host),
                work,
                replicator=is_repl,
                pids=pids,
            )

            async def check(host: str = dst.instance.host) -> bool:
                async with RegistryTarget(host, RegistryOptions(plain_http=True)) as t:
                    return (await t.resolve(big.repository, big.tag)).digest == big.digest

            m.extra["digest_ok"] = asyncio.run(check())
            log(
                f"  {m.wall_s:.2f}s wall, {m.cpu_s:.2f}s CPU, {m.max_rss_mib:.0f} MiB, "
                f"ok={m.extra['digest_ok']}"
            )
            runs.append({"rep": rep, "tool": label, "run": m.as_dict()})
            regs.discard(dst)
    return {"image": {"size": big.size, "digest": big.digest}, "runs": runs}


def ram_dir(path: Path) -> Path | None:
    """``path`` when it is a writable tmpfs with at least 1 GiB free, else None."""
    if str(path) == "none" or not path.is_dir() or not os.access(path, os.W_OK):
        return None
    mounts = Path("/proc/mounts").read_text().splitlines()
    on_tmpfs = any(
        line.split()[1] == str(path) and line.split()[2] == "tmpfs"
        for line in mounts
        if len(line.split()) > 2
    )
    if not on_tmpfs or shutil.disk_usage(path).free < 1 << 30:
        return None
    return path


def scenario_world_in_ram(ram: Path, world: BenchWorld, work: Path, reps: int) -> dict[str, Any]:
    """(a) and (c) again with every registry's storage on a tmpfs.

    The same world (its builder is seeded: same digests) in a source registry
    whose storage, like each fresh destination's, lives in RAM.  On this VM
    each blob upload costs distribution three fsyncs on a disk shared with
    other tenants; in RAM the registries do the same requests without them,
    and what remains is closer to the tools' own work (see NOTES.md).
    """
    root = Path(tempfile.mkdtemp(prefix="replicator-bench-ram-", dir=ram))
    regs = Registries(root)
    try:
        src = regs.start("src-ram")
        log("building the world again, registries in RAM")

        async def build() -> BenchWorld:
            async with RegistryTarget(src.instance.host, RegistryOptions(plain_http=True)) as t:
                return await build_world(t, src.instance.host)

        again = asyncio.run(build())
        if [r[3] for r in again.roots] != [r[3] for r in world.roots]:
            raise RuntimeError("the world built in RAM differs from the one on disk")
        out = scenario_world(regs, src, again, work, reps)
        out["storage"] = f"tmpfs ({ram})"
        return out
    finally:
        regs.close()
        shutil.rmtree(root, ignore_errors=True)


# -- machine ---------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine() -> dict[str, Any]:
    """nproc, CPU model, memory, Python and tool versions."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    git = _version(["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--short", "--", "replicator"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if dirty:
        git += f" (plus uncommitted changes in {', '.join(dirty[1::2])})"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "replicator": _version([REPLICATOR, "--version"]),
        "skopeo": _version([SKOPEO, "--version"]),
        "docker_registry": _version(["/usr/bin/docker-registry", "--version"]),
        "git_head": git,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def prepare_bytecode() -> str:
    """Let measured Python commands use cached bytecode, as an installed package does.

    With ``PYTHONDONTWRITEBYTECODE`` set (as in some CI and agent environments) an
    editable install compiles every replicator module from source at each start:
    about 0.12 s of CPU per command, which a pip-installed replicator never pays.
    The variable is dropped for the measured commands and the package is compiled
    once up front (``__pycache__`` is git-ignored).
    """
    was = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "replicator")],
        check=False,
        env=dict(os.environ),
    )
    note = "replicator compiled to __pycache__ before the runs"
    return note + (" (PYTHONDONTWRITEBYTECODE was set: dropped for them)" if was else "")


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point: run everything, write results.json."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="repetitions of each timed run (default 5)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks", help="output directory")
    p.add_argument("--skip-big", action="store_true", help="skip scenario (b)")
    p.add_argument("--skip-world", action="store_true", help="skip scenarios (a) and (c)")
    p.add_argument("--big-layer-mib", type=int, default=256, help="layer size of (b) in MiB")
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temporary directory")
    p.add_argument(
        "--ram",
        type=Path,
        default=Path("/dev/shm"),
        help="a tmpfs for the second (a)+(c) series with the registries' storage in RAM "
        "(default /dev/shm; 'none' to skip it)",
    )
    args = p.parse_args(argv)
    configure_logging(debug=False, fmt="console")
    results: dict[str, Any] = {"machine": machine(), "reps": args.reps}
    results["machine"]["bytecode"] = prepare_bytecode()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="replicator-bench-", dir=args.tmp))
    work = root / "work"
    work.mkdir()
    # replicator's resume journal (on by default) goes to $XDG_STATE_HOME: keep it in
    # the temporary directory so runs start without history and leave nothing behind.
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    results["machine"]["journal"] = "default (on), in a temporary $XDG_STATE_HOME"
    regs = Registries(root)
    try:
        src = regs.start("src")
        opts = RegistryOptions(plain_http=True)
        if not args.skip_world:
            log("building the world")

            async def build() -> BenchWorld:
                async with RegistryTarget(src.instance.host, opts) as t:
                    return await build_world(t, src.instance.host)

            t0 = time.perf_counter()
            world = asyncio.run(build())
            results["world"] = world.summary() | {"build_s": round(time.perf_counter() - t0, 2)}
            results["world"]["graph_at_source"] = asyncio.run(
                graph_counts(src.instance.host, world, same_names=True)
            )
            log(f"world: {results['world']}")
            results["world_runs"] = scenario_world(regs, src, world, work, args.reps)
            results["counted"] = scenario_counted(regs, src, world, work)
            cold = results["counted"]["replicator -r"]["cold"]["measurement"]["extra"]["report"]
            warm = results["counted"]["replicator -r"]["warm"]["dst"]["requests_total"]
            results["floor"] = scenario_floor(regs, int(cold["new_blobs"]), max(100, int(warm)))
            ram = ram_dir(args.ram)
            if ram is None:
                log(f"no RAM series: {args.ram} is not a writable tmpfs with 1 GiB free")
            else:
                results["world_runs_ram"] = scenario_world_in_ram(ram, world, work, args.reps)
        if not args.skip_big:
            log(f"building the big image ({4 * args.big_layer_mib} MiB)")

            async def build_big() -> BigImage:
                async with RegistryTarget(src.instance.host, opts) as t:
                    return await build_big_image(t, layer_size=args.big_layer_mib << 20)

            t0 = time.perf_counter()
            big = asyncio.run(build_big())
            log(f"big image built in {time.perf_counter() - t0:.1f}s")
            results["big"] = scenario_big(regs, src, big, work, args.reps)
    finally:
        regs.close()
        shutil.rmtree(root, ignore_errors=True)
    results["total_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['total_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
