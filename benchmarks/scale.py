"""Scale: memory, time and requests of graphs with many nodes.

    python -m benchmarks.scale [--referrers 5000,20000] [--tags 20000]
                               [--build LABEL=PATH]... [--out FILE] [--ram DIR]

Scenarios, each built into a fresh source registry (storage on a tmpfs, ``--ram``,
default ``/dev/shm``, so that the registries' disks do not dominate):

* ``referrers-N``: one image with N referrers (signatures: an artifact manifest
  with the empty config and one unique 64-byte layer each), listed in one
  fallback index — ``replicator copy -r SRC:v1 DST:v1``;
* ``tags-N``: one repository with N tags, each its own small image (a unique
  config, one shared layer) — ``replicator copy --all-tags -r SRC DST``;
* ``tiny``: one image with one referrer, the baseline the per-node figures are
  measured against.

Each command runs cold (fresh destination) and again (re-run against the filled
destination), as a child process measured for wall time, CPU and peak RSS
(:func:`benchmarks.harness.measure`); the requests come from its ``--report``.
*Per node*: (peak RSS - the tiny scenario's peak RSS) / manifests in the graph,
i.e. what each further node costs beyond the process itself.  ``--build
LABEL=PATH`` (repeatable) runs each scenario with every build given (an older
checkout's ``.venv/bin/replicator``) on the same world, each into a fresh
destination: a before / after comparison in the same conditions.  Without it,
this checkout's build runs alone.  ``--delete LABEL`` also times ``manifest
delete -f`` of the subject at the destination after the referrers scenarios,
with that build.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPLICATOR, REPO_ROOT, measure
from benchmarks.run import Registries, log, ram_dir
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.base import Target
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions

#: The seed walkthrough's signature type: short, so that 20,000 entries fit in one
#: fallback index under the 4 MiB manifest limit.
SIG_TYPE = "signature/example"
OPTS = RegistryOptions(plain_http=True)


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def _blob(t: Target, repo: str, data: bytes, media_type: str) -> Descriptor:
    desc = descriptor_for(data, media_type)

    async def opener(offset: int) -> Any:
        yield data[offset:]

    await t.push_blob(repo, desc, opener)
    return desc


async def _bounded(n: int, fn: Any, width: int = 32) -> list[Any]:
    sem = asyncio.Semaphore(width)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def build_referrers(t: RegistryTarget, repo: str, n: int) -> Descriptor:
    """An image tagged v1 with ``n`` signatures, listed in one fallback-index write."""
    cfg = await _blob(t, repo, b'{"architecture":"amd64","os":"linux"}', mt.OCI_CONFIG)
    layer = await _blob(t, repo, os.urandom(2048), mt.OCI_LAYER_GZIP)
    raw = _compact(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": cfg.to_json(),
            "layers": [layer.to_json()],
        }
    )
    image = descriptor_for(raw, mt.OCI_MANIFEST)
    await t.push_manifest(repo, image, raw, ("v1",))
    empty = await _blob(t, repo, mt.EMPTY_JSON, mt.OCI_EMPTY)
    subject = {"mediaType": image.media_type, "digest": image.digest, "size": image.size}

    async def referrer(i: int) -> Descriptor:
        sig = await _blob(t, repo, os.urandom(64), "application/octet-stream")
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": SIG_TYPE,
            "config": empty.to_json(),
            "layers": [sig.to_json()],
            "subject": subject,
        }
        body = _compact(doc)
        desc = descriptor_for(body, mt.OCI_MANIFEST, artifact_type=SIG_TYPE)
        await t.push_manifest(repo, desc, body, (), defer_referrers=True)
        return desc

    refs = await _bounded(n, referrer)
    await t.ensure_referrers_listed(repo, image, refs)
    return image


async def build_tags(t: RegistryTarget, repo: str, n: int) -> None:
    """``n`` tags, each its own image (unique config, one shared layer)."""
    layer = await _blob(t, repo, os.urandom(2048), mt.OCI_LAYER_GZIP)

    async def tag(i: int) -> None:
        cfg = await _blob(
            t, repo, _compact({"architecture": "amd64", "os": "linux", "n": i}), mt.OCI_CONFIG
        )
        raw = _compact(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": cfg.to_json(),
                "layers": [layer.to_json()],
            }
        )
        await t.push_manifest(repo, descriptor_for(raw, mt.OCI_MANIFEST), raw, (f"t{i:05d}",))

    await _bounded(n, tag)


def run(
    replicator: str, argv: list[str], work: Path, label: str, *, report: bool = True
) -> dict[str, Any]:
    """One measured command (with ``--report`` when ``report``); its figures and requests."""
    path = work / f"report-{time.monotonic_ns()}.json"
    m = measure(
        label,
        [replicator, *argv, *(["--report", str(path)] if report else [])],
        log=work / "commands.log",
        env={"NO_COLOR": "1"},
        check=False,
    )
    out: dict[str, Any] = {
        "exit": m.returncode,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "peak_rss_mib": round(m.max_rss_mib, 1),
    }
    if report and path.exists():
        data = json.loads(path.read_text())
        out["requests"] = sum(
            v
            for counts in data.get("requests", {}).values()
            for k, v in counts.items()
            if k not in ("bytes_sent", "bytes_received", "retries")
        )
        out["manifests_pushed"] = data.get("manifests_pushed")
        out["manifests_skipped"] = data.get("manifests_skipped")
    return out


def scenario(
    regs: Registries,
    builds: list[tuple[str, str]],
    work: Path,
    kind: str,
    n: int,
    delete: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Build one world, then per build: copy it cold and again (and delete); the figures."""
    src = regs.start(f"src-{kind}-{n}")
    host = src.instance.host
    t0 = time.perf_counter()

    async def build() -> None:
        async with RegistryTarget(host, OPTS) as t:
            if kind == "referrers":
                await build_referrers(t, "scale/app", n)
            else:
                await build_tags(t, "scale/app", n)

    asyncio.run(build())
    built = round(time.perf_counter() - t0, 1)
    log(f"{kind}-{n}: built in {built}s")
    out = []
    for label, replicator in builds:
        dst = regs.start(f"dst-{kind}-{n}")
        d = dst.instance.host
        if kind == "referrers":
            argv = ["copy", "-r", f"{host}/scale/app:v1", f"{d}/scale/app:v1"]
            nodes = n + 1
        else:
            argv = ["copy", "--all-tags", "-r", f"{host}/scale/app", f"{d}/scale/app"]
            nodes = n
        cold = run(replicator, argv, work, f"{label} {kind}-{n} cold")
        log(f"  {label} cold {cold}")
        warm = run(replicator, argv, work, f"{label} {kind}-{n} re-run")
        log(f"  {label} re-run {warm}")
        result = {
            "build": label,
            "kind": kind,
            "n": n,
            "manifests": nodes,
            "build_s": built,
            "cold": cold,
            "rerun": warm,
        }
        if label in delete and kind == "referrers":
            gone = run(
                replicator,
                ["manifest", "delete", "-f", f"{d}/scale/app:v1"],
                work,
                "delete",
                report=False,
            )
            log(f"  {label} delete {gone}")
            result["delete"] = gone
        out.append(result)
        regs.discard(dst)
    regs.discard(src)
    return out


def per_node(result: dict[str, Any], baseline_mib: float) -> None:
    """Add KiB of peak RSS per manifest node beyond the baseline process."""
    for phase in ("cold", "rerun"):
        peak = result[phase]["peak_rss_mib"]
        result[phase]["kib_per_node"] = round((peak - baseline_mib) * 1024 / result["manifests"], 2)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--referrers", default="5000,20000", help="referrer counts (comma-separated)")
    p.add_argument("--tags", default="20000", help="tag counts (comma-separated, '' for none)")
    p.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a replicator console script to measure (repeatable; default: this checkout's)",
    )
    p.add_argument(
        "--delete",
        action="append",
        default=[],
        metavar="LABEL",
        help="also time manifest delete -f with this build (repeatable; an old build's "
        "delete is quadratic in the referrers: benchmarks/RESULTS-delete.md)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "scale_results.json")
    p.add_argument("--ram", type=Path, default=Path("/dev/shm"))
    args = p.parse_args(argv)
    builds = [tuple(b.split("=", 1)) for b in args.build] or [("this checkout", REPLICATOR)]
    base = ram_dir(args.ram)
    root = Path(tempfile.mkdtemp(prefix="replicator-scale-", dir=base))
    work = root / "work"
    work.mkdir()
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    regs = Registries(root)
    results: dict[str, Any] = {"builds": dict(builds), "baseline_rss_mib": {}, "runs": []}
    try:
        for tiny in scenario(regs, builds, work, "referrers", 1):
            results["baseline_rss_mib"][tiny["build"]] = max(
                tiny["cold"]["peak_rss_mib"], tiny["rerun"]["peak_rss_mib"]
            )
        for kind, counts in (("referrers", args.referrers), ("tags", args.tags)):
            for text in filter(None, counts.split(",")):
                for res in scenario(regs, builds, work, kind, int(text), tuple(args.delete)):
                    per_node(res, results["baseline_rss_mib"][res["build"]])
                    results["runs"].append(res)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        regs.close()
        shutil.rmtree(root, ignore_errors=True)
    results["uptime_after"] = Path("/proc/loadavg").read_text().split()[:3]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
