"""A rerun repairs what the destination lost after the journal confirmed it.

Between an interrupted run and its rerun, content the journal holds as
confirmed can disappear at the destination (a cleanup job, a registry wiped
and restored, garbage collection).  The rerun must notice the contradiction —
a write the registry refuses because something it names is missing — forget
the confirmations it can no longer trust there, and copy again in the same
run, keeping what it does not need to redo; it must never end with a tag on an
incomplete graph, nor need ``--fresh``.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from replicator.oci.reference import referrers_tag
from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import journal_runs
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import GraphBuilder, SignedImage, assert_same_graph


def _target(host: str, running: Any) -> RegistryTarget:
    return RegistryTarget(host, running.instance.options())


def _delete(base: str, repo: str, digest: str) -> None:
    req = urllib.request.Request(f"{base}/v2/{repo}/manifests/{digest}", method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 202, resp.status


def _setup(registry_factory: Callable[..., Any]) -> tuple[Any, Any, SignedImage]:
    src, dst = registry_factory("open"), registry_factory("open")

    async def build() -> SignedImage:
        async with _target(src.instance.host, src) as t:
            return await GraphBuilder(t, "app").signed_image("app:v1", tags=["v1"])

    return src, dst, anyio.run(build)


def _interrupted_first_run(
    fault_proxy: Any, src: Any, dst: Any, journal: Path, home: Path
) -> tuple[Any, list[str]]:
    """Run 1 pushes the whole graph but cannot set the tag (the proxy refuses it)."""
    proxy = fault_proxy(dst.instance)
    rule = proxy.status("PUT", r"/manifests/v1$", 400, times=None)
    argv = ["copy", "-r", "--journal", str(journal), f"{src.instance.host}/app:v1"]
    argv.append(f"{proxy.host}/mirror/app:v1")
    first = run_cli(*argv, home=home, timeout=120)
    assert first.code != 0, first.stderr
    assert journal_runs(journal)[0][1] == "failed"
    proxy.clear()
    del rule
    return proxy, argv


def _same(src: Any, dst: Any) -> None:
    async def check() -> None:
        async with _target(src.instance.host, src) as a, _target(dst.instance.host, dst) as b:
            await assert_same_graph(a, "app", "v1", b, "mirror/app", "v1")

    anyio.run(check)


def test_referrers_deleted_with_their_index_are_copied_again_in_the_same_rerun(
    tmp_path: Path, registry_factory: Callable[..., Any], fault_proxy: Any
) -> None:
    src, dst, graph = _setup(registry_factory)
    journal = tmp_path / "journal.sqlite"
    _, argv = _interrupted_first_run(fault_proxy, src, dst, journal, tmp_path)
    base = dst.instance.url
    # A cleanup removes the referrers and the fallback indexes listing them.
    for ref in (graph.sbom_signature, graph.signature, graph.sbom):
        _delete(base, "mirror/app", ref.digest)
    for subject in (graph.image, graph.sbom):

        async def drop(s: str = subject.digest) -> None:
            async with _target(dst.instance.host, dst) as t:
                index = await t.resolve("mirror/app", referrers_tag(s))
                await t.delete_manifest_digest("mirror/app", index.digest)

        anyio.run(drop)
    report = tmp_path / "report.json"
    second = run_cli(*argv, "--report", str(report), home=tmp_path, timeout=120)
    assert second.code == 0, second.stderr
    _same(src, dst)
    data = json.loads(report.read_text())
    assert data["manifests_pushed"] >= 3, data
    assert any("lost" in w for w in data["warnings"]), data["warnings"]
    assert journal_runs(journal)[0][1] == "done"


def test_a_lost_subject_is_copied_again_in_the_same_rerun(
    tmp_path: Path, registry_factory: Callable[..., Any], fault_proxy: Any
) -> None:
    """The image manifest itself is gone: its referrers' index write is refused."""
    src, dst, graph = _setup(registry_factory)
    journal = tmp_path / "journal.sqlite"
    _, argv = _interrupted_first_run(fault_proxy, src, dst, journal, tmp_path)
    for ref in (graph.sbom_signature, graph.signature, graph.sbom, graph.image):
        _delete(dst.instance.url, "mirror/app", ref.digest)
    second = run_cli(*argv, home=tmp_path, timeout=120)
    assert second.code == 0, second.stderr
    _same(src, dst)


def test_deep_check_finds_referrers_deleted_under_a_journalled_index(
    tmp_path: Path, registry_factory: Callable[..., Any], fault_proxy: Any
) -> None:
    """Referrers deleted, their fallback index left listing them: the journal and the
    listing both vouch for them, so only --deep-check, which asks the registry about
    every manifest (the journal included), can find them — and it does."""
    src, dst, graph = _setup(registry_factory)
    journal = tmp_path / "journal.sqlite"
    _, argv = _interrupted_first_run(fault_proxy, src, dst, journal, tmp_path)
    for ref in (graph.sbom_signature, graph.signature):
        _delete(dst.instance.url, "mirror/app", ref.digest)
    second = run_cli(*argv, "--deep-check", home=tmp_path, timeout=120)
    assert second.code == 0, second.stderr
    _same(src, dst)
