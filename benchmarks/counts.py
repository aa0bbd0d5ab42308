"""Request counts per kind of the benchmark world's copies, for behaviour comparisons.

    python -m benchmarks.counts [--out FILE] [--compare OLD.json]

Builds the world of :mod:`benchmarks.world` (60 signed tags) into a fresh
source registry, then runs ``replicator copy --no-referrers --from-file`` and
``replicator copy -r --from-file`` through counting proxies, each cold (fresh
destination) and again (re-run against the filled destination), and writes the
requests each proxy saw by method and kind.  A refactoring that must not change
behaviour is checked by running this before and after it and comparing the two
files (``--compare``): the counts are deterministic for the same world.  No
timing is taken here: ``benchmarks.run`` measures time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.run import Registries, log, proxy_for, proxy_summary, run_cmd, world_tools
from benchmarks.world import BenchWorld, build_world
from replicator.observe.logging import configure_logging
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions


def counted(work: Path, regs: Registries, world: BenchWorld, src_host: str) -> dict[str, Any]:
    """``{tool: {phase: {"src": {...}, "dst": {...}, "exit": n}}}`` for the replicator tools."""
    out: dict[str, Any] = {}
    src = regs.live[0]
    for tool in world_tools(world):
        if not tool.replicator:
            continue
        dst = regs.start("dst")
        with proxy_for(src) as psrc, proxy_for(dst) as pdst:
            argv = tool.argv(work, psrc.host, pdst.host)
            entry: dict[str, Any] = {}
            for phase in ("cold", "rerun"):
                psrc.reset()
                pdst.reset()
                log(f"counted: {tool.label} {phase}")
                m = run_cmd(tool.label, argv, work, replicator=True, pids={})
                entry[phase] = {
                    "exit": m.returncode,
                    "src": proxy_summary(psrc.stats())["requests_by_kind"],
                    "dst": proxy_summary(pdst.stats())["requests_by_kind"],
                }
        out[tool.label] = entry
        regs.discard(dst)
    return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines naming every count that differs (empty when all are equal)."""
    diffs = []
    for tool, phases in old.items():
        for phase, sides in phases.items():
            for side in ("src", "dst"):
                a = sides.get(side, {})
                b = new.get(tool, {}).get(phase, {}).get(side, {})
                for kind in sorted(set(a) | set(b)):
                    if a.get(kind) != b.get(kind):
                        diffs.append(
                            f"{tool} {phase} {side} {kind}: {a.get(kind)} -> {b.get(kind)}"
                        )
    return diffs


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="write the counts (JSON) here")
    p.add_argument("--compare", type=Path, default=None, help="counts of an earlier run")
    args = p.parse_args(argv)
    configure_logging(debug=False, fmt="console")
    root = Path(tempfile.mkdtemp(prefix="replicator-counts-"))
    work = root / "work"
    work.mkdir()
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    regs = Registries(root)
    try:
        src = regs.start("src")

        async def build() -> BenchWorld:
            async with RegistryTarget(src.instance.host, RegistryOptions(plain_http=True)) as t:
                return await build_world(t, src.instance.host)

        world = asyncio.run(build())
        result = counted(work, regs, world, src.instance.host)
    finally:
        regs.close()
        shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    if args.compare is not None:
        diffs = compare(json.loads(args.compare.read_text()), result)
        for line in diffs:
            print(line)
        print(f"{len(diffs)} count(s) differ")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
