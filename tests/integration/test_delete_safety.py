"""``manifest delete`` and ``discover`` against real registries: what a listing may make them do.

* A referrer listing is a claim: a fallback tag ``sha256-<A>`` forged to list an
  unrelated manifest (or to point at another image's index) must not make
  ``manifest delete A`` delete anything but A's genuine referrers, nor make
  ``discover`` show it.
* Every tag that goes with a deleted manifest is named, before (prompt) and
  after (output).
* One referrers-index update per subject per run, whatever the number of
  referrers (request counts through the counting proxy), and a failed run
  leaves no listing naming a manifest it deleted.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from replicator.errors import NotFoundError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_index, parse_manifest
from replicator.oci.reference import is_referrers_tag, referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import REPLICATOR, isolated_env, run_cli
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def target(reg: Any) -> RegistryTarget:
    return RegistryTarget(reg.host, reg.options())


def present(reg: Any, repo: str, digests: list[str]) -> list[str]:
    """The digests of ``digests`` still fetchable as manifests of ``repo``."""

    async def main() -> list[str]:
        async with target(reg) as t:
            out = []
            for digest in digests:
                if await t.manifest_exists(repo, Descriptor(mt.OCI_MANIFEST, digest, 0)):
                    out.append(digest)
            return out

    return run(main)


def tags_of(reg: Any, repo: str) -> dict[str, str]:
    """Every tag of ``repo`` (fallback tags included) and the digest it points at."""

    async def main() -> dict[str, str]:
        async with target(reg) as t:
            try:
                names = await t.tags(repo)
            except NotFoundError:
                return {}
            return {n: (await t.resolve(repo, n)).digest for n in names}

    return run(main)


def fallback_entries(reg: Any, repo: str, subject: str) -> list[str] | None:
    """Digests the fallback index of ``subject`` lists (None: no fallback tag)."""

    async def main() -> list[str] | None:
        async with target(reg) as t:
            try:
                _, raw = await t.fetch_manifest(repo, referrers_tag(subject))
            except NotFoundError:
                return None
            return [c.digest for c in parse_manifest(raw).children()]

    return run(main)


def forge_fallback(reg: Any, repo: str, subject: str, entries: list[Descriptor]) -> Descriptor:
    """Point ``subject``'s fallback tag at an index listing ``entries`` (anyone with push can)."""

    async def main() -> Descriptor:
        async with target(reg) as t:
            raw = build_index(entries)
            return await GraphBuilder(t, repo).manifest(
                raw, mt.OCI_INDEX, tags=[referrers_tag(subject)]
            )

    return run(main)


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# -------------------------------------------------------------- forged listings


def test_delete_leaves_a_forged_referrer_in_place_and_says_so(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)

    async def build() -> tuple[Descriptor, Descriptor, Descriptor]:
        async with target(registry_open) as t:
            g = GraphBuilder(t, repo)
            a = await g.image("a", tags=["a"])
            b = await g.image("b", tags=["b", "b-release"])
            sig = await g.referrer(a, SIGNATURE_TYPE)
            return a, b, sig

    a, b, sig = run(build)
    # Someone with push rights rewrites A's fallback index to list image B too.
    forge_fallback(registry_open, repo, a.digest, [sig, b])

    res = run_cli("manifest", "delete", "-f", f"{registry_open.host}/{repo}:a", home=tmp_path)
    assert res.code == 0, res.stderr
    assert present(registry_open, repo, [a.digest, sig.digest, b.digest]) == [b.digest]
    tags = tags_of(registry_open, repo)
    assert tags == {"b": b.digest, "b-release": b.digest}  # B's tags intact, A's fallback tag gone
    said = lines_with(res.stdout, "Left in place")
    assert (
        f"Left in place: {b.digest} is listed as a referrer of {a.digest} but does not "
        "name it as its subject"
    ) in said
    # The forged index itself is not deleted either (only the tag goes): it names B.
    assert len(said) == 2 and "this run does not delete" in said[1]
    assert f"Deleted {sig.digest} ({SIGNATURE_TYPE})" in res.stdout.splitlines()


def test_delete_never_deletes_an_index_a_forged_fallback_tag_points_at(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    """sha256-<A> pointed at another image's (tagged) index: its children are not A's
    referrers, and removing A's fallback tag must not delete that index."""
    repo = str(unique_repo)

    async def build() -> tuple[Descriptor, Descriptor, list[Descriptor]]:
        async with target(registry_open) as t:
            g = GraphBuilder(t, repo)
            a = await g.image("a", tags=["a"])
            index, images = await g.multiarch("m", tags=["multi"], attestations=False)
            await g.manifest(
                (await t.fetch_manifest(repo, index))[1],
                mt.OCI_INDEX,
                tags=[referrers_tag(a.digest)],
            )
            return a, index, images

    a, index, images = run(build)
    kept = [index.digest, *(i.digest for i in images)]
    res = run_cli("manifest", "delete", "-f", f"{registry_open.host}/{repo}:a", home=tmp_path)
    assert res.code == 0, res.stderr
    assert present(registry_open, repo, [a.digest, *kept]) == kept
    assert tags_of(registry_open, repo) == {"multi": index.digest}
    assert len(lines_with(res.stdout, "Left in place")) == len(images) + 1  # the index too


def test_discover_shows_only_manifests_that_name_the_subject(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)

    async def build() -> tuple[Descriptor, Descriptor, Descriptor, Descriptor]:
        async with target(registry_open) as t:
            g = GraphBuilder(t, repo)
            a = await g.image("a", tags=["a"])
            b = await g.image("b", tags=["b"])
            sig = await g.referrer(a, SIGNATURE_TYPE)
            sbom = await g.referrer(a, SBOM_TYPE)
            return a, b, sig, sbom

    a, b, sig, sbom = run(build)
    root = Descriptor(a.media_type, a.digest, a.size, artifact_type="forged/self")
    foreign = Descriptor(b.media_type, b.digest, b.size, artifact_type=SIGNATURE_TYPE)
    forge_fallback(registry_open, repo, a.digest, [sig, foreign, root, sbom])

    ref = f"{registry_open.host}/{repo}:a"
    res = run_cli("discover", "-o", "json", ref, home=tmp_path)
    assert res.code == 0, res.stderr
    listed = [m["digest"] for m in json.loads(res.stdout)["manifests"]]
    assert sorted(listed) == sorted([sig.digest, sbom.digest])
    assert b.digest in res.stderr and "does not name it as its subject" in res.stderr
    assert "lists itself as its own referrer" in res.stderr

    # --artifact-type takes the same globs as copy's.
    res = run_cli("discover", "-o", "json", "--artifact-type", "*signature*", ref, home=tmp_path)
    assert res.code == 0, res.stderr
    assert [m["digest"] for m in json.loads(res.stdout)["manifests"]] == [sig.digest]
    res = run_cli("discover", "-o", "json", "--artifact-type", SBOM_TYPE, ref, home=tmp_path)
    assert [m["digest"] for m in json.loads(res.stdout)["manifests"]] == [sbom.digest]


# -------------------------------------------------------------- tags that go


def test_delete_names_every_tag_that_goes(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)

    async def build() -> tuple[Descriptor, Descriptor, Descriptor]:
        async with target(registry_open) as t:
            g = GraphBuilder(t, repo)
            image = await g.image("i", tags=["v1", "v2"])
            other = await g.image("o", tags=["v3"])
            sig = await g.referrer(image, SIGNATURE_TYPE)
            await t.tag(repo, sig, (await t.fetch_manifest(repo, sig))[1], "v2-sig")
            return image, other, sig

    image, other, sig = run(build)
    res = run_cli("manifest", "delete", "-f", f"{registry_open.host}/{repo}:v2", home=tmp_path)
    assert res.code == 0, res.stderr
    removed = sorted(lines_with(res.stdout, "Removed tag"))
    assert removed == [
        f"Removed tag v1 ({image.digest})",
        f"Removed tag v2 ({image.digest})",
        f"Removed tag v2-sig ({sig.digest})",
    ]
    assert tags_of(registry_open, repo) == {"v3": other.digest}


def _run_on_tty(cwd: Path, args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with stdin/stdout on a pseudo-terminal, type ``answer``; (rc, output)."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [REPLICATOR, *args],
            cwd=cwd,
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=isolated_env(cwd),
        )
        os.close(slave)
        slave = -1
        seen = b""
        while b"[y/N]" not in seen:
            chunk = os.read(master, 4096)
            assert chunk, seen
            seen += chunk
        os.write(master, answer)
        stderr = proc.communicate(timeout=60)[1]
        try:
            while chunk := os.read(master, 4096):
                seen += chunk
        except OSError:  # EIO once the child closed the terminal
            pass
        return proc.returncode, seen.decode() + stderr.decode()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)


def test_delete_prompt_names_the_tags_and_no_aborts_with_exit_1(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)

    async def build() -> Descriptor:
        async with target(registry_open) as t:
            g = GraphBuilder(t, repo)
            image = await g.image("i", tags=["v1", "v2"])
            await g.referrer(image, SIGNATURE_TYPE)
            return image

    image = run(build)
    ref = f"{registry_open.host}/{repo}:v2"
    rc, output = _run_on_tty(tmp_path, ["manifest", "delete", ref], b"n\n")
    assert rc == 1, output
    assert "Aborted: nothing was deleted" in output
    assert "tags v1, v2" in output, output
    assert "1 referrer" in output, output
    assert present(registry_open, repo, [image.digest]) == [image.digest]
    assert set(tags_of(registry_open, repo)) == {"v1", "v2", referrers_tag(image.digest)}


# -------------------------------------------------------------- request counts


def _fan(reg: Any, repo: str, n: int, *, tag: str = "v1") -> tuple[Descriptor, list[Descriptor]]:
    """An image with ``n`` signatures, listed in one fallback-index write."""

    async def main() -> tuple[Descriptor, list[Descriptor]]:
        async with target(reg) as t:
            g = GraphBuilder(t, repo)
            image = await g.image("fan", tags=[tag])
            return image, await _referrers(t, repo, image, n)

    return run(main)


async def _referrers(t: RegistryTarget, repo: str, subject: Descriptor, n: int) -> list[Descriptor]:
    g = GraphBuilder(t, repo)
    config = await g.blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
    layer = await g.blob(b"signature payload", "application/octet-stream")
    out = []
    for i in range(n):
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "artifactType": SIGNATURE_TYPE,
                "config": config.to_json(),
                "layers": [layer.to_json()],
                "subject": subject.to_json(),
                "annotations": {"n": str(i)},
            },
            separators=(",", ":"),
        ).encode()
        desc = descriptor_for(raw, mt.OCI_MANIFEST, artifact_type=SIGNATURE_TYPE)
        await t.push_manifest(repo, desc, raw, defer_referrers=True)
        out.append(desc)
    await t.ensure_referrers_listed(repo, subject, out)
    return out


def _index_writes(stats: Any) -> int:
    return sum(
        n
        for path, n in stats.paths("PUT", "manifest").items()
        if is_referrers_tag(path.rsplit("/", 1)[1])
    )


def test_deleting_a_subject_with_50_referrers_rewrites_no_index(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)
    image, sigs = _fan(registry_open, repo, 50)
    proxy = fault_proxy(registry_open)
    res = run_cli("manifest", "delete", "-f", f"{proxy.host}/{repo}:v1", home=tmp_path)
    assert res.code == 0, res.stderr
    stats = proxy.stats()
    assert _index_writes(stats) == 0  # the subject goes: its fallback tag is deleted instead
    assert stats.requests("DELETE", "manifest") == 50 + 1 + 1  # referrers, image, fallback index
    assert stats.requests("GET", "manifest") <= 50 + 3  # each referrer read once to admit it
    assert stats.requests("PUT") == 0
    assert present(registry_open, repo, [image.digest, *(s.digest for s in sigs)]) == []
    assert tags_of(registry_open, repo) == {}


def test_deleting_a_referrer_with_50_referrers_updates_each_index_once(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    """The root is itself a referrer: its subject stays, and loses one entry in one write."""
    repo = str(unique_repo)

    async def build() -> tuple[Descriptor, Descriptor, Descriptor, list[Descriptor]]:
        async with target(registry_open) as t:
            g = GraphBuilder(t, repo)
            image = await g.image("i", tags=["v1"])
            sbom = await g.referrer(image, SBOM_TYPE)
            sig = await g.referrer(image, SIGNATURE_TYPE)
            return image, sbom, sig, await _referrers(t, repo, sbom, 50)

    image, sbom, sig, sbom_sigs = run(build)
    proxy = fault_proxy(registry_open)
    res = run_cli("manifest", "delete", "-f", f"{proxy.host}/{repo}@{sbom.digest}", home=tmp_path)
    assert res.code == 0, res.stderr
    stats = proxy.stats()
    assert _index_writes(stats) == 1  # the image's index, without the SBOM
    assert stats.requests("PUT") == 1
    # referrers, the SBOM, the SBOM's fallback index, the image's superseded index
    assert stats.requests("DELETE", "manifest") == 50 + 1 + 1 + 1
    assert fallback_entries(registry_open, repo, image.digest) == [sig.digest]
    assert fallback_entries(registry_open, repo, sbom.digest) is None
    gone = [sbom.digest, *(s.digest for s in sbom_sigs)]
    assert present(registry_open, repo, gone) == []
    assert present(registry_open, repo, [image.digest, sig.digest]) == [image.digest, sig.digest]


def test_a_failed_delete_leaves_no_listing_naming_a_deleted_manifest(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    repo = str(unique_repo)
    image, sigs = _fan(registry_open, repo, 20)
    proxy = fault_proxy(registry_open)
    stuck = sigs[7].digest
    proxy.status("DELETE", f"/manifests/{stuck}$", 403, times=None)
    res = run_cli("manifest", "delete", "-f", f"{proxy.host}/{repo}:v1", home=tmp_path)
    assert res.code == 4, res.stderr
    listed = fallback_entries(registry_open, repo, image.digest)
    assert listed is not None and stuck in listed
    # Whatever the listing still names is there.
    assert sorted(present(registry_open, repo, listed)) == sorted(listed)
    assert present(registry_open, repo, [image.digest]) == [image.digest]

    proxy.clear()
    res = run_cli("manifest", "delete", "-f", f"{proxy.host}/{repo}:v1", home=tmp_path)
    assert res.code == 0, res.stderr
    assert present(registry_open, repo, [image.digest, *(s.digest for s in sigs)]) == []
    assert tags_of(registry_open, repo) == {}


def test_a_referrers_api_listing_is_checked_with_one_read_per_referrer_before_deleting(
    registry_referrers: RegistryInstance, fault_proxy: Any, unique_repo: Any, tmp_path: Path
) -> None:
    """The API's listing is not trusted unread by a delete (a lie would cost data, see
    test_hostile_referrers): each listed referrer is read once, next to its DELETE."""
    repo = str(unique_repo)
    image, sigs = _fan(registry_referrers, repo, 20)
    proxy = fault_proxy(registry_referrers)
    res = run_cli("manifest", "delete", "-f", f"{proxy.host}/{repo}:v1", home=tmp_path)
    assert res.code == 0, res.stderr
    stats = proxy.stats()
    assert stats.requests("GET", "manifest") == 1 + 20  # the root, then each referrer once
    assert stats.requests("DELETE", "manifest") == 20 + 1
    assert present(registry_referrers, repo, [image.digest, *(s.digest for s in sigs)]) == []
