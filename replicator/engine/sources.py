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

from replicator.engine.context import RunContext
from replicator.engine.jobs import Endpoint
from replicator.engine.state import SourceNode, cell
from replicator.errors import InputError, ProtocolError, ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import Manifest, parse_manifest


def parse_source(raw: bytes, media_type: str | None, src: Endpoint) -> Manifest:
    """Parse a manifest read from ``src`` (a parse failure is the source's protocol error)."""
    try:
        return parse_manifest(raw, media_type)
    except InputError as exc:
        raise ProtocolError(f"{src}: {exc}", side="source") from exc


def descriptor_of(m: Manifest) -> Descriptor:
    """The plain descriptor (media type, digest, size) of a parsed manifest."""
    return descriptor_for(m.raw, m.media_type)


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
        cell(self._state.manifests, key).set((manifest.raw, manifest.media_type))

    def is_read(self, key: SourceNode) -> bool:
        """True when the manifest of ``key`` was read successfully already."""
        found = self._state.manifests.get(key)
        return found is not None and found.ok

    def is_asked(self, key: SourceNode) -> bool:
        """True when the manifest of ``key`` was asked for (read, reading, or failed)."""
        return key in self._state.manifests

    async def manifest(self, src: Endpoint, desc: Descriptor) -> Manifest:
        """The source manifest ``desc``, fetched at most once per run."""
        key = source_node(src, desc.digest)
        once = self._state.manifests.get(key)
        if once is None:
            once = cell(self._state.manifests, key)
            try:
                got, raw = await self._ctx.limited(
                    "meta", src.location, lambda: src.target.fetch_manifest(src.repository, desc)
                )
                manifest = parse_source(raw, got.media_type or desc.media_type, src)
            except BaseException as exc:
                once.set(error=exc)
                raise
            once.set((manifest.raw, manifest.media_type))
            return manifest
        error = await once.wait()
        if error is not None:
            raise error
        raw, media_type = once.value
        return parse_source(raw, media_type, src)

    async def referrers(self, src: Endpoint, desc: Descriptor) -> list[Descriptor]:
        """The referrer listing of ``desc`` at the source, read at most once per run.

        No artifactType hint is passed: a store filtering for us would drop the
        fallback entries that lack artifactType; the engine filters itself.
        """
        key = source_node(src, desc.digest)
        once = self._state.referrer_lists.get(key)
        if once is None:
            once = cell(self._state.referrer_lists, key)
            try:
                found = await self._ctx.limited(
                    "meta", src.location, lambda: src.target.referrers(src.repository, desc)
                )
                once.set(found)
            except BaseException as exc:
                once.set(error=exc)
                raise
        error = await once.wait()
        if error is not None:
            raise error
        value: list[Descriptor] = once.value
        return value

    def referrers_asked(self, key: SourceNode) -> bool:
        """True when the referrers of ``key`` were asked for already."""
        return key in self._state.referrer_lists

    async def prefetch_referrers(self, src: Endpoint, desc: Descriptor) -> None:
        """List the referrers early (cached); an error is kept for the walk to report."""
        with contextlib.suppress(ReplicatorError):
            await self.referrers(src, desc)

    async def prefetch_manifest(self, src: Endpoint, desc: Descriptor) -> None:
        """Read the manifest early (cached); an error is kept for the real read."""
        with contextlib.suppress(ReplicatorError):
            await self.manifest(src, desc)

    async def has_referrers_api(self, src: Endpoint) -> bool:
        """True when the source serves the referrers API (its listings need no subject check)."""
        probe = self._ctx.abilities(src.target).referrers_api_probe
        if probe is None:
            return False
        try:
            return bool(await probe.referrers_api_supported(src.repository))
        except ReplicatorError:
            return False
