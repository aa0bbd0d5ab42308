"""Air-gap bundles against skopeo's ``dir`` round trip, side by side in the same run.

    python -m benchmarks.bundle_bench [--reps N] [--out DIR] [--skip-world] [--skip-big]
                                      [--big-layer-mib M] [--tmp DIR]

Scenarios (results in ``bundle_results.json``; ``RESULTS-bundle.md`` discusses them):

* **world** — the 60-tag world of :mod:`benchmarks.world` (12 repositories, OCI and
  Docker images, OCI indexes and Docker manifest lists, each signed, with an SBOM and
  the SBOM's signature), built once in a source registry.
  replicator: ``bundle create -o DIR`` of the 12 repositories (referrers included),
  ``bundle verify DIR``, ``bundle import DIR DEST/mirror`` into a fresh registry (the
  import verifies the bundle again first); and the same with ``referrers: false``
  (a config job), which moves what skopeo moves.
  skopeo: ``skopeo sync --src yaml --dest dir --all`` of the same 60 tags, then
  ``skopeo sync --src dir --dest docker --all`` into a fresh registry.
* **big** — a 1 GiB image (4 x 256 MiB layers): the same two round trips.
* **verify** — ``bundle verify`` of the big bundle against ``sha256sum`` of its parts,
  alternating, both reading from the page cache: throughput in MiB/s.

Every command is a child process measured by :func:`benchmarks.harness.measure` (wall
time, CPU seconds, peak RSS); the 1-minute load average is recorded before and after
each.  Bytes on disk: the sum of file sizes (apparent) and of allocated blocks of each
tool's output directory.  Every import is checked: each tag's digest at the destination
equals the source's.  Registries are fresh ``docker-registry`` processes with temporary
storage, removed at the end; the journal lives in a temporary ``$XDG_STATE_HOME``.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import REPLICATOR, REPO_ROOT, Measurement, measure
from benchmarks.run import SKOPEO, Registries, log, machine, prepare_bytecode
from benchmarks.world import BenchWorld, build_big_image, build_world
from replicator.observe.logging import configure_logging
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.registry import RunningRegistry

PLAIN = RegistryOptions(plain_http=True)


@dataclass(frozen=True)
class Images:
    """What a scenario moves: ``(repository, tag, digest)`` at the source."""

    label: str
    roots: list[tuple[str, str, str]]

    @property
    def repositories(self) -> list[str]:
        """Distinct repositories, in order."""
        return list(dict.fromkeys(r for r, _, _ in self.roots))


def disk_usage(path: Path) -> dict[str, int]:
    """Bytes under ``path``: apparent, allocated, files; and for skopeo's ``dir`` layout the
    bytes of distinct blob files (named by their hex digest) against all of them."""
    apparent = allocated = files = blob_files = 0
    distinct: dict[str, int] = {}
    for base, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(base, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
            if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                blob_files += st.st_size
                distinct[name] = st.st_size
    out = {"apparent_bytes": apparent, "allocated_bytes": allocated, "files": files}
    if distinct:
        out["blob_file_bytes"] = blob_files
        out["distinct_blob_bytes"] = sum(distinct.values())
    document = path / "bundle.json"
    if document.exists():
        out["bundle_json_bytes"] = document.stat().st_size
    return out


def timed(label: str, argv: list[str], work: Path) -> Measurement:
    """Measure one command, with the load average before and after."""
    before = os.getloadavg()[0]
    m = measure(label, argv, log=work / "commands.log", env={"NO_COLOR": "1"}, check=False)
    m.extra["loadavg_1m"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    if m.returncode != 0:
        log(f"  WARNING: {label} exited {m.returncode} (see {work / 'commands.log'})")
    return m


async def _digests_at(host: str, names: list[tuple[str, str, str]]) -> int:
    """How many of ``(dest repository, tag, digest)`` resolve to that digest at ``host``."""
    ok = 0
    async with RegistryTarget(host, PLAIN) as t:
        for repo, tag, digest in names:
            try:
                if (await t.resolve(repo, tag)).digest == digest:
                    ok += 1
            except Exception:  # counted as missing
                pass
    return ok


def check(host: str, images: Images, repo_of: Callable[[str], str]) -> int:
    """Tags of ``images`` present at ``host`` with the source's digest."""
    names = [(repo_of(r), t, d) for r, t, d in images.roots]
    return asyncio.run(_digests_at(host, names))


# ------------------------------------------------------------------------ the tools


def skopeo_yaml(path: Path, src: str, images: Images) -> Path:
    """skopeo sync's YAML source listing exactly the scenario's tags."""
    by_repo: dict[str, list[str]] = {}
    for repo, tag, _ in images.roots:
        by_repo.setdefault(repo, []).append(tag)
    lines = [f"{src}:", "  tls-verify: false", "  images:"]
    lines += [f"    {repo}: [{', '.join(tags)}]" for repo, tags in by_repo.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def no_referrers_config(path: Path, src: str, images: Images) -> Path:
    """A sync config bundling the scenario's repositories without referrers."""
    lines = ["version: 1", "jobs:"]
    for i, repo in enumerate(images.repositories):
        lines += [
            f"  - name: r{i}",
            f"    source: {src}/{repo}",
            '    destinations: ["ocidir://./unused"]',
            "    referrers: false",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def replicator_round(
    regs: Registries, src: RunningRegistry, images: Images, work: Path, tag: str, config: bool
) -> dict[str, Any]:
    """bundle create, verify, import into a fresh registry; sizes; the check."""
    host = src.instance.host
    out = work / f"bundle-{tag}"
    inputs = (
        [str(no_referrers_config(work / f"{tag}.yaml", host, images))]
        if config
        else [f"{host}/{repo}" for repo in images.repositories]
    )
    create = timed("bundle create", [REPLICATOR, "bundle", "create", *inputs, "-o", str(out)], work)
    verify = timed("bundle verify", [REPLICATOR, "bundle", "verify", str(out)], work)
    size = disk_usage(out)
    dst = regs.start(f"dst-{tag}")
    try:
        imported = timed(
            "bundle import",
            [REPLICATOR, "bundle", "import", str(out), f"{dst.instance.host}/mirror"],
            work,
        )
        present = check(dst.instance.host, images, lambda r: f"mirror/{r}")
    finally:
        regs.discard(dst)
        shutil.rmtree(out, ignore_errors=True)
        out.with_name(out.name + ".receipt.json").unlink(missing_ok=True)
    steps = [create, verify, imported]
    return {
        "steps": [m.as_dict() for m in steps],
        "total_wall_s": round(sum(m.wall_s for m in steps), 3),
        "disk": size,
        "tags_ok": present,
    }


def skopeo_round(
    regs: Registries, src: RunningRegistry, images: Images, work: Path, tag: str
) -> dict[str, Any]:
    """skopeo sync to a dir, then from the dir into a fresh registry; sizes; the check."""
    out = work / f"skopeo-{tag}"
    yaml = skopeo_yaml(work / f"{tag}-sync.yaml", src.instance.host, images)
    export = timed(
        "skopeo sync --dest dir",
        [SKOPEO, "sync", "--src", "yaml", "--dest", "dir", "--all", str(yaml), str(out)],
        work,
    )
    size = disk_usage(out)
    dst = regs.start(f"dst-{tag}")
    try:
        imported = timed(
            "skopeo sync --src dir",
            [
                SKOPEO,
                "sync",
                "--src",
                "dir",
                "--dest",
                "docker",
                "--all",
                "--dest-tls-verify=false",
                str(out),
                f"{dst.instance.host}/mirror",
            ],
            work,
        )
        present = check(dst.instance.host, images, lambda r: f"mirror/{r.rsplit('/', 1)[-1]}")
    finally:
        regs.discard(dst)
        shutil.rmtree(out, ignore_errors=True)
    steps = [export, imported]
    return {
        "steps": [m.as_dict() for m in steps],
        "total_wall_s": round(sum(m.wall_s for m in steps), 3),
        "disk": size,
        "tags_ok": present,
    }


def scenario(
    regs: Registries,
    src: RunningRegistry,
    images: Images,
    work: Path,
    reps: int,
    *,
    without_referrers: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Every tool ``reps`` times, the order rotating between repetitions."""
    tools: list[tuple[str, Callable[[str], dict[str, Any]]]] = [
        ("replicator bundle", lambda t: replicator_round(regs, src, images, work, t, False)),
        ("skopeo dir", lambda t: skopeo_round(regs, src, images, work, t)),
    ]
    if without_referrers:
        tools.append(
            (
                "replicator bundle, no referrers",
                lambda t: replicator_round(regs, src, images, work, t, True),
            )
        )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in tools}
    for rep in range(reps):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]
        for name, run in order:
            log(f"  {images.label} rep {rep + 1}/{reps}: {name}")
            runs[name].append(run(f"{images.label}-{rep}-{len(runs[name])}-{name[:4]}"))
    return runs


def verify_throughput(
    regs: Registries, src: RunningRegistry, images: Images, work: Path, reps: int
) -> dict[str, Any]:
    """``bundle verify`` against ``sha256sum`` of the same parts (page cache warm)."""
    out = work / "bundle-verify"
    refs = [f"{src.instance.host}/{repo}" for repo in images.repositories]
    timed("bundle create", [REPLICATOR, "bundle", "create", *refs, "-o", str(out)], work)
    parts = sorted(str(p) for p in out.glob("part-*.tar"))
    size = sum(os.path.getsize(p) for p in parts)
    subprocess.run(["cat", *parts], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    runs: dict[str, list[dict[str, Any]]] = {"sha256sum": [], "bundle verify": []}
    commands = {
        "sha256sum": ["sha256sum", *parts],
        "bundle verify": [REPLICATOR, "bundle", "verify", str(out)],
    }
    for rep in range(reps):
        names = ["sha256sum", "bundle verify"]
        for name in names if rep % 2 == 0 else names[::-1]:
            m = timed(name, commands[name], work)
            m.extra["mib_per_s"] = round(size / (1 << 20) / m.wall_s, 1)
            runs[name].append(m.as_dict())
    shutil.rmtree(out, ignore_errors=True)
    best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    return {
        "bytes": size,
        "parts": len(parts),
        "runs": runs,
        "best_wall_s": best,
        "verify_vs_sha256sum": round(best["sha256sum"] / best["bundle verify"], 2),
    }


# --------------------------------------------------------------------------- report


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def markdown(results: dict[str, Any]) -> str:
    """The tables of ``RESULTS-bundle.md`` from a results file (medians over repetitions)."""
    lines: list[str] = []
    for name in ("world", "big"):
        scenario_runs = results.get(name, {}).get("runs")
        if not scenario_runs:
            continue
        lines += [
            f"### {name}",
            "",
            "| tool | step | wall s (median) | CPU s | peak RSS MiB | load 1m |",
            "|---|---|---:|---:|---:|---|",
        ]
        for tool, runs in scenario_runs.items():
            for i, step in enumerate(runs[0]["steps"]):
                steps = [r["steps"][i] for r in runs]
                loads = sorted({x for s in steps for x in s["extra"]["loadavg_1m"]})
                lines.append(
                    f"| {tool} | {step['label']} | {_median([s['wall_s'] for s in steps]):.2f} "
                    f"| {_median([s['cpu_s'] for s in steps]):.2f} "
                    f"| {_median([s['max_rss_mib'] for s in steps]):.0f} "
                    f"| {loads[0]:.1f}-{loads[-1]:.1f} |"
                )
            total = _median([r["total_wall_s"] for r in runs])
            disk = runs[0]["disk"]
            ok = min(r["tags_ok"] for r in runs)
            more = ""
            if "bundle_json_bytes" in disk:
                more = f", of which bundle.json {disk['bundle_json_bytes']:,} B"
            if "distinct_blob_bytes" in disk:
                more = (
                    f"; blob files {disk['blob_file_bytes']:,} B, "
                    f"distinct {disk['distinct_blob_bytes']:,} B"
                )
            lines.append(
                f"| {tool} | **total** | **{total:.2f}** | | | "
                f"{disk['apparent_bytes']:,} B in {disk['files']} files{more} "
                f"({disk['allocated_bytes']:,} B allocated); tags ok: {ok} |"
            )
        lines.append("")
    verify = results.get("verify")
    if verify:
        lines += [
            f"### verify throughput ({verify['bytes']:,} bytes in {verify['parts']} parts)",
            "",
            "| command | best wall s | MiB/s (best) |",
            "|---|---:|---:|",
        ]
        for name, runs in verify["runs"].items():
            best = min(runs, key=lambda r: r["wall_s"])
            lines.append(f"| {name} | {best['wall_s']:.2f} | {best['extra']['mib_per_s']} |")
        lines += ["", f"bundle verify / sha256sum: **{verify['verify_vs_sha256sum']}x**", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _world(src: RunningRegistry) -> Images:
    async def build() -> BenchWorld:
        async with RegistryTarget(src.instance.host, PLAIN) as t:
            return await build_world(t, src.instance.host)

    world = asyncio.run(build())
    return Images("world", [(r, t, d) for r, t, _, d in world.roots])


def _big(src: RunningRegistry, layer_mib: int) -> Images:
    async def build() -> Images:
        async with RegistryTarget(src.instance.host, PLAIN) as t:
            big = await build_big_image(t, layer_size=layer_mib << 20)
        return Images("big", [(big.repository, big.tag, big.digest)])

    return asyncio.run(build())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the scenarios, write ``bundle_results.json``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions of each run (default 3)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks", help="output directory")
    p.add_argument("--skip-world", action="store_true", help="skip the 60-tag world")
    p.add_argument("--skip-big", action="store_true", help="skip the 1 GiB image and verify")
    p.add_argument("--big-layer-mib", type=int, default=256, help="layer size of the big image")
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temporary directory")
    p.add_argument("--tables", type=Path, help="print the tables of a results file and exit")
    args = p.parse_args(argv)
    if args.tables:
        print(markdown(json.loads(args.tables.read_text())))
        return 0
    configure_logging(debug=False, fmt="console")
    results: dict[str, Any] = {"machine": machine(), "reps": args.reps}
    results["machine"]["bytecode"] = prepare_bytecode()
    results["machine"]["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="replicator-bundle-bench-", dir=args.tmp))
    work = root / "work"
    work.mkdir()
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    regs = Registries(root)
    try:
        src = regs.start("src")
        if not args.skip_world:
            log("building the world")
            world = _world(src)
            results["world"] = {"tags": len(world.roots), "repositories": len(world.repositories)}
            results["world"]["runs"] = scenario(
                regs, src, world, work, args.reps, without_referrers=True
            )
        if not args.skip_big:
            log(f"building the big image ({4 * args.big_layer_mib} MiB)")
            big = _big(src, args.big_layer_mib)
            results["big"] = {
                "runs": scenario(regs, src, big, work, args.reps, without_referrers=False)
            }
            log("verify throughput")
            results["verify"] = verify_throughput(regs, src, big, work, max(3, args.reps))
    finally:
        regs.close()
        shutil.rmtree(root, ignore_errors=True)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "bundle_results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['total_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
