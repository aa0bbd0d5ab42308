"""Benchmarks of the resume journal (issue 5).

Run: ``.venv/bin/python -m benchmarks.journal_bench [--reps 3] [--gib 2]``.
Writes ``benchmarks/journal_results.json`` and ``benchmarks/RESULTS-journal.md``.

1. **Resume after a kill at about 50%** of a 2 GiB copy (8 layers of 256 MiB,
   registry to registry, no proxy): per repetition an uninterrupted copy, and a
   copy stopped once the destination's storage holds half of the bytes followed
   by the same command again; the ratio is (stopped run + rerun) / uninterrupted.
   Two ways of stopping: ``kill`` (SIGTERM, kill's default signal: a graceful
   stop at acknowledged chunks) and ``kill -9`` (SIGKILL).
2. **Journal overhead** on the 380-manifest world of the engine issue
   (``benchmarks.world``): ``copy -r --from-file`` of its 60 tags into an empty
   registry with a fresh journal vs ``--no-journal``.

Every timed pair runs in the same repetition against fresh destination
registries, in alternating order; the medians of the repetitions are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import REPLICATOR, measure
from benchmarks.run import Registries
from benchmarks.world import BenchWorld, build_big_image, build_world
from replicator.observe.logging import configure_logging
from replicator.targets.registry import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.registry import RunningRegistry

OUT = Path(__file__).resolve().parent


def log(msg: str) -> None:
    """Progress on stderr."""
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def stored_bytes(reg: RunningRegistry) -> int:
    """Bytes the registry holds on disk: finished blobs plus open upload sessions."""
    root = reg.workdir / "data" / "docker" / "registry" / "v2"
    total = 0
    for base in (root / "blobs", root / "repositories"):
        for dirpath, _, files in os.walk(base):
            for f in files:
                if f == "data":
                    with contextlib.suppress(FileNotFoundError):
                        total += os.stat(os.path.join(dirpath, f)).st_size
    return total


def copy_argv(journal: Path | None, src: str, dst: str, *extra: str) -> list[str]:
    """``replicator copy`` with a journal (or ``--no-journal``)."""
    where = ["--journal", str(journal)] if journal is not None else ["--no-journal"]
    return [REPLICATOR, "copy", *where, *extra, src, dst]


def stopped_copy(
    argv: list[str], reg: RunningRegistry, total: int, share: float, sig: int, logfile: Path
) -> tuple[float, int, int]:
    """Start ``argv``; send ``sig`` once ``reg`` stores ``share`` of ``total`` bytes.

    Returns (wall seconds until the process ended, its exit code, bytes stored at the signal).
    """
    env = dict(os.environ, NO_COLOR="1")
    with logfile.open("ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
        at = 0
        while proc.poll() is None:
            at = stored_bytes(reg)
            if at >= share * total:
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        proc.wait()
        return time.perf_counter() - t0, proc.returncode, at


def bench_resume(
    regs: Registries, src: RunningRegistry, total: int, work: Path, reps: int
) -> dict[str, Any]:
    """Uninterrupted copy vs stopped-at-50% + rerun, for SIGTERM and SIGKILL."""
    s = src.instance.host
    rows: list[dict[str, Any]] = []
    kinds: list[tuple[str, Callable[[RunningRegistry, Path], dict[str, Any]]]] = []

    def plain(dst: RunningRegistry, journal: Path) -> dict[str, Any]:
        argv = copy_argv(journal, f"{s}/bench/big:v1", f"{dst.instance.host}/big:v1")
        m = measure("uninterrupted", argv, log=work / "commands.log", env={"NO_COLOR": "1"})
        return {"wall_s": round(m.wall_s, 3)}

    def stopped(sig: int) -> Callable[[RunningRegistry, Path], dict[str, Any]]:
        def go(dst: RunningRegistry, journal: Path) -> dict[str, Any]:
            argv = copy_argv(journal, f"{s}/bench/big:v1", f"{dst.instance.host}/big:v1")
            first, code, at = stopped_copy(argv, dst, total, 0.5, sig, work / "commands.log")
            m = measure("rerun", argv, log=work / "commands.log", env={"NO_COLOR": "1"})
            return {
                "first_wall_s": round(first, 3),
                "first_exit": code,
                "stopped_at_bytes": at,
                "rerun_wall_s": round(m.wall_s, 3),
                "wall_s": round(first + m.wall_s, 3),
            }

        return go

    kinds = [
        ("uninterrupted", plain),
        ("SIGTERM at 50% + rerun", stopped(signal.SIGTERM)),
        ("SIGKILL at 50% + rerun", stopped(signal.SIGKILL)),
    ]
    for rep in range(reps):
        order = kinds if rep % 2 == 0 else list(reversed(kinds))
        for label, fn in order:
            dst = regs.start("dst")
            journal = work / f"journal-{rep}-{len(rows)}.sqlite"
            log(f"resume rep {rep + 1}/{reps}: {label}")
            row = {"rep": rep, "kind": label} | fn(dst, journal)
            log(f"  {row}")
            rows.append(row)
            regs.discard(dst)
    return summarise(rows, "uninterrupted")


def bench_overhead(
    regs: Registries, src: RunningRegistry, world: BenchWorld, work: Path, reps: int
) -> dict[str, Any]:
    """``copy -r --from-file`` of the world with a fresh journal vs ``--no-journal``."""
    rows: list[dict[str, Any]] = []
    kinds = ["--no-journal", "--journal"]
    for rep in range(reps):
        order = kinds if rep % 2 == 0 else list(reversed(kinds))
        for label in order:
            dst = regs.start("dst")
            pairs = work / f"pairs-{dst.instance.host}.txt"
            pairs.write_text(
                "".join(
                    f"{src.instance.host}/{repo}:{tag} {dst.instance.host}/{repo}:{tag}\n"
                    for repo, tag, _, _ in world.roots
                )
            )
            journal = work / f"world-journal-{rep}.sqlite" if label == "--journal" else None
            argv = [
                REPLICATOR,
                "copy",
                *(["--journal", str(journal)] if journal else ["--no-journal"]),
                "-r",
                "--from-file",
                str(pairs),
            ]
            log(f"overhead rep {rep + 1}/{reps}: {label}")
            m = measure(label, argv, log=work / "commands.log", env={"NO_COLOR": "1"})
            log(f"  {m.wall_s:.2f}s")
            rows.append({"rep": rep, "kind": label, "wall_s": m.wall_s, "cpu_s": m.cpu_s})
            regs.discard(dst)
    return summarise(rows, "--no-journal")


def summarise(rows: list[dict[str, Any]], base: str) -> dict[str, Any]:
    """Medians per kind and their ratios to ``base``."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    medians = {k: statistics.median(r["wall_s"] for r in rows if r["kind"] == k) for k in kinds}
    out: dict[str, Any] = {
        "runs": rows,
        "median_wall_s": {k: round(v, 3) for k, v in medians.items()},
        "ratio_to_" + base: {k: round(v / medians[base], 3) for k, v in medians.items()},
    }
    if all("cpu_s" in r for r in rows):
        cpu = {k: statistics.median(r["cpu_s"] for r in rows if r["kind"] == k) for k in kinds}
        out["median_cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
        out["cpu_ratio_to_" + base] = {k: round(v / cpu[base], 3) for k, v in cpu.items()}
    return out


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """RESULTS-journal.md: raw figures and ratios."""
    lines = [
        "# Resume journal benchmarks",
        "",
        "Command: `.venv/bin/python -m benchmarks.journal_bench "
        f"--reps {results['reps']} --resume-reps {results['resume_reps']}` "
        f"({results['machine']}); medians, order alternating within each repetition, "
        "a fresh destination registry for every run, local docker-registry 2.8.2 processes. "
        f"Load average while running: {results.get('load', '?')} (the 2 cores are shared "
        "with other work: single runs vary by +-20%).",
        "",
    ]
    if "resume" in results:
        r = results["resume"]
        lines += [
            f"## Resume after a stop at 50% of a {results['big_bytes'] / 2**30:.2f} GiB copy",
            "",
            "Target: stopped run + rerun at most 1.15x the uninterrupted copy.",
            "",
            "| run | rep | first run (s) | exit | stored at stop (MiB) | rerun (s) | total (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["runs"]:
            lines.append(
                f"| {row['kind']} | {row['rep'] + 1} | {row.get('first_wall_s', '-')} | "
                f"{row.get('first_exit', '-')} | "
                f"{round(row['stopped_at_bytes'] / 2**20) if 'stopped_at_bytes' in row else '-'} | "
                f"{row.get('rerun_wall_s', '-')} | {row['wall_s']:.2f} |"
            )
        lines += ["", "| run | median wall (s) | ratio |", "|---|---|---|"]
        for k, v in r["median_wall_s"].items():
            lines.append(f"| {k} | {v:.2f} | {r['ratio_to_uninterrupted'][k]:.3f}x |")
        lines.append("")
    if "overhead" in results:
        o = results["overhead"]
        lines += [
            "## Journal overhead on the 380-manifest world",
            "",
            "Target: at most 5% of the wall time without a journal.",
            "",
            "| run | rep | wall (s) | CPU (s) |",
            "|---|---|---|---|",
        ]
        for row in o["runs"]:
            lines.append(
                f"| {row['kind']} | {row['rep'] + 1} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} |"
            )
        lines += [
            "",
            "| run | median wall (s) | ratio | median CPU (s) | CPU ratio |",
            "|---|---|---|---|---|",
        ]
        for k, v in o["median_wall_s"].items():
            lines.append(
                f"| {k} | {v:.2f} | {o['ratio_to_--no-journal'][k]:.3f}x | "
                f"{o['median_cpu_s'][k]:.2f} | {o['cpu_ratio_to_--no-journal'][k]:.3f}x |"
            )
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="repetitions of the overhead pair")
    p.add_argument("--resume-reps", type=int, default=3, help="repetitions of the resume runs")
    p.add_argument("--gib", type=float, default=2.0, help="size of the resume image (GiB)")
    p.add_argument("--skip-resume", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    configure_logging(debug=False, fmt="console")
    results: dict[str, Any] = {
        "reps": args.reps,
        "resume_reps": args.resume_reps,
        "machine": f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}",
    }
    root = Path(tempfile.mkdtemp(prefix="replicator-journal-bench-"))
    work = root / "work"
    work.mkdir()
    regs = Registries(root)
    opts = RegistryOptions(plain_http=True)
    try:
        if not args.skip_overhead:
            src = regs.start("world-src")

            async def build() -> BenchWorld:
                async with RegistryTarget(src.instance.host, opts) as t:
                    return await build_world(t, src.instance.host)

            log("building the world")
            world = asyncio.run(build())
            results["world"] = world.summary()
            results["overhead"] = bench_overhead(regs, src, world, work, args.reps)
            regs.discard(src)
        if not args.skip_resume:
            src = regs.start("big-src")
            layers = max(1, round(args.gib * 4))

            async def build_big() -> None:
                async with RegistryTarget(src.instance.host, opts) as t:
                    await build_big_image(t, layers=layers, layer_size=256 << 20)

            log(f"building the big image ({layers} x 256 MiB)")
            asyncio.run(build_big())
            total = stored_bytes(src)
            results["big_bytes"] = total
            results["resume"] = bench_resume(regs, src, total, work, args.resume_reps)
            regs.discard(src)
    finally:
        regs.close()
        shutil.rmtree(root, ignore_errors=True)
    results["load"] = [round(x, 1) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "journal_results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "RESULTS-journal.md")
    log(f"wrote {args.out / 'RESULTS-journal.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
