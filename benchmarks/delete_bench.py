"""``manifest delete`` of a subject with many referrers, on a registry without the referrers API.

Run: ``.venv/bin/python -m benchmarks.delete_bench [--sizes 500,1000,5000]
[--baseline-sizes 250,500,1000] [--baseline-rev REV] [--reps 1]``.
Writes ``benchmarks/delete_results.json`` and ``benchmarks/RESULTS-delete.md``.

For each code version and number of referrers N, on fresh ``docker-registry``
processes (distribution 2.8: no referrers API, so the fallback tag schema),
started as :mod:`benchmarks.run` starts them:

1. a subject image tagged ``v1`` with N signatures, all listed in its fallback
   index (built with one index write);
2. **timed**: ``replicator manifest delete -f host/bench/fan:v1`` straight to the
   registry — wall time, CPU and peak RSS of the command, the registry's CPU,
   and the growth of the registry's blob storage (a registry keeps every index
   blob it was sent until a garbage collection);
3. **counted**: the same on another fresh registry through the counting proxy
   (:class:`tests.infra.proxy.FaultProxy`): requests by method and kind, the
   index writes (``PUT`` of a ``sha256-…`` fallback tag) and the bytes moved.

Code versions: ``current`` is this checkout; ``baseline`` is the package as of
``--baseline-rev`` (default: the commit before the one-index-write change),
exported from git and run with the same interpreter and launcher, at sizes it
can finish (its cost grows with N²).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO_ROOT, measure
from benchmarks.run import Registries, proc_cpu, reg_pid
from replicator.errors import NotFoundError
from replicator.observe.logging import configure_logging
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.reference import is_referrers_tag
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.proxy import FaultProxy, ProxyStats
from tests.infra.registry import RunningRegistry
from tests.integration.graphs import SIGNATURE_TYPE, GraphBuilder

OUT = Path(__file__).resolve().parent
REPO = "bench/fan"
#: The commit before manifest delete wrote one index update per subject.
DEFAULT_BASELINE = "4c8ae74"
#: Runs the console entry point of whichever ``replicator`` package PYTHONPATH finds first.
_LAUNCH = (
    "import sys; from replicator.cli import console_main; "
    "sys.argv[0] = 'replicator'; console_main()"
)


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[delete-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the graph -------------------------------------------------------------------------


async def build_fan(host: str, n: int, concurrency: int = 16) -> Descriptor:
    """Push an image ``bench/fan:v1`` with ``n`` signatures, listed in one index write."""
    async with RegistryTarget(host, RegistryOptions(plain_http=True)) as t:
        g = GraphBuilder(t, REPO)
        image = await g.image("fan", tags=["v1"])
        config = await g.blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
        layer = await g.blob(b"a signature", "application/octet-stream")
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> Descriptor:
            raw = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": SIGNATURE_TYPE,
                    "config": config.to_json(),
                    "layers": [layer.to_json()],
                    "subject": image.to_json(),
                    "annotations": {"org.example.n": str(i)},
                },
                separators=(",", ":"),
            ).encode()
            desc = descriptor_for(
                raw,
                mt.OCI_MANIFEST,
                artifact_type=SIGNATURE_TYPE,
                annotations={"org.example.n": str(i)},
            )
            async with gate:
                await t.push_manifest(REPO, desc, raw, defer_referrers=True)
            return desc

        referrers = await asyncio.gather(*(one(i) for i in range(n)))
        await t.ensure_referrers_listed(REPO, image, referrers)
        return image


async def leftovers(host: str, subject: Descriptor) -> dict[str, Any]:
    """What is left after the delete: the subject (should be gone) and the tags."""
    async with RegistryTarget(host, RegistryOptions(plain_http=True)) as t:
        try:
            tags = await t.tags(REPO)
        except NotFoundError:
            tags = []
        return {"subject_present": await t.manifest_exists(REPO, subject), "tags": tags}


def stored(reg: RunningRegistry) -> tuple[int, int]:
    """(bytes, files) of the registry's blob store."""
    root = reg.workdir / "data" / "docker" / "registry" / "v2" / "blobs"
    total = files = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name == "data":
                total += os.stat(os.path.join(dirpath, name)).st_size
                files += 1
    return total, files


# -- the code versions -----------------------------------------------------------------


def export_baseline(rev: str, into: Path) -> Path:
    """The ``replicator`` package as of ``rev``, exported under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", rev, "replicator"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def command(pythonpath: Path, host: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of ``replicator manifest delete -f`` run from ``pythonpath``."""
    argv = [sys.executable, "-c", _LAUNCH, "manifest", "delete", "-f", f"{host}/{REPO}:v1"]
    return argv, {"PYTHONPATH": str(pythonpath), "NO_COLOR": "1"}


# -- one measurement -------------------------------------------------------------------


def requests_by_kind(stats: ProxyStats) -> dict[str, int]:
    """``"METHOD kind" -> requests``, sorted."""
    return {f"{method} {kind}": s.requests for (method, kind), s in sorted(stats.by_kind.items())}


def index_writes(stats: ProxyStats) -> int:
    """``PUT``s of a fallback tag (``…/manifests/sha256-<hex>``)."""
    puts: Counter[str] = stats.paths("PUT", "manifest")
    return sum(n for path, n in puts.items() if is_referrers_tag(path.rsplit("/", 1)[-1]))


def run_once(
    regs: Registries, version: str, code: Path, n: int, work: Path, *, counted: bool
) -> dict[str, Any]:
    """Build the fan on a fresh registry, delete it (through the proxy when ``counted``)."""
    reg = regs.start(f"{version}-{n}-{'counted' if counted else 'timed'}")
    try:
        subject = asyncio.run(build_fan(reg.instance.host, n))
        bytes_before, files_before = stored(reg)
        proxy = FaultProxy(reg.instance).start() if counted else None
        try:
            host = proxy.host if proxy is not None else reg.instance.host
            argv, env = command(code, host)
            cpu_before = proc_cpu(reg_pid(reg))
            m = measure(  # cwd: not the checkout, which ``python -c`` would import first
                f"{version} {n}", argv, env=env, cwd=work, log=work / "commands.log", check=False
            )
            registry_cpu = proc_cpu(reg_pid(reg)) - cpu_before
            stats = proxy.stats() if proxy is not None else None
        finally:
            if proxy is not None:
                proxy.stop()
        bytes_after, files_after = stored(reg)
        row: dict[str, Any] = {
            "version": version,
            "referrers": n,
            "kind": "counted" if counted else "timed",
            "exit": m.returncode,
            "wall_s": round(m.wall_s, 3),
            "cpu_s": round(m.cpu_s, 3),
            "max_rss_mib": round(m.max_rss_mib, 1),
            "registry_cpu_s": round(registry_cpu, 3),
            "storage_growth_bytes": bytes_after - bytes_before,
            "storage_growth_blobs": files_after - files_before,
            **asyncio.run(leftovers(reg.instance.host, subject)),
        }
        if stats is not None:
            row["requests"] = sum(s.requests for s in stats.by_kind.values())
            row["by_kind"] = requests_by_kind(stats)
            row["index_writes"] = index_writes(stats)
            row["bytes_up"] = stats.bytes_up()
            row["bytes_down"] = stats.bytes_down()
        log(f"  {version} N={n} {row['kind']}: {row['wall_s']} s, exit {row['exit']}")
        return row
    finally:
        regs.discard(reg)


# -- report ----------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KiB"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    """RESULTS-delete.md: the raw figures, per version and size."""
    rows: list[dict[str, Any]] = results["rows"]
    timed = [r for r in rows if r["kind"] == "timed"]
    counted = {(r["version"], r["referrers"]): r for r in rows if r["kind"] == "counted"}
    lines = [
        "# `manifest delete` of a subject with N referrers (no referrers API)",
        "",
        f"Command: `{results['command']}` ({results['machine']}); "
        f"baseline = `{results['baseline_rev']}`, current = `{results['current_rev']}`. "
        "One fresh docker-registry (distribution 2.8, filesystem storage) per run. "
        f"Load average while running: {results['loadavg']} (2 shared cores: "
        "single runs vary by +-20%).",
        "",
        "## Timed runs (straight to the registry)",
        "",
        "| code | N | wall (s) | CPU (s) | peak RSS (MiB) | registry CPU (s) "
        "| storage growth | new blobs | exit | left behind |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in timed:
        left = "nothing" if not r["subject_present"] and not r["tags"] else str(r["tags"])
        lines.append(
            f"| {r['version']} | {r['referrers']} | {r['wall_s']} | {r['cpu_s']} "
            f"| {r['max_rss_mib']} | {r['registry_cpu_s']} | {_mib(r['storage_growth_bytes'])} "
            f"| {r['storage_growth_blobs']} | {r['exit']} | {left} |"
        )
    lines += [
        "",
        "## Counted runs (through the counting proxy)",
        "",
        "| code | N | requests | index writes (PUT sha256-…) | sent | received "
        "| requests by kind |",
        "|---|---|---|---|---|---|---|",
    ]
    for (version, n), r in sorted(counted.items()):
        kinds = ", ".join(f"{k}={v}" for k, v in r["by_kind"].items())
        lines.append(
            f"| {version} | {n} | {r['requests']} | {r['index_writes']} "
            f"| {_mib(r['bytes_up'])} | {_mib(r['bytes_down'])} | {kinds} |"
        )
    lines += ["", *results.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,5000", help="N for the current code")
    parser.add_argument("--baseline-sizes", default="250,500,1000", help="N for the baseline")
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE)
    parser.add_argument("--reps", type=int, default=1, help="timed runs per version and size")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    configure_logging(debug=False, fmt="console")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the registries on kill too
    sizes = [int(x) for x in args.sizes.split(",") if x]
    base_sizes = [int(x) for x in args.baseline_sizes.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="delete-bench-"))
    regs = Registries(tmp / "registries")
    current_rev = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    results: dict[str, Any] = {
        "command": "python -m benchmarks.delete_bench " + " ".join(argv or sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "baseline_rev": args.baseline_rev,
        "current_rev": current_rev,
        "loadavg": [round(os.getloadavg()[0], 1)],
        "rows": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row: a long run stopped early keeps what it measured
        (args.out / "delete_results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_markdown(results, args.out / "RESULTS-delete.md")

    try:
        baseline = export_baseline(args.baseline_rev, tmp / "baseline")
        plan = [("current", REPO_ROOT, n) for n in sizes]
        plan += [("baseline", baseline, n) for n in base_sizes]
        for version, code, n in plan:
            log(f"{version}, {n} referrers")
            for _ in range(args.reps):
                results["rows"].append(run_once(regs, version, code, n, tmp, counted=False))
                save()
            results["rows"].append(run_once(regs, version, code, n, tmp, counted=True))
            results["loadavg"].append(round(os.getloadavg()[0], 1))
            save()
    finally:
        regs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {args.out / 'RESULTS-delete.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
