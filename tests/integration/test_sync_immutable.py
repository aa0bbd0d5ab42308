"""``immutable`` tags cost no request per tag once the destination's tag list is known.

Source and destination sit behind counting proxies.  After a first sync, a
rerun of a job whose tags are all immutable and present makes one tag listing
at the source and one at the destination, and nothing else — however many tags
there are.  A job mixing immutable and mutable tags asks about the mutable one
only.  An immutable tag moved at the source is left alone at the destination
(and reported), while a new immutable tag is copied; ``verify``, which looks at
every tag, reports the moved one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicator.graph.walk import snapshot_graph
from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder
from tests.integration.sync_helpers import digest_at, run_sync, with_target, write_config

PINNED = tuple(f"v1.0.{i}" for i in range(4))


def _config(path: Path, src: str, dst: str, base: str) -> Path:
    return write_config(
        path,
        f"""\
version: 1
defaults:
  tags: {{immutable: ['v*']}}
jobs:
  - name: pinned
    source: {src}/{base}/pinned
    destinations: [{dst}/{base}/prod/pinned]
  - name: mixed
    source: {src}/{base}/mixed
    destinations: [{dst}/{base}/prod/mixed]
""",
    )


def _seed(reg: RegistryInstance, base: str) -> set[str]:
    """Signed images under the immutable tags; the digests only their graphs have."""

    async def work(t: RegistryTarget) -> set[str]:
        digests: set[str] = set()
        for repo in ("pinned", "mixed"):
            b = GraphBuilder(t, f"{base}/{repo}")
            for tag in PINNED:
                await b.signed_image(tag, tags=[tag])
                snap = await snapshot_graph(t, f"{base}/{repo}", tag)
                digests |= set(snap.manifests) | set(snap.blobs)
        await GraphBuilder(t, f"{base}/mixed").signed_image("latest", tags=["latest"])
        latest = await snapshot_graph(t, f"{base}/mixed", "latest")
        # What latest's graph shares (the empty config of every referrer) is not theirs alone.
        return digests - set(latest.manifests) - set(latest.blobs)

    return with_target(reg, work)


def _touching(proxy: FaultProxy, tags: tuple[str, ...], digests: set[str]) -> list[str]:
    """Requests that name one of ``tags`` or ``digests``."""
    return [
        f"{r.method} {r.path}"
        for r in proxy.stats().log
        if r.path.split("?")[0].rsplit("/", 1)[-1] in tags or any(d in r.path for d in digests)
    ]


def test_immutable_tags_cost_no_request_once_at_the_destination(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    graph_digests = _seed(registry_open, base)
    src, dst = fault_proxy(registry_open), fault_proxy(registry_open)
    config = _config(tmp_path / "sync.yaml", src.host, dst.host, base)

    first = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert first.code == 0, first.cli.stderr[-3000:]
    assert len(first.results("pinned")) == len(PINNED)

    # Every tag immutable and present: one listing each side, nothing else.
    src.reset()
    dst.reset()
    again = run_sync("sync", config, "--job", "pinned", "--no-journal", home=tmp_path)
    assert again.code == 0, again.cli.stderr[-3000:]
    for proxy in (src, dst):
        kinds = {
            f"{method} {kind}": stats.requests
            for (method, kind), stats in proxy.stats().by_kind.items()
        }
        assert kinds == {"GET tags": 1}, kinds
    skipped = again.report["jobs"]["pinned"]["repositories"][0]["immutable_skipped"]
    assert sorted(s["tag"] for s in skipped) == list(PINNED)
    assert again.results("pinned") == []
    assert f"Immutable, already there: v1.0.0 at {dst.host}/{base}/prod/pinned" in again.stdout

    # Mixed: only the mutable tag is asked about.
    src.reset()
    dst.reset()
    mixed = run_sync("sync", config, "--job", "mixed", "--no-journal", home=tmp_path)
    assert mixed.code == 0, mixed.cli.stderr[-3000:]
    assert [r["source"].rsplit(":", 1)[1] for r in mixed.results("mixed")] == ["latest"]
    assert _touching(src, PINNED, graph_digests) == []
    assert _touching(dst, PINNED, graph_digests) == []
    assert src.stats().requests(kind="manifest") > 0  # latest was looked at

    # An immutable tag moved at the source stays at the destination; a new one is copied.
    async def change(t: RegistryTarget) -> dict[str, str]:
        b = GraphBuilder(t, f"{base}/pinned")
        moved = await b.signed_image("moved", tags=["v1.0.0"])
        new = await b.signed_image("new", tags=["v1.1.0"])
        return {"moved": moved.image.digest, "new": new.image.digest}

    changed = with_target(registry_open, change)
    before = digest_at(registry_open, f"{base}/prod/pinned", "v1.0.0")
    third = run_sync("sync", config, "--job", "pinned", "--no-journal", home=tmp_path)
    assert third.code == 0, third.cli.stderr[-3000:]
    assert digest_at(registry_open, f"{base}/prod/pinned", "v1.0.0") == before != changed["moved"]
    assert digest_at(registry_open, f"{base}/prod/pinned", "v1.1.0") == changed["new"]

    audit = run_sync("verify", config, "--job", "pinned", home=tmp_path)
    assert audit.code == 9, audit.stdout + audit.cli.stderr[-2000:]
    kinds = [(d["kind"], d["detail"]) for d in audit.report["differences"]]
    assert ("tag-moved", f"tag v1.0.0 points at {before}") in kinds
