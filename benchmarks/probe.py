"""What a registry can do on its own: the floor under any client's wall time.

Bare aiohttp loops, no product code, against a running registry:

* ``heads``   — ``n`` blob HEADs (of one existing or missing digest) at a given
  concurrency: the registry's cost per metadata request;
* ``uploads`` — ``n`` small distinct blobs uploaded monolithically (POST + PUT,
  two requests each) at a given concurrency: the registry's cost per new blob.

Comparing a tool's wall time with the probe's for the same number of requests
shows how much of the tool's time is the registry's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Wall time of ``requests`` requests made with ``concurrency`` in flight."""

    what: str
    requests: int
    concurrency: int
    wall_s: float

    @property
    def per_request_ms(self) -> float:
        """Mean wall milliseconds per request (wall / requests)."""
        return 1000.0 * self.wall_s / max(1, self.requests)


async def _run_limited(n: int, concurrency: int, one: object) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def task(i: int) -> None:
        async with sem:
            await one(i)  # type: ignore[operator]

    start = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(n)))
    return time.perf_counter() - start


async def heads(host: str, repo: str, digest: str, n: int, concurrency: int) -> ProbeResult:
    """``n`` HEAD /v2/<repo>/blobs/<digest> requests."""
    url = f"http://{host}/v2/{repo}/blobs/{digest}"
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(_: int) -> None:
            async with session.head(url) as resp:
                await resp.read()

        wall = await _run_limited(n, concurrency, one)
    return ProbeResult("blob HEAD", n, concurrency, wall)


async def uploads(host: str, repo: str, n: int, concurrency: int, size: int = 4096) -> ProbeResult:
    """``n`` distinct ``size``-byte blobs, each POST then PUT ?digest= (2n requests)."""
    blobs = [os.urandom(size) for _ in range(n)]
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int) -> None:
            data = blobs[i]
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            async with session.post(f"http://{host}/v2/{repo}/blobs/uploads/") as resp:
                await resp.read()
                location = resp.headers["Location"]
            if location.startswith("/"):
                location = f"http://{host}{location}"
            sep = "&" if "?" in location else "?"
            async with session.put(
                f"{location}{sep}digest={digest}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            ) as resp:
                await resp.read()
                if resp.status != 201:
                    raise RuntimeError(f"upload probe: PUT answered {resp.status}")

        wall = await _run_limited(n, concurrency, one)
    return ProbeResult("blob POST+PUT", 2 * n, concurrency, wall)
