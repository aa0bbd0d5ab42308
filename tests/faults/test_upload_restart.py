"""Uploads whose link breaks mid-body, or whose registry restarts under them.

Found by the randomized fault suite (``test_fault_schedules.py``: two
schedules restarting the destination under an upload failed with exit 3): a
``PUT`` that breaks off after the registry received part of its body leaves
distribution 2.8's session holding those bytes, and the session is refused
from then on (``404 BLOB_UPLOAD_INVALID``: its stored size no longer matches
the offset the ``Location`` carries).  The retried ``PUT`` of a small blob
met that refusal and the copy failed ("blob ... not found", exit 3).  The blob
is whole at hand (small blobs are held in memory), so a fresh session now
takes it: a broken link or a restart costs a pause, not the copy (docs/CLI.md,
"Time-outs and retries").  Streamed blobs and chunks already started over.

``cut_request(..., forward=True)`` delivers the first bytes to the registry,
then breaks the link: the state a restart or a reset leaves, deterministically.
The restart tests slow the body so that the registry is stopped while reading
it (whether it kept bytes then depends on timing).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import anyio
import pytest

from replicator.oci.digest import descriptor_for
from replicator.targets.registry import RegistryTarget
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RunningRegistry
from tests.integration.graphs import _opener

KiB = 1024


def _restart_during_put(
    registry_factory: Callable[..., RunningRegistry],
    fault_proxy: Callable[..., FaultProxy],
    size: int,
    chunk_size: int | None,
    method: str,
) -> None:
    running = registry_factory("open")
    proxy = fault_proxy(running.instance, upstream_down="drop")
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(1.0)  # some of the body has reached the registry by now
        running.restart(downtime=0.5)
        restarted.set()

    # The body crawls (64 KiB/s) so that the registry dies while reading it.
    proxy.throttle(method, r"/blobs/uploads/.", 64 * KiB, upload=True, times=1)
    proxy.hook(method, r"/blobs/uploads/.", restart, times=1)
    data = os.urandom(size)
    desc = descriptor_for(data, "application/octet-stream")

    async def push() -> None:
        async with RegistryTarget(proxy.host, proxy.options()) as target:
            await target.push_blob("t/restart", desc, _opener(data), chunk_size=chunk_size)
        async with RegistryTarget(running.instance.host, running.instance.options()) as direct:
            assert await direct.blob_exists("t/restart", desc)

    anyio.run(push)
    assert restarted.wait(30)


def test_restart_during_a_small_blobs_put_sends_it_again_in_a_fresh_session(
    registry_factory: Callable[..., RunningRegistry], fault_proxy: Callable[..., FaultProxy]
) -> None:
    _restart_during_put(registry_factory, fault_proxy, 300 * KiB, None, "PUT")


def test_restart_during_a_chunk_sends_the_blob_again_in_a_fresh_session(
    registry_factory: Callable[..., RunningRegistry], fault_proxy: Callable[..., FaultProxy]
) -> None:
    _restart_during_put(registry_factory, fault_proxy, 900 * KiB, 256 * KiB, "PATCH")


@pytest.mark.parametrize("size", [300 * KiB])
def test_restart_during_the_put_of_a_streamed_blob(
    registry_factory: Callable[..., RunningRegistry],
    fault_proxy: Callable[..., FaultProxy],
    size: int,
) -> None:
    """A blob above ``monolithic_max``... is chunked; this covers the one-request stream."""
    _restart_during_put(registry_factory, fault_proxy, size, None, "PUT")


def _cut_mid_put(
    registry_factory: Callable[..., RunningRegistry],
    fault_proxy: Callable[..., FaultProxy],
    size: int,
    chunk_size: int | None,
    method: str,
) -> None:
    running = registry_factory("open")
    proxy = fault_proxy(running.instance)
    # The registry receives 100 KiB of the body, then the link breaks.
    proxy.cut_request(method, r"/blobs/uploads/.", 100 * KiB, forward=True)
    data = os.urandom(size)
    desc = descriptor_for(data, "application/octet-stream")

    async def push() -> None:
        async with RegistryTarget(proxy.host, proxy.options()) as target:
            await target.push_blob("t/cut", desc, _opener(data), chunk_size=chunk_size)
        async with RegistryTarget(running.instance.host, running.instance.options()) as direct:
            assert await direct.blob_exists("t/cut", desc)

    anyio.run(push)
    assert [r.fired for r in proxy.rules()] == [1]


def test_link_broken_mid_put_of_a_small_blob_sends_it_again_in_a_fresh_session(
    registry_factory: Callable[..., RunningRegistry], fault_proxy: Callable[..., FaultProxy]
) -> None:
    _cut_mid_put(registry_factory, fault_proxy, 300 * KiB, None, "PUT")


def test_link_broken_mid_put_of_a_streamed_blob_sends_it_again_in_a_fresh_session(
    registry_factory: Callable[..., RunningRegistry], fault_proxy: Callable[..., FaultProxy]
) -> None:
    """Above 4 MiB (without a chunk size) a blob is streamed in one PUT, not held."""
    _cut_mid_put(registry_factory, fault_proxy, 5 * 1024 * KiB, None, "PUT")


def test_link_broken_mid_chunk_sends_the_rest_again(
    registry_factory: Callable[..., RunningRegistry], fault_proxy: Callable[..., FaultProxy]
) -> None:
    _cut_mid_put(registry_factory, fault_proxy, 900 * KiB, 256 * KiB, "PATCH")
