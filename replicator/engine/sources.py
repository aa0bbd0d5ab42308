"""Reads from the source, each at most once per run: manifests and referrer listings.

Every part of the engine that needs a source manifest or a node's referrer
listing asks :class:`SourceReader`; the first asker does the request (inside
the source location's metadata limit) and every other one awaits the same
result.  A failed read is remembered as well, so a broken manifest is asked
for once and its error reaches each node that needs it.  Manifests are parsed
from their exact bytes; a manifest that does not parse is the source's
:class:`~replicator.errors.ProtocolError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from replicator.engine.context import RunContext
from replicator.engine.jobs import Endpoint
from replicator.engine.once import Once
from replicator.engine.state import SourceNode
from replicator.errors import InputError, ProtocolError, ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest, parse_manifest


def parse_source(raw: bytes, media_type: str | None, src: Endpoint) -> Manifest:
    """Parse a manifest read from ``src`` (a parse failure is the source's protocol error)."""
    try:
        return parse_manifest(raw, media_type)
    except InputError as exc:
        raise ProtocolError(f"{src}: {exc}", side="source") from exc


def descriptor_of(m: Manifest) -> Descriptor:
    """The plain descriptor (media type, digest, size) of a parsed manifest.

    Its digest is the manifest's own string (computed once, when it was
    parsed): a run of many roots keeps one copy of each root's digest.
    """
    return Descriptor(media_type=m.media_type, digest=m.digest, size=len(m.raw))


def source_node(src: Endpoint, digest: str) -> SourceNode:
    """The key of manifest ``digest`` at the source endpoint ``src``."""
    return SourceNode(src.location, src.repository, digest)


class SourceReader:
    """Source manifests and referrer listings, read once each (see the module doc)."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._state = ctx.state

    def seed(self, key: SourceNode, manifest: Manifest) -> None:
        """Remember a manifest read (or built) elsewhere, so it is not read again."""
        found = self._state.manifests.get(key)
        if isinstance(found, Once):
            found.set((manifest.raw, manifest.media_type))
        self._state.manifests[key] = (manifest.raw, manifest.media_type)

    def is_read(self, key: SourceNode) -> bool:
        """True when the manifest of ``key`` was read successfully already."""
        found = self._state.manifests.get(key)
        return found is not None and (not isinstance(found, Once) or found.ok)

    def is_asked(self, key: SourceNode) -> bool:
        """True when the manifest of ``key`` was asked for (read, reading, or failed)."""
        return key in self._state.manifests

    async def manifest(
        self, src: Endpoint, desc: Descriptor, key: SourceNode | None = None
    ) -> Manifest:
        """The source manifest ``desc``, fetched at most once per run.

        ``key`` (the visit's own) saves making another key for the table.  While
        a read is in flight the table holds its :class:`Once`; once it succeeded,
        just the bytes and media type.
        """
        key = key or source_node(src, desc.digest)
        found = self._state.manifests.get(key)
        if found is None:
            once = self._state.manifests[key] = Once()
            try:
                got, raw = await self._ctx.limited(
                    "meta", src.location, lambda: src.target.fetch_manifest(src.repository, desc)
                )
                manifest = parse_source(raw, got.media_type or desc.media_type, src)
            except BaseException as exc:
                once.set(error=exc)
                raise
            value = (manifest.raw, manifest.media_type)
            once.set(value)
            self._state.manifests[key] = value
            return manifest
        if isinstance(found, Once):
            error = await found.wait()
            if error is not None:
                raise error
            found = found.value
        raw, media_type = found
        return parse_source(raw, media_type, src)

    async def referrers(
        self, src: Endpoint, desc: Descriptor, key: SourceNode | None = None
    ) -> Sequence[Descriptor]:
        """The referrer listing of ``desc`` at the source, read at most once per run.

        No artifactType hint is passed: a store filtering for us would drop the
        fallback entries that lack artifactType; the engine filters itself.
        While the read is in flight the table holds its :class:`Once`; then the
        listing itself (one shared empty tuple for the many nodes without any).
        """
        key = key or source_node(src, desc.digest)
        found = self._state.referrer_lists.get(key)
        if found is None:
            once = self._state.referrer_lists[key] = Once()
            try:
                listing = await self._ctx.limited(
                    "meta", src.location, lambda: src.target.referrers(src.repository, desc)
                )
            except BaseException as exc:
                once.set(error=exc)
                raise
            value: Sequence[Descriptor] = tuple(listing) if listing else ()
            once.set(value)
            self._state.referrer_lists[key] = value
            return value
        if isinstance(found, Once):
            error = await found.wait()
            if error is not None:
                raise error
            found = found.value
        return found

    def referrers_asked(self, key: SourceNode) -> bool:
        """True when the referrers of ``key`` were asked for already."""
        return key in self._state.referrer_lists

    async def prefetch_referrers(
        self, src: Endpoint, desc: Descriptor, key: SourceNode | None = None
    ) -> None:
        """List the referrers early (cached); an error is kept for the walk to report."""
        with contextlib.suppress(ReplicatorError):
            await self.referrers(src, desc, key)

    async def prefetch_manifest(
        self, src: Endpoint, desc: Descriptor, key: SourceNode | None = None
    ) -> None:
        """Read the manifest early (cached); an error is kept for the real read."""
        with contextlib.suppress(ReplicatorError):
            await self.manifest(src, desc, key)

    async def has_referrers_api(self, src: Endpoint) -> bool:
        """True when the source serves the referrers API (its listings need no subject check)."""
        probe = self._ctx.abilities(src.target).referrers_api_probe
        if probe is None:
            return False
        try:
            return bool(await probe.referrers_api_supported(src.repository))
        except ReplicatorError:
            return False
