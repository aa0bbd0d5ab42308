"""Blob movement: each blob made present at each destination once, by the cheapest way.

For one blob and the destinations that need it, :meth:`BlobMover.copy` decides
per destination *location* (registry host or layout) who leads: the first
repository of a location to claim the blob makes it present there — known from
the ledger, mounted from a repository of the same location known to hold it (or
from the source repository when source and destination share a registry),
found by a probe (``blob_exists``: always on local stores, on registries only
for blobs of at least ``probe_threshold`` bytes), or uploaded.  Uploads of the
leaders of one call share one source read (:class:`~replicator.engine.transfer.BlobTee`).
Every other repository of that location *follows*: it waits for the lead, then
mounts from it, and uploads itself only if that fails.  Leads are taken before
the first await, so no registry receives the same bytes twice in a run.

Uploads hold a ``blob`` slot at the source and every destination location.
Chunked uploads record their acknowledged offset in the ledger after every
chunk (a killed run resumes the session), and park at the next acknowledged
chunk when a graceful stop is requested.  Every blob is verified on the way:
the source stream holds its last chunk back until the digest matched.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio
import structlog

from replicator.engine.context import RunContext
from replicator.engine.jobs import DependencyFailed, Endpoint
from replicator.engine.ledger import Confirmation
from replicator.engine.once import Once
from replicator.engine.state import LocationBlob, cell, dest_node, settle
from replicator.engine.transfer import BlobTee, reading_opener
from replicator.errors import ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import BlobOpener, UploadProgress

_log = structlog.get_logger("replicator.engine")

#: Blobs up to this size may go in one request (the registry target's monolithic
#: limit); a larger one is always uploaded in chunks.
UNCHUNKED_MAX = 32 * 1024 * 1024


class BlobMover:
    """Copies blobs to destinations, each once per run (see the module doc)."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._state = ctx.state

    def cell(self, d: Endpoint, digest: str) -> Once:
        """The outcome cell of blob ``digest`` at ``d`` (awaited by the manifests naming it)."""
        return cell(self._state.blobs, dest_node(d.key, digest))

    async def copy(
        self, src: Endpoint, blob: Descriptor, dests: list[Endpoint], *, lost: bool = False
    ) -> None:
        """Make ``blob`` present at each of ``dests`` that did not claim it yet.

        ``lost``: the blob belongs to a manifest the destinations hold
        (``check_blobs``): they are asked first, and a missing blob is one they lost.
        """
        mine: list[Endpoint] = []
        for d in dests:
            once = self.cell(d, blob.digest)
            if not once.claimed:
                once.claimed = True
                mine.append(d)
        if not mine:
            return
        leaders: list[Endpoint] = []
        leads: list[Once] = []
        followers: list[tuple[Endpoint, Once]] = []
        for d in mine:
            key = LocationBlob(d.location, blob.digest)
            lead = self._state.location_leads.get(key)
            if lead is None:
                lead = cell(self._state.location_leads, key)
                leads.append(lead)
                leaders.append(d)
            else:
                followers.append((d, lead))
        try:
            await self._lead(src, blob, leaders, leads, lost)
            if followers:
                async with anyio.create_task_group() as tg:
                    for d, lead in followers:
                        tg.start_soon(self._follow, src, blob, d, lead, lost)
        except ReplicatorError as exc:
            for d in mine:
                self.cell(d, blob.digest).set(error=exc)
            self._ctx.fail(f"blob {blob.digest}: {exc}", exc)
        except BaseException as exc:
            for d in mine:
                self.cell(d, blob.digest).set(error=exc)
            raise
        finally:
            for d, lead in zip(leaders, leads, strict=True):
                settle(self._state.location_leads, LocationBlob(d.location, blob.digest), lead)
            for d in mine:
                once = self.cell(d, blob.digest)
                if not once.done:
                    once.set(error=DependencyFailed(f"blob {blob.digest} did not reach {d}"))

    async def _lead(
        self,
        src: Endpoint,
        blob: Descriptor,
        leaders: list[Endpoint],
        leads: list[Once],
        lost: bool,
    ) -> None:
        """Make the blob present where this call leads, then release the followers."""
        uploads: list[Endpoint] = []
        for d in leaders:
            if not await self._known_or_cheap(src, blob, d, lost):
                uploads.append(d)
        if uploads:
            await self._upload(src, blob, uploads, lost)
        for lead in leads:
            lead.set()

    async def _known_or_cheap(
        self, src: Endpoint, blob: Descriptor, d: Endpoint, lost: bool = False
    ) -> bool:
        """True when the blob is now at ``d`` without sending it: ledger, mount or probe.

        A blob that may have been ``lost`` is asked about before any mount.
        """
        if await self._ctx.ledger.lookup(d.location, d.repository, blob.digest) is not None:
            self.done(d, blob, "exists")
            return True
        if lost:
            return await self._probe(blob, d, always=True) or await self._try_mount(
                src, blob, d, lost=True
            )
        if await self._try_mount(src, blob, d):
            return True
        return await self._probe(blob, d)

    async def _follow(
        self, src: Endpoint, blob: Descriptor, d: Endpoint, lead: Once, lost: bool = False
    ) -> None:
        """Another repository of ``d``'s location leads this blob: wait, then mount from it."""
        try:
            if await self._ctx.ledger.lookup(d.location, d.repository, blob.digest) is not None:
                self.done(d, blob, "exists")
                return
            await lead.wait()
            if not await self._known_or_cheap(src, blob, d, lost):
                await self._upload(src, blob, [d], lost)
        except ReplicatorError as exc:
            self.done(d, blob, "", error=exc)
            self._ctx.fail(f"blob {blob.digest} to {d}: {exc}", exc)

    def done(
        self, d: Endpoint, blob: Descriptor, how: str, error: BaseException | None = None
    ) -> None:
        """Settle the blob's cell at ``d`` and count it (``how``: exists, mounted, uploaded)."""
        key = dest_node(d.key, blob.digest)
        once = cell(self._state.blobs, key)
        if error is not None:
            once.set(error=error)
            return
        settle(self._state.blobs, key, once, how)
        report = self._ctx.report
        if how == "exists":
            report.blobs_skipped += 1
        elif how == "mounted":
            report.blobs_mounted += 1
        else:
            report.blobs_uploaded += 1
        self._ctx.observer.blob_finished(blob, how, str(d))

    async def _confirm(self, d: Endpoint, blob: Descriptor, how: str) -> None:
        await self._ctx.ledger.record(
            Confirmation("blob", how, d.location, d.repository, blob.digest, blob.size)  # type: ignore[arg-type]
        )
        self.done(d, blob, how)

    async def _try_mount(
        self, src: Endpoint, blob: Descriptor, d: Endpoint, *, lost: bool = False
    ) -> bool:
        """Mount from a repository of the same location that holds the blob."""
        candidates = [
            r for r in await self._ctx.ledger.locate(d.location, blob.digest) if r != d.repository
        ]
        if src.location == d.location and src.repository != d.repository:
            candidates.append(src.repository)
        if candidates and self._ctx.options.plan:
            self._ctx.planned(
                "mount", str(d), blob.digest, blob.size, detail="lost" if lost else None
            )
            await self._confirm(d, blob, "mounted")
            return True
        for repo in dict.fromkeys(candidates):
            try:
                mounted = await self._ctx.limited(
                    "meta", d.location, partial(d.target.mount_blob, d.repository, blob, repo)
                )
            except ReplicatorError as exc:
                _log.debug("engine.mount_failed", destination=str(d), source=repo, error=str(exc))
                continue
            if mounted:
                await self._confirm(d, blob, "mounted")
                return True
        return False

    async def _probe(self, blob: Descriptor, d: Endpoint, *, always: bool = False) -> bool:
        """Ask whether the blob is there when it is cheap (local) or worth it (large)."""
        worth = d.target.is_local or blob.size >= self._ctx.options.probe_threshold
        if not (always or worth):
            return False
        exists = await self._ctx.limited(
            "meta", d.location, lambda: d.target.blob_exists(d.repository, blob)
        )
        if exists:
            await self._confirm(d, blob, "exists")
        return exists

    async def _upload(
        self, src: Endpoint, blob: Descriptor, dests: list[Endpoint], lost: bool = False
    ) -> None:
        """Stream the blob from the source to every destination, reading it once."""
        if self._ctx.options.plan:
            detail = "lost" if lost else None
            for d in dests:
                self._ctx.planned("upload", str(d), blob.digest, blob.size, detail=detail)
                await self._confirm(d, blob, "uploaded")
            return
        self._ctx.observer.blob_started(blob, len(dests))
        locations = [src.location, *(d.location for d in dests)]
        signals = {loc: self._ctx.signals[loc] for loc in locations if loc in self._ctx.signals}
        async with self._ctx.limits.slot("blob", *locations, signals=signals):
            if len(dests) == 1:
                await self.push_one(dests[0], blob, self.source_opener(src, blob))
            else:
                await self._fan_out(src, blob, dests)

    async def resend(self, src: Endpoint, blob: Descriptor, d: Endpoint) -> bool:
        """Upload ``blob`` to ``d`` again (the destination lost it); True when it arrived."""
        async with self._ctx.limits.slot("blob", src.location, d.location):
            return await self.push_one(d, blob, self.source_opener(src, blob))

    def source_opener(self, src: Endpoint, blob: Descriptor) -> BlobOpener:
        """An opener reading ``blob`` from the source, counting the bytes read."""
        return reading_opener(src.target, src.repository, blob, self._bytes_reader(blob))

    def _bytes_reader(self, blob: Descriptor) -> Callable[[int], None]:
        def on_bytes(n: int) -> None:
            self._ctx.report.bytes_read += n
            self._ctx.observer.blob_advanced(blob, n)

        return on_bytes

    async def push_one(self, d: Endpoint, blob: Descriptor, opener: BlobOpener) -> bool:
        """Upload one blob to one destination; True when confirmed (failures are recorded)."""
        stop = self._ctx.stop
        if stop.stopping:
            await anyio.sleep_forever()  # no new uploads once a stop was requested
        ledger = self._ctx.ledger
        resume = await ledger.upload_progress(d.location, d.repository, blob.digest)
        chunk = self._ctx.options.chunk_size
        chunked = bool(chunk and blob.size > chunk) or blob.size > UNCHUNKED_MAX
        parked = False

        async def progress(p: UploadProgress) -> None:
            nonlocal parked
            # A blob sent in one request has nothing to resume: its session is
            # recorded (so a rerun can cancel one a kill left open) without
            # holding up the upload for a commit.
            await ledger.record_progress(d.location, p, durable=chunked)
            if p.offset == 0 and chunked:
                # A session that will carry many bytes is made durable before the
                # first one is sent: a killed run knows it (to resume or cancel it).
                await ledger.flush()
            if stop.stopping and p.offset > 0 and not parked:
                # A chunk was just acknowledged and recorded: pause here for the stop.
                parked = True
                stop.leave_push()
                await anyio.sleep_forever()

        stop.enter_push()
        try:
            res = await d.target.push_blob(
                d.repository,
                blob,
                opener,
                resume=resume,
                on_progress=progress,
                chunk_size=chunk if chunk and blob.size > chunk else None,
                # The opener streams a fetch_blob read (itself or teed), which
                # verifies the digest before its last chunk: no second hashing.
                verify=False,
            )
        except ReplicatorError as exc:
            if exc.side is None:
                exc.side = "destination"
            self.done(d, blob, "", error=exc)
            self._ctx.fail(f"blob {blob.digest} to {d}: {exc}", exc)
            return False
        finally:
            if not parked:
                stop.leave_push()
        self._ctx.report.bytes_sent += res.bytes_sent
        how = res.how if res.how in ("exists", "mounted", "uploaded") else "uploaded"
        await self._confirm(d, blob, how)
        return True

    async def _fan_out(self, src: Endpoint, blob: Descriptor, dests: list[Endpoint]) -> None:
        tee = BlobTee(
            src.target,
            src.repository,
            blob,
            len(dests),
            buffer=self._ctx.options.fanout_buffer,
            on_bytes=self._bytes_reader(blob),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(tee.pump)
            for i, d in enumerate(dests):
                tg.start_soon(self._push_teed, tee, i, d, blob)

    async def _push_teed(self, tee: BlobTee, i: int, d: Endpoint, blob: Descriptor) -> None:
        try:
            await self.push_one(d, blob, tee.opener(i))
        finally:
            tee.detach(i)
