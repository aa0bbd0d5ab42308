"""Referrers of a manifest: the OCI 1.1 referrers API, else the tag-schema fallback.

:class:`ReferrersSupport` answers "which manifests have ``subject`` = X" for one
registry and keeps its fallback indexes up to date when a registry without the
referrers API receives or loses a manifest with a ``subject``.  The fallback
indexes themselves are :mod:`.fallback`'s; this module decides which way a
repository goes and speaks the API.

Guarantees:

* Whether a repository's registry has the referrers API is learned once (a
  ``404`` on the API means no) and cached per repository; while it is unknown,
  one listing at a time asks, and concurrent ones wait for its answer.
* API listings follow ``Link`` pages on the registry's own origin only (a
  foreign one is ignored with a warning), never loop, stop at
  ``RegistryOptions.max_pages``; the artifact-type filter is applied here too
  (filtering is optional for registries).
* With the API, nothing is maintained by the client: the fallback calls are
  no-ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import structlog
from yarl import URL

from replicator.errors import (
    AuthenticationError,
    DeniedError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
)
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest
from replicator.oci.mediatype import EMPTY_JSON_DIGEST, OCI_INDEX
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.exchange import RequestSpec
from replicator.targets.registry.fallback import (
    Change,
    FallbackIndexes,
    IndexStore,
    TagLister,
    index_entries,
)
from replicator.targets.registry.listing import parse_next_link, pull_scopes
from replicator.targets.registry.transport import Transport

log = structlog.get_logger("replicator.registry.referrers")

_MAX_INDEX_SIZE = 4 * 1024 * 1024


class _Unsupported(Exception):
    """The referrers API answered 404 (``cacheable``: the answer speaks for the registry)."""

    def __init__(self, cacheable: bool) -> None:
        super().__init__("referrers API unsupported")
        self.cacheable = cacheable


class ReferrersSupport:
    """Referrers reading and fallback-index maintenance for one registry (see module doc)."""

    def __init__(self, transport: Transport, store: IndexStore, tags: TagLister) -> None:
        self._transport = transport
        self.fallback = FallbackIndexes(store, tags, transport.host)
        self._api: dict[str, bool] = {}
        self._probes: dict[str, anyio.Lock] = {}

    @property
    def _host(self) -> str:
        return self._transport.host

    def mark_new(self, repository: str) -> None:
        """The registry reported ``repository`` new: its fallback tags are ours to know."""
        self.fallback.mark_new(repository)

    # -- API detection ---------------------------------------------------------------------

    async def api_supported(self, repository: str) -> bool:
        """Whether the registry serves the referrers API for ``repository`` (cached)."""
        known = self._api.get(repository)
        if known is not None:
            return known
        async with self._probe_lock(repository):
            known = self._api.get(repository)
            if known is not None:
                return known
            try:
                await self._api_page(
                    repository,
                    EMPTY_JSON_DIGEST,
                    self._api_url(repository, EMPTY_JSON_DIGEST, None),
                )
            except _Unsupported as exc:
                if exc.cacheable:
                    self._api[repository] = False
                return False
            self._api[repository] = True
            return True

    def _probe_lock(self, repository: str) -> anyio.Lock:
        """Held while a repository's API support is being learned: one request asks."""
        lock = self._probes.get(repository)
        if lock is None:
            lock = self._probes[repository] = anyio.Lock()
        return lock

    def _api_url(self, repository: str, digest: str, artifact_type: str | None) -> URL:
        query = {"artifactType": artifact_type} if artifact_type else None
        return self._transport.repo_url(repository, f"referrers/{digest}", query)

    # -- listing ---------------------------------------------------------------------------

    async def find(
        self, repository: str, desc: Descriptor, artifact_type: str | None
    ) -> list[Descriptor]:
        """Referrers of ``desc`` in ``repository``, optionally of one artifact type."""
        tried = False
        if self._api.get(repository) is None:
            async with self._probe_lock(repository):
                if self._api.get(repository) is None:
                    tried = True
                    found = await self._try_api(repository, desc.digest, artifact_type)
                    if found is not None:
                        return found
        if not tried and self._api.get(repository) is not False:
            found = await self._try_api(repository, desc.digest, artifact_type)
            if found is not None:
                return found
        found = await self.fallback.find(repository, desc.digest)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    async def _try_api(
        self, repository: str, digest: str, artifact_type: str | None
    ) -> list[Descriptor] | None:
        """The API's listing, or None when the API is not served (remembered when it says so)."""
        try:
            found = await self._from_api(repository, digest, artifact_type)
        except _Unsupported as exc:
            if exc.cacheable:
                self._api[repository] = False
                log.debug("registry.referrers_api_absent", host=self._host, repository=repository)
            return None
        self._api[repository] = True
        return found

    async def _from_api(
        self, repository: str, digest: str, artifact_type: str | None
    ) -> list[Descriptor]:
        url: URL | None = self._api_url(repository, digest, artifact_type)
        out: list[Descriptor] = []
        seen: set[str] = set()
        while url is not None:
            seen.add(str(url))
            entries, url = await self._api_page(repository, digest, url)
            out.extend(entries)
            if url is None:
                break
            if str(url) in seen:
                raise protocol_error(
                    self._host,
                    repository,
                    f"referrers of {digest}: the next-page link loops to a page already read",
                )
            if len(seen) >= self._transport.options.max_pages:
                raise protocol_error(
                    self._host,
                    repository,
                    f"referrers of {digest}: more than {len(seen)} pages; giving up",
                )
        if artifact_type:
            # Filtering is optional for registries: always apply it here too.
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    async def _api_page(
        self, repository: str, digest: str, url: URL
    ) -> tuple[list[Descriptor], URL | None]:
        spec = RequestSpec(
            method="GET",
            url=url,
            kind="referrers",
            scopes=pull_scopes(repository),
            repository=repository,
            what=f"referrers of {digest}",
            ok=(200,),
            headers={"Accept": OCI_INDEX},
        )
        try:
            reply = await self._transport.request(spec, max_body=_MAX_INDEX_SIZE)
        except NotFoundError as exc:
            raise _Unsupported(cacheable=exc.code != "NAME_UNKNOWN") from None
        except (AuthenticationError, DeniedError, RateLimitedError):
            raise
        except RegistryError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                raise _Unsupported(cacheable=True) from None
            raise
        entries = index_entries(reply.body)
        if entries is None:
            raise protocol_error(
                self._host,
                repository,
                f"referrers of {digest}: the answer is not an image index",
                status=reply.status,
            )
        return entries, self._next_page(reply.headers.getall("Link", []), reply.url, repository)

    def _next_page(self, links: list[str], base: URL, repository: str) -> URL | None:
        link = parse_next_link(links)
        if not link:
            return None
        candidate = self._transport.resolve(base, link)
        if not self._transport.is_own_origin(candidate):
            log.warning(
                "registry.referrers_foreign_link_ignored", host=self._host, repository=repository
            )
            return None
        return candidate

    async def listed(self, repository: str, subject: str) -> frozenset[str]:
        """Digests ``repository`` lists as referrers of ``subject``, read directly.

        With the referrers API, its listing; otherwise the fallback index
        itself (no tag listing first: this is asked about subjects known to
        have referrers), or this run's own last write in a repository it found
        new (no request).
        """
        if await self.api_supported(repository):
            return frozenset(d.digest for d in await self._from_api(repository, subject, None))
        current = await self.fallback.current(repository, subject)
        return frozenset(e.digest for e in current[1]) if current is not None else frozenset()

    # -- maintenance -----------------------------------------------------------------------

    async def after_push(self, repository: str, manifest: Manifest) -> bool:
        """Make a pushed manifest with a subject findable; True when done."""
        subject = manifest.subject
        if subject is None:
            return False
        if await self.api_supported(repository):
            return True
        await self.fallback.update(repository, subject.digest, [Change(manifest.descriptor, None)])
        return True

    async def ensure_listed(
        self, repository: str, subject: str, referrers: Sequence[Descriptor]
    ) -> list[str]:
        """Add to ``subject``'s fallback index those of ``referrers`` it lacks (their digests)."""
        if not referrers or await self.api_supported(repository):
            return []
        # One read-modify-write: entries already listed change nothing, and
        # when none is missing the index is not written.
        changes = [Change(r, None) for r in referrers]
        await self.fallback.update(repository, subject, changes)
        return [c.add.digest for c in changes if c.added and c.add is not None]

    async def unlist(self, repository: str, subject: str, digests: Sequence[str]) -> int:
        """Remove ``digests`` from ``subject``'s fallback index in one update; how many went."""
        if not digests or await self.api_supported(repository):
            return 0
        changes = [Change(None, d) for d in dict.fromkeys(digests)]
        await self.fallback.update(repository, subject, changes)
        return sum(1 for c in changes if c.removed)

    async def after_delete(self, repository: str, digest: str, subject_digest: str) -> None:
        """Drop a deleted referrer from its subject's fallback index (no-op with the API)."""
        if await self.api_supported(repository):
            return
        await self.fallback.update(repository, subject_digest, [Change(None, digest)])
