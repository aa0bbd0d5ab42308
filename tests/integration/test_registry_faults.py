"""RegistryTarget under injected faults (tests/infra FaultProxy in front of real registries).

Broken downloads resume with ``Range``; corrupted bodies are caught; 429/503
answers are retried and their ``Retry-After`` honoured; broken uploads recover
from the registry's acknowledged offset or restart with a fresh session.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from replicator.errors import (
    IntegrityError,
    NotFoundError,
    ProtocolError,
    RateLimitedError,
    ServerError,
)
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RetryPolicy
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

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
ProxyFactory = Callable[..., FaultProxy]


def _seed_blob(instance: RegistryInstance, repo: str, data: bytes) -> Descriptor:
    async def scenario() -> Descriptor:
        async with target_for(instance) as target:
            return await push_bytes(target, repo, data, mt.OCI_LAYER)

    return run(scenario)


def test_cut_download_resumes_with_range_and_verifies(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    data = random.Random(1).randbytes(3 * MiB + 5)
    desc = _seed_blob(registry_open, unique_repo, data)
    proxy = fault_proxy(registry_open)
    proxy.cut("GET", r"/blobs/sha256:", after_bytes=MiB + 17)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            h = hashlib.sha256()
            total = 0
            async for chunk in target.fetch_blob(unique_repo, desc):
                h.update(chunk)
                total += len(chunk)
            assert f"sha256:{h.hexdigest()}" == desc.digest and total == desc.size
            assert target.stats.blob_get == 2

    run(scenario)
    stats = proxy.stats()
    assert stats.requests("GET", "blob") == 2
    # The second request asked only for the rest (Range), it did not start over.
    assert stats.bytes_down("GET", "blob") == desc.size
    statuses = [r.status for r in stats.log if r.kind == "blob" and r.method == "GET"]
    assert statuses == [200, 206]


def test_download_cut_several_times_still_completes(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    data = random.Random(2).randbytes(2 * MiB)
    desc = _seed_blob(registry_open, unique_repo, data)
    proxy = fault_proxy(registry_open)
    proxy.cut("GET", r"/blobs/sha256:", after_bytes=300_000, times=3)

    async def scenario() -> bytes:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            return b"".join([c async for c in target.fetch_blob(unique_repo, desc)])

    assert run(scenario) == data
    assert proxy.stats().requests("GET", "blob") == 4


def test_flipped_byte_raises_integrity_error_before_the_last_chunk(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    data = random.Random(3).randbytes(MiB)
    desc = _seed_blob(registry_open, unique_repo, data)
    proxy = fault_proxy(registry_open)
    proxy.flip("GET", r"/blobs/sha256:", offset=12345)

    async def scenario() -> int:
        received = 0
        async with target_for(proxy, retry=FAST_RETRY) as target:
            with pytest.raises(IntegrityError) as info:
                async for chunk in target.fetch_blob(unique_repo, desc):
                    received += len(chunk)
        assert desc.digest in str(info.value)
        return received

    assert run(scenario) < desc.size


def test_flipped_manifest_byte_raises_integrity_error(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    raw = b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % mt.OCI_INDEX.encode()
    desc = descriptor_for(raw, mt.OCI_INDEX)

    async def seed() -> None:
        async with target_for(registry_open) as target:
            await target.push_manifest(unique_repo, desc, raw, ("v1",))

    run(seed)
    proxy = fault_proxy(registry_open)
    proxy.flip("GET", r"/manifests/", offset=3, times=None)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            with pytest.raises(IntegrityError):
                await target.fetch_manifest(unique_repo, desc)
            with pytest.raises(IntegrityError):
                await target.fetch_manifest(unique_repo, "v1")  # Docker-Content-Digest

    run(scenario)


@pytest.mark.parametrize("code", [503, 429])
def test_retry_after_is_honoured(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str, code: int
) -> None:
    desc = _seed_blob(registry_open, unique_repo, b"some bytes")
    proxy = fault_proxy(registry_open)
    proxy.status("HEAD", r"/blobs/sha256:", code, retry_after=1, times=1)

    async def scenario() -> float:
        # base_delay is tiny: only Retry-After can make the wait last a second.
        async with target_for(proxy, retry=FAST_RETRY) as target:
            started = time.monotonic()
            assert await target.blob_exists(unique_repo, desc)
            elapsed = time.monotonic() - started
            assert target.stats.retries == 1
            return elapsed

    elapsed = run(scenario)
    assert 0.9 <= elapsed < 5
    assert proxy.stats().requests("HEAD", "blob") == 2


def test_retry_after_as_http_date(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    desc = _seed_blob(registry_open, unique_repo, b"dated")
    proxy = fault_proxy(registry_open)
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    proxy.status("GET", r"/blobs/sha256:", 503, retry_after=when, times=1)

    async def scenario() -> float:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            started = time.monotonic()
            assert b"".join([c async for c in target.fetch_blob(unique_repo, desc)]) == b"dated"
            return time.monotonic() - started

    assert 0.5 <= run(scenario) < 5


def test_persistent_errors_give_up_with_the_right_error(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    desc = _seed_blob(registry_open, unique_repo, b"x")
    proxy = fault_proxy(registry_open)
    proxy.status("HEAD", r"/blobs/sha256:", 503, times=None)
    proxy.status("GET", r"/tags/list", 429, retry_after=3600, times=None)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            with pytest.raises(ServerError) as server:
                await target.blob_exists(unique_repo, desc)
            assert "after 4 attempts" in str(server.value)
            # A Retry-After beyond max_retry_after fails at once instead of sleeping.
            started = time.monotonic()
            with pytest.raises(RateLimitedError):
                await target.tags(unique_repo)
            assert time.monotonic() - started < 2

    run(scenario)
    assert proxy.stats().requests("HEAD", "blob") == 4
    assert proxy.stats().requests("GET", "tags") == 1


def test_missing_tag_is_not_found_through_the_proxy(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    _seed_blob(registry_open, unique_repo, b"repo exists")
    proxy = fault_proxy(registry_open)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            with pytest.raises(NotFoundError) as info:
                await target.resolve(unique_repo, "v9")
            assert info.value.status == 404
            with pytest.raises(NotFoundError) as info:
                await target.fetch_manifest(unique_repo, "v9")
            assert str(info.value).endswith('manifest "v9" not found (MANIFEST_UNKNOWN)')

    run(scenario)


def test_chunk_upload_cut_recovers_from_the_acknowledged_offset(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    blob = Pattern(5 * 256 * 1024, seed=7)
    desc = blob.descriptor()
    proxy = fault_proxy(registry_open)
    # The third PATCH breaks after 1000 bytes; nothing of it reaches the registry.
    proxy.cut_request("PATCH", r"/blobs/uploads/", after_bytes=1000, nth=3)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            result = await target.push_blob(unique_repo, desc, blob.opener(), chunk_size=256 * 1024)
            assert result.how == "uploaded"
            assert await target.blob_exists(unique_repo, desc)

    run(scenario)
    stats = proxy.stats()
    assert stats.requests("PATCH", "upload") == 6
    # The registry received each byte once (plus the cut 1000 that never arrived).
    assert stats.bytes_up("PATCH", "upload") == desc.size + 1000

    async def verify() -> str:
        async with target_for(registry_open) as target:
            h = hashlib.sha256()
            async for chunk in target.fetch_blob(unique_repo, desc):
                h.update(chunk)
            return f"sha256:{h.hexdigest()}"

    assert run(verify) == desc.digest


def test_chunk_acknowledged_but_answer_lost_still_completes(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    blob = Pattern(3 * 128 * 1024, seed=8)
    desc = blob.descriptor()
    proxy = fault_proxy(registry_open)
    # The registry takes the second chunk, but the client sees a 502 (and so never
    # learns the new Location).  distribution ties its upload state to the location,
    # so the old one is refused from then on: the push starts over cleanly.
    proxy.status("PATCH", r"/blobs/uploads/", 502, nth=2, forward=True)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            result = await target.push_blob(unique_repo, desc, blob.opener(), chunk_size=128 * 1024)
            assert result.how == "uploaded"
            assert await target.blob_exists(unique_repo, desc)
            assert target.stats.blob_upload_start == 2

    run(scenario)
    # The 502'd chunk is sent again read afresh from its offset (chunks are not
    # kept in memory); refused, the push starts over from 0.
    assert blob.opened == [0, 128 * 1024, 0]

    async def verify() -> bytes:
        async with target_for(registry_open) as target:
            return b"".join([c async for c in target.fetch_blob(unique_repo, desc)])

    assert hashlib.sha256(run(verify)).hexdigest() == desc.digest.split(":")[1]


def test_streamed_monolithic_upload_cut_restarts_with_a_fresh_session(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    blob = Pattern(6 * MiB, seed=9)
    desc = blob.descriptor()
    proxy = fault_proxy(registry_open)
    proxy.cut_request("PUT", r"/blobs/uploads/", after_bytes=MiB)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            result = await target.push_blob(unique_repo, desc, blob.opener())
            assert result.bytes_sent == desc.size
            assert await target.blob_exists(unique_repo, desc)
            assert target.stats.blob_upload_start == 2

    run(scenario)
    assert blob.opened == [0, 0]


def test_small_upload_retried_after_503(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    data = b"small blob" * 100
    desc = descriptor_for(data, mt.OCI_LAYER)
    proxy = fault_proxy(registry_open)
    proxy.status("PUT", r"/blobs/uploads/", 503, retry_after=0)

    async def scenario() -> Any:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            result = await target.push_blob(unique_repo, desc, bytes_opener(data))
            assert await target.blob_exists(unique_repo, desc)
            return result

    assert run(scenario).bytes_sent == len(data)
    assert proxy.stats().requests("PUT", "upload") == 2


def test_token_registry_through_a_proxy(
    registry_token: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    proxy = fault_proxy(registry_token)
    data = b"behind a proxy"

    async def scenario() -> None:
        async with RegistryTarget(proxy.host, proxy.options(retry=FAST_RETRY)) as target:
            desc = await push_bytes(target, unique_repo, data, mt.OCI_LAYER)
            assert b"".join([c async for c in target.fetch_blob(unique_repo, desc)]) == data
            assert target.stats.token >= 1

    run(scenario)
    assert proxy.stats().requests(kind="token") >= 1


def test_stalled_download_is_detected_and_resumed(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    data = random.Random(12).randbytes(2 * MiB)
    desc = _seed_blob(registry_open, unique_repo, data)
    proxy = fault_proxy(registry_open)
    # After 700 KB the body stops flowing for 5 s; the read time-out (0.5 s) notices.
    proxy.delay("GET", r"/blobs/sha256:", 5.0, after_bytes=700_000)

    async def scenario() -> float:
        async with target_for(proxy, retry=FAST_RETRY, read_timeout=0.5) as target:
            started = time.monotonic()
            got = b"".join([c async for c in target.fetch_blob(unique_repo, desc)])
            assert got == data
            assert target.stats.blob_get == 2
            return time.monotonic() - started

    assert run(scenario) < 4
    statuses = [r.status for r in proxy.stats().log if r.kind == "blob" and r.method == "GET"]
    assert statuses[-1] == 206


@pytest.mark.parametrize("size", [1000, 6 * MiB])
def test_closing_put_whose_answer_is_lost_counts_as_done(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str, size: int
) -> None:
    blob = Pattern(size, seed=13)
    desc = blob.descriptor()
    proxy = fault_proxy(registry_open)
    # The registry stores the blob, the client sees 502; the retried PUT then
    # meets a closed session (404) and the target checks what landed.
    proxy.status("PUT", r"/blobs/uploads/", 502, forward=True)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            result = await target.push_blob(unique_repo, desc, blob.opener())
            assert result.how == "uploaded"
            assert await target.blob_exists(unique_repo, desc)

    run(scenario)
    assert proxy.stats().requests("HEAD", "blob") >= 2


def test_nonsense_answers_are_protocol_errors(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    _seed_blob(registry_open, unique_repo, b"repo exists")
    proxy = fault_proxy(registry_open)
    proxy.status("GET", r"/manifests/v1$", 200, body=b"<html>please log in</html>", times=None)
    proxy.status("GET", r"/tags/list", 200, body=b'{"tags": "not a list"}', times=None)
    proxy.status("GET", r"/referrers/", 200, body=b"[1,2,3]", times=None)
    proxy.status("GET", r"/manifests/big$", 200, body=b" " * (4 * MiB + 1), times=None)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            with pytest.raises(ProtocolError) as info:
                await target.fetch_manifest(unique_repo, "v1")
            assert "not a manifest" in str(info.value)
            with pytest.raises(ProtocolError):
                await target.tags(unique_repo)
            image = descriptor_for(b"{}", mt.OCI_MANIFEST)
            with pytest.raises(ProtocolError):
                await target.referrers(unique_repo, image)
            with pytest.raises(ProtocolError) as info:
                await target.fetch_manifest(unique_repo, "big")
            assert "larger than" in str(info.value)

    run(scenario)


def test_manifest_put_answered_200_is_not_a_success(
    registry_open: RegistryInstance, fault_proxy: ProxyFactory, unique_repo: str
) -> None:
    raw = b'{"schemaVersion":2,"mediaType":"%s","manifests":[]}' % mt.OCI_INDEX.encode()
    desc = descriptor_for(raw, mt.OCI_INDEX)
    proxy = fault_proxy(registry_open)
    proxy.status("PUT", r"/manifests/", 200, body=b"", times=None)

    async def scenario() -> None:
        async with target_for(proxy, retry=FAST_RETRY) as target:
            with pytest.raises(ProtocolError) as info:
                await target.push_manifest(unique_repo, desc, raw, ("v1",))
            assert "(expected 201)" in str(info.value)

    run(scenario)
