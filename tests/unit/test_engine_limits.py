"""Adaptive per-location limits: caps hold, AIMD halves on congestion and grows back."""

from __future__ import annotations

import asyncio

import pytest

from replicator.engine.limits import AdaptiveLimit, Limits, LimitSettings, is_congestion
from replicator.errors import NotFoundError, RateLimitedError, ServerError


def test_congestion_is_429_or_503_only() -> None:
    assert is_congestion(RateLimitedError("slow", status=429))
    assert is_congestion(ServerError("busy", status=503))
    assert not is_congestion(ServerError("broken", status=500))
    assert not is_congestion(NotFoundError("gone", status=404))


def test_limit_halves_once_per_round_and_grows_back_additively() -> None:
    lim = AdaptiveLimit(8)
    lim.on_congestion(started=1e18)
    assert lim.limit == 4
    # A failure from a request that started before the decrease is the same round.
    lim.on_congestion(started=0.0)
    assert lim.limit == 4
    lim.on_congestion(started=1e18)
    assert lim.limit == 2
    for _ in range(3):  # 2 -> 2.5 -> 2.9 -> 3.24: about one slot per round
        lim.on_success()
    assert lim.limit == 3
    for _ in range(100):
        lim.on_success()
    assert lim.limit == 8  # never above the maximum
    for _ in range(10):
        lim.on_congestion(started=1e18)
    assert lim.limit == 1  # never below the minimum


async def _peak(limits: Limits, kind: str, location: str, n: int) -> int:
    running = 0
    peak = 0

    async def worker() -> None:
        nonlocal running, peak
        async with limits.slot(kind, location):  # type: ignore[arg-type]
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.005)
            running -= 1

    await asyncio.gather(*(worker() for _ in range(n)))
    return peak


def test_per_location_and_global_caps_hold() -> None:
    async def both() -> tuple[int, int]:
        limits = Limits(
            LimitSettings(
                concurrency=10, meta_per_location=3, blob_per_location=2, burst_per_location=1
            )
        )
        return await _peak(limits, "meta", "a", 20), await _peak(limits, "blob", "a", 20)

    assert asyncio.run(both()) == (3, 2)  # a burst below the base never shrinks it
    small = Limits(LimitSettings(concurrency=1, meta_per_location=5, blob_per_location=5))
    assert asyncio.run(_peak(small, "meta", "a", 10)) == 1


def test_rate_limited_location_is_halved_and_others_untouched() -> None:
    limits = Limits(LimitSettings(concurrency=64, meta_per_location=8, blob_per_location=8))

    async def scenario() -> None:
        async def fail() -> None:
            raise RateLimitedError("429", status=429, registry="slow:5000")

        with pytest.raises(RateLimitedError):
            await limits.call("meta", "slow:5000", fail)

        async def ok() -> int:
            return 1

        assert await limits.call("meta", "fast:5000", ok) == 1

    asyncio.run(scenario())
    assert limits.limiter("slow:5000", "meta").limit == 4
    assert limits.limiter("fast:5000", "meta").limit >= 8  # not halved (it may grow)


def test_transfer_congestion_blames_the_location_named_in_the_error() -> None:
    limits = Limits(LimitSettings(concurrency=64, meta_per_location=8, blob_per_location=8))

    async def scenario() -> None:
        with pytest.raises(ServerError):
            async with limits.slot("blob", "src:1", "dst:2"):
                raise ServerError("503", status=503, registry="dst:2")

    asyncio.run(scenario())
    assert limits.limiter("dst:2", "blob").limit == 4
    assert limits.limiter("src:1", "blob").limit == 8


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def scenario() -> int:
        lim = AdaptiveLimit(1)
        await lim.acquire()
        waiter = asyncio.create_task(lim.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        lim.release()
        await asyncio.wait_for(lim.acquire(), 1)
        return lim.in_flight

    assert asyncio.run(scenario()) == 1


def test_hidden_retries_count_as_congestion_even_when_the_call_succeeds() -> None:
    limits = Limits(LimitSettings(concurrency=64, meta_per_location=8, blob_per_location=8))
    retries = 0

    async def scenario() -> None:
        nonlocal retries

        async def throttled_then_ok() -> int:
            nonlocal retries
            retries += 1  # the target retried a 429 internally
            return 1

        async def ok() -> int:
            return 2

        assert await limits.call("meta", "r:1", throttled_then_ok, lambda: retries) == 1
        assert limits.limiter("r:1", "meta").limit == 4
        assert await limits.call("meta", "r:1", ok, lambda: retries) == 2

    asyncio.run(scenario())
    assert limits.limiter("r:1", "meta").limit == 4  # 4 + 1/4 rounds down


def test_quick_successes_grow_the_limit_to_the_burst_then_additively_after_congestion() -> None:
    lim = AdaptiveLimit(8, maximum=32)
    for _ in range(4):
        lim.on_success()
    assert lim.limit == 12  # slow start: one slot per success
    for _ in range(100):
        lim.on_success()
    assert lim.limit == 32  # never above the burst
    lim.on_congestion(started=1e18)
    assert lim.limit == 16
    for _ in range(4):
        lim.on_success()
    assert lim.limit == 16  # congestion seen: about one slot per round now
    for _ in range(16):
        lim.on_success()
    assert lim.limit == 17


def test_slow_successes_keep_the_limit_at_its_base() -> None:
    lim = AdaptiveLimit(8, maximum=32)
    for _ in range(10):
        lim.on_success(quick=False)
    assert lim.limit == 8  # long transfers never grow it beyond the base
    for _ in range(10):
        lim.on_success()
    assert lim.limit == 18
    for _ in range(4):
        lim.on_success(quick=False)
    assert lim.limit == 14  # each long transfer takes one burst slot back
    for _ in range(20):
        lim.on_success(quick=False)
    assert lim.limit == 8  # down to the base, not below
    lim.on_congestion(started=1e18)
    for _ in range(100):
        lim.on_success(quick=False)
    assert lim.limit == 8  # a slow success still recovers up to the base


def test_many_small_transfers_run_wider_than_the_base() -> None:
    limits = Limits(LimitSettings(concurrency=32, meta_per_location=4, blob_per_location=4))
    assert asyncio.run(_peak(limits, "blob", "a", 200)) > 4
    assert limits.limiter("a", "blob").limit == 32  # the global cap is the default burst
    assert limits.snapshot() == {"a/blob": 32}


def test_long_transfers_stay_at_the_base() -> None:
    limits = Limits(
        LimitSettings(concurrency=32, meta_per_location=4, blob_per_location=2, quick_hold=0.0)
    )
    assert asyncio.run(_peak(limits, "blob", "a", 20)) == 2


def test_burst_is_capped_by_the_global_cap() -> None:
    limits = Limits(LimitSettings(concurrency=6, blob_per_location=2, burst_per_location=50))
    assert limits.limiter("a", "blob").maximum == 6


def test_work_queued_at_a_busy_location_holds_no_global_slot() -> None:
    limits = Limits(
        LimitSettings(concurrency=2, meta_per_location=2, blob_per_location=1, burst_per_location=1)
    )

    async def scenario() -> float:
        release = asyncio.Event()

        async def blob() -> None:
            async with limits.slot("blob", "a"):
                await release.wait()

        blobs = [asyncio.create_task(blob()) for _ in range(10)]
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def meta() -> float:
            return loop.time() - t0

        waited = await asyncio.wait_for(limits.call("meta", "b", meta), 1)
        release.set()
        await asyncio.gather(*blobs)
        return waited

    # One blob runs at "a"; nine wait for "a" without taking the second global slot.
    assert asyncio.run(scenario()) < 0.5
