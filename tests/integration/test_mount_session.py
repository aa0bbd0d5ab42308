"""A failed cross-repository mount hands its upload session to the push that follows.

distribution answers a mount it cannot do (the source lacks the blob) with 202
and an upload session.  :class:`RegistryTarget` keeps that session for the
``push_blob`` of the same (repository, digest): one ``POST`` in all, where the
target used to cancel it (``DELETE``) and open another.  Counted through the
FaultProxy; the registry's storage shows that no session is left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replicator.errors import DeniedError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.registry import sessions
from replicator.targets.registry.client import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.test_registry_client import (
    MiB,
    Pattern,
    bytes_opener,
    push_bytes,
    run,
    target_for,
)

ProxyFactory = Callable[..., FaultProxy]


# -- helpers ------------------------------------------------------------------------------


def uploads_root(instance: RegistryInstance, repository: str) -> Path:
    """``_uploads`` of ``repository`` in the registry's filesystem storage."""
    assert instance.log_file is not None  # the registry's workdir holds log and storage
    root = instance.log_file.parent / "data" / "docker" / "registry" / "v2" / "repositories"
    return root / repository / "_uploads"


def upload_dirs(instance: RegistryInstance, repository: str) -> list[str]:
    """Upload sessions the registry holds open for ``repository``.

    A session is ``_uploads/<uuid>/`` with ``startedat`` and ``data``; a finished
    upload removes the directory.  distribution 2.8's DELETE removes both files
    but leaves ``hashstates/`` behind, so such a husk does not count as open.
    """
    path = uploads_root(instance, repository)
    if not path.is_dir():
        return []
    return sorted(
        p.name for p in path.iterdir() if (p / "startedat").exists() or (p / "data").exists()
    )


def upload_requests(proxy: FaultProxy) -> Counter[tuple[str, int]]:
    """(method, status) of every request to ``/v2/<name>/blobs/uploads/...``."""
    return Counter((r.method, r.status) for r in proxy.stats().log if r.kind == "upload")


def methods(proxy: FaultProxy) -> Counter[str]:
    """Upload requests by method."""
    return Counter(r.method for r in proxy.stats().log if r.kind == "upload")


async def digest_of(target: RegistryTarget, repository: str, desc: Descriptor) -> str:
    """Download through fetch_blob (which verifies) and hash independently."""
    h = hashlib.sha256()
    async for chunk in target.fetch_blob(repository, desc):
        h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def seed_other_blob(instance: RegistryInstance, repository: str, user: str | None = None) -> None:
    """Make ``repository`` exist (with an unrelated blob): a mount source that lacks ours."""

    async def scenario() -> None:
        async with target_for(instance, user=user) if user else target_for(instance) as target:
            await push_bytes(target, repository, b"something else " + repository.encode(), "x/y")

    run(scenario)


# -- a failed mount, then the push --------------------------------------------------------

CASES = {
    # name: (size, chunk_size, PATCHes expected)
    "small": (50_000, None, 0),
    "streamed": (5 * MiB + 3, None, 0),  # above SMALL_BLOB: one streamed PUT
    "chunked": (200_000, 64 * 1024, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failed_mount_then_push_uses_the_mount_session(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any, case: str
) -> None:
    size, chunk_size, patches = CASES[case]
    source, dest = str(unique_repo), str(unique_repo())
    seed_other_blob(registry_open, source)
    blob = Pattern(size, seed=31)
    desc = blob.descriptor()
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(proxy) as target:
            assert await target.mount_blob(dest, desc, source) is False
            assert len(upload_dirs(registry_open, dest)) == 1  # kept, not cancelled
            result = await target.push_blob(dest, desc, blob.opener(), chunk_size=chunk_size)
            assert result.how == "uploaded" and result.bytes_sent == size
            stats = target.stats
            assert stats.blob_mount == 1
            assert stats.blob_upload_start == 0
            assert stats.blob_upload_cancel == 0
            assert stats.blob_put == 1
            assert stats.blob_patch == patches
            assert upload_dirs(registry_open, dest) == []
            assert await target.blob_exists(dest, desc)
            assert await digest_of(target, dest, desc) == desc.digest

    run(scenario)
    # One POST (the mount's) opened the only session; no DELETE, no second POST.
    expected = Counter({("POST", 202): 1, ("PUT", 201): 1})
    if patches:
        expected[("PATCH", 202)] = patches
    assert upload_requests(proxy) == expected
    assert blob.opened == [0]
    assert upload_dirs(registry_open, dest) == []


def test_before_and_after_counts_for_the_record(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any
) -> None:
    """Without a mount the push opens its own session: the mount's POST replaces it."""
    dest_plain, dest_mount, source = str(unique_repo), str(unique_repo()), str(unique_repo())
    seed_other_blob(registry_open, source)
    data = random.Random(32).randbytes(30_000)
    desc = descriptor_for(data, mt.OCI_LAYER)
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(proxy) as target:
            await target.push_blob(dest_plain, desc, bytes_opener(data))
            plain = methods(proxy)
            proxy.reset()
            assert await target.mount_blob(dest_mount, desc, source) is False
            await target.push_blob(dest_mount, desc, bytes_opener(data))
            # mount + push costs exactly what a push alone costs.
            assert methods(proxy) == plain == Counter({"POST": 1, "PUT": 1})

    run(scenario)


# -- token auth -----------------------------------------------------------------------------


def test_token_mount_from_a_source_lacking_the_blob(
    registry_token: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any
) -> None:
    # "limited" may pull shared/* and push lim/*.
    source, dest = str(unique_repo("shared")), str(unique_repo("lim"))
    seed_other_blob(registry_token, source, user="admin")
    data = random.Random(33).randbytes(40_000)
    desc = descriptor_for(data, mt.OCI_LAYER)
    proxy = fault_proxy(registry_token)

    async def scenario() -> None:
        async with target_for(proxy, user="limited") as target:
            assert await target.mount_blob(dest, desc, source) is False
            await target.push_blob(dest, desc, bytes_opener(data))
            assert target.stats.blob_upload_start == 0
            assert target.stats.blob_upload_cancel == 0
            assert await digest_of(target, dest, desc) == desc.digest

    run(scenario)
    # The first POST meets the 401 challenge (no token yet); the only session is
    # the mount's 202, and the PUT goes into it.
    assert upload_requests(proxy) == Counter({("POST", 401): 1, ("POST", 202): 1, ("PUT", 201): 1})
    assert upload_dirs(registry_token, dest) == []
    # The mount asked pull on the source and pull,push on the target in one token.
    log = [e for e in registry_token.token_log() if e["user"] == "limited"]
    mount_tokens = [e for e in log if any(f":{source}:" in s for s in e["scopes"])]
    assert len(mount_tokens) == 1, log
    assert sorted(mount_tokens[0]["scopes"]) == sorted(
        [f"repository:{source}:pull", f"repository:{dest}:pull,push"]
    )
    granted = {g["name"]: sorted(g["actions"]) for g in mount_tokens[0]["granted"]}
    assert granted == {source: ["pull"], dest: ["pull", "push"]}


def test_token_mount_from_a_source_the_user_may_not_pull(
    registry_token: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any
) -> None:
    # distribution refuses the whole mount request (401 insufficient_scope): no
    # session is opened, so the push opens the one session itself.
    source, dest = str(unique_repo("private")), str(unique_repo("lim"))
    data = random.Random(34).randbytes(40_000)
    desc = descriptor_for(data, mt.OCI_LAYER)

    async def seed() -> None:
        async with target_for(registry_token, user="admin") as admin:
            await push_bytes(admin, source, data, mt.OCI_LAYER)

    run(seed)
    proxy = fault_proxy(registry_token)

    async def scenario() -> None:
        async with target_for(proxy, user="limited") as target:
            with pytest.raises(DeniedError):
                await target.mount_blob(dest, desc, source)
            await target.push_blob(dest, desc, bytes_opener(data))
            assert target.stats.blob_upload_start == 1
            assert target.stats.blob_upload_cancel == 0
            assert await digest_of(target, dest, desc) == desc.digest

    run(scenario)
    requests = upload_requests(proxy)
    # Exactly one POST opened a session; the refused mount attempts opened none.
    assert requests[("POST", 202)] == 1
    assert requests[("PUT", 201)] == 1
    assert {k for k in requests if k[0] == "POST"} == {("POST", 401), ("POST", 202)}
    assert not any(method in ("DELETE", "PATCH") for method, _ in requests)
    assert upload_dirs(registry_token, dest) == []
    log = [e for e in registry_token.token_log() if e["user"] == "limited"]
    mount_tokens = [e for e in log if any(f":{source}:" in s for s in e["scopes"])]
    assert mount_tokens and all(
        sorted(e["scopes"]) == sorted([f"repository:{source}:pull", f"repository:{dest}:pull,push"])
        for e in mount_tokens
    )


# -- no session left behind ----------------------------------------------------------------


def test_unused_pending_session_is_cancelled_at_aclose(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any
) -> None:
    source, dest = str(unique_repo), str(unique_repo())
    seed_other_blob(registry_open, source)
    desc = descriptor_for(b"never pushed", mt.OCI_LAYER)
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        target = target_for(proxy)
        assert await target.mount_blob(dest, desc, source) is False
        assert len(upload_dirs(registry_open, dest)) == 1
        await target.aclose()
        assert target.stats.blob_upload_cancel == 1

    run(scenario)
    assert upload_dirs(registry_open, dest) == []
    assert upload_requests(proxy) == Counter({("POST", 202): 1, ("DELETE", 204): 1})


def test_pending_session_expires_when_no_push_follows(
    registry_open: RegistryInstance,
    fault_proxy: ProxyFactory,
    unique_repo: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessions, "PENDING_SESSION_TTL", 0.2)
    source, dest = str(unique_repo), str(unique_repo())
    seed_other_blob(registry_open, source)
    data = b"pushed too late for the mount session"
    desc = descriptor_for(data, mt.OCI_LAYER)
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(proxy) as target:
            assert await target.mount_blob(dest, desc, source) is False
            await asyncio.sleep(0.3)
            # No background task cancels it: the next upload operation of the
            # target does, before it opens a session of its own.
            assert target.stats.blob_upload_cancel == 0
            await target.push_blob(dest, desc, bytes_opener(data))
            assert target.stats.blob_upload_cancel == 1
            assert target.stats.blob_upload_start == 1
            assert await digest_of(target, dest, desc) == desc.digest

    run(scenario)
    assert upload_dirs(registry_open, dest) == []
    order = [(r.method, r.status) for r in proxy.stats().log if r.kind == "upload"]
    assert order == [("POST", 202), ("DELETE", 204), ("POST", 202), ("PUT", 201)]


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_pending_session_gone_falls_back_to_a_fresh_post(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any, chunked: bool
) -> None:
    source, dest = str(unique_repo), str(unique_repo())
    seed_other_blob(registry_open, source)
    blob = Pattern(150_000, seed=35)
    desc = blob.descriptor()
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(proxy) as target:
            assert await target.mount_blob(dest, desc, source) is False
            (session,) = upload_dirs(registry_open, dest)
            # The registry loses the session (purged, restarted without its state...).
            shutil.rmtree(uploads_root(registry_open, dest) / session)
            result = await target.push_blob(
                dest, desc, blob.opener(), chunk_size=64 * 1024 if chunked else None
            )
            assert result.how == "uploaded"
            assert target.stats.blob_upload_start == 1
            assert await digest_of(target, dest, desc) == desc.digest

    run(scenario)
    requests = upload_requests(proxy)
    assert requests[("POST", 202)] == 2  # the mount's, then a fresh one
    assert requests[("PUT", 201)] == 1
    failed = ("PATCH", 404) if chunked else ("PUT", 404)
    assert requests[failed] == 1
    assert upload_dirs(registry_open, dest) == []


def test_two_pushes_never_share_one_pending_session(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any
) -> None:
    source, dest = str(unique_repo), str(unique_repo())
    seed_other_blob(registry_open, source)
    data = random.Random(36).randbytes(60_000)
    desc = descriptor_for(data, mt.OCI_LAYER)
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(proxy) as target:
            assert await target.mount_blob(dest, desc, source) is False
            results = await asyncio.gather(
                target.push_blob(dest, desc, bytes_opener(data)),
                target.push_blob(dest, desc, bytes_opener(data)),
            )
            assert [r.how for r in results] == ["uploaded", "uploaded"]
            # One push used the mount's session, the other opened its own.
            assert target.stats.blob_upload_start == 1
            assert await digest_of(target, dest, desc) == desc.digest

    run(scenario)
    assert upload_requests(proxy) == Counter({("POST", 202): 2, ("PUT", 201): 2})
    assert upload_dirs(registry_open, dest) == []


def test_pending_session_cancelled_once_the_blob_turns_up(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: Any
) -> None:
    empty_source, full_source, dest = str(unique_repo), str(unique_repo()), str(unique_repo())
    seed_other_blob(registry_open, empty_source)
    data = random.Random(37).randbytes(20_000)
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(registry_open) as direct:
            desc = await push_bytes(direct, full_source, data, mt.OCI_LAYER)
        async with target_for(proxy) as target:
            # A mount from a repository lacking the blob keeps a session; a later
            # mount that works makes it useless, and it is cancelled right away.
            assert await target.mount_blob(dest, desc, empty_source) is False
            assert await target.mount_blob(dest, desc, full_source) is True
            assert target.stats.blob_upload_cancel == 1
            assert upload_dirs(registry_open, dest) == []
            # Likewise when a probe finds the blob present.
            other = str(unique_repo())
            assert await target.mount_blob(other, desc, empty_source) is False
            async with target_for(registry_open) as direct:
                await direct.push_blob(other, desc, bytes_opener(data))
            assert await target.blob_exists(other, desc)
            for _ in range(100):
                if target.stats.blob_upload_cancel == 2:
                    break
                await asyncio.sleep(0.02)
            assert target.stats.blob_upload_cancel == 2
            assert upload_dirs(registry_open, other) == []

    run(scenario)
    # Nothing was left for aclose to cancel.
    assert upload_requests(proxy)[("DELETE", 204)] == 2
