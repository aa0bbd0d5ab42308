"""Referrers of a manifest: the OCI 1.1 API, and the tag-schema fallback.

:class:`ReferrersSupport` answers "which manifests have ``subject`` = X" for a
registry, and keeps the fallback index (tag ``<alg>-<hex>``) up to date when a
registry without the referrers API receives or loses a manifest with a
``subject``.

Guarantees:

* Whether a repository's registry has the referrers API is learned once (a
  ``404`` on the API means no) and cached per repository.
* Fallback index updates are serialised per (repository, subject) inside the
  process, skip duplicates, and leave no orphan: the index they replace is
  deleted by digest (when the registry allows deletes).  Updates of one
  subject's index that wait for each other are coalesced: whoever holds the
  lock applies every pending addition and removal in one read-modify-write (one
  ``GET`` and one ``PUT`` for all of them), and each caller returns once the
  write that carried its own change is done (or fails with it).
* A fallback tag that does not hold a valid image index counts as "no
  referrers" (with a warning), never as an error.
* Without the API, a repository's tags are listed once per run (when the
  listing fits in ``_TAG_LIST_PAGES`` pages) and only the fallback tags that
  exist are read: nodes without referrers (most of a graph) cost no request.
* In a repository the registry reported as new (:meth:`mark_new`, from the
  copy engine's probe at the start of a run), this process is taken to be the
  only writer of its fallback tags for the rest of the run: an index it has not
  written yet is known absent and one it wrote is known by its last write, so
  the read of the read-modify-write costs no request.  Elsewhere every update
  reads the index first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from yarl import URL

from replicator.errors import (
    AuthenticationError,
    DeniedError,
    InputError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
    ReplicatorError,
)
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest, build_index
from replicator.oci.mediatype import EMPTY_JSON_DIGEST, OCI_INDEX
from replicator.oci.reference import referrers_tag
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.transport import RequestSpec, Transport

if TYPE_CHECKING:
    from replicator.targets.registry.client import RegistryTarget

log = structlog.get_logger("replicator.registry.referrers")

_MAX_INDEX_SIZE = 4 * 1024 * 1024


def pull_scopes(repository: str) -> list[str]:
    """Token scopes for reading ``repository``."""
    return [f"repository:{repository}:pull"]


def parse_next_link(values: list[str]) -> str | None:
    """The target of the ``rel="next"`` entry of ``Link`` header values, if any."""
    for value in values:
        for part in _split_links(value):
            target, _, params = part.partition(";")
            target = target.strip()
            if not (target.startswith("<") and target.endswith(">")):
                continue
            for param in params.split(";"):
                name, _, val = param.strip().partition("=")
                if name.strip().lower() == "rel" and "next" in val.strip().strip('"').split():
                    return target[1:-1]
    return None


def _split_links(value: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(value):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p for p in (part.strip() for part in parts) if p]


def index_entries(raw: bytes) -> list[Descriptor] | None:
    """Descriptors listed by an image index, or ``None`` when ``raw`` is not one.

    Malformed entries are dropped; every kept one retains its JSON object.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    media_type = data.get("mediaType")
    if media_type is not None and media_type != OCI_INDEX:
        return None
    manifests = data.get("manifests")
    if not isinstance(manifests, list):
        return None
    out: list[Descriptor] = []
    for entry in manifests:
        try:
            out.append(Descriptor.from_json(entry))
        except InputError:
            continue
    return out


#: Pages of a repository's tag listing worth reading to skip fallback-tag lookups.
_TAG_LIST_PAGES = 3


class _Unsupported(Exception):
    """The referrers API answered 404 (``cacheable``: the answer speaks for the registry)."""

    def __init__(self, cacheable: bool) -> None:
        super().__init__("referrers API unsupported")
        self.cacheable = cacheable


@dataclass(eq=False, slots=True)
class _Change:
    """One pending change of a fallback index: add a descriptor or remove a digest.

    ``added``: the index lacked the descriptor, and the write put it in;
    ``removed``: the index listed the digest, and the write took it out.
    """

    add: Descriptor | None
    remove: str | None
    done: bool = False
    error: BaseException | None = None
    added: bool = False
    removed: bool = False


class ReferrersSupport:
    """Referrers reading and fallback-index maintenance for one registry target."""

    def __init__(self, target: RegistryTarget, transport: Transport) -> None:
        self._target = target
        self._transport = transport
        self._api: dict[str, bool] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pending: dict[tuple[str, str], list[_Change]] = {}
        self._probes: dict[str, asyncio.Lock] = {}
        # Repositories reported new, and the fallback indexes written there since.
        self._new_repos: set[str] = set()
        self._written: dict[tuple[str, str], tuple[Descriptor, list[Descriptor]] | None] = {}
        # Tags of a repository from one listing (None: not listed, or not usable).
        self._tag_sets: dict[str, set[str] | None] = {}
        self._tag_locks: dict[str, asyncio.Lock] = {}

    def mark_new(self, repository: str) -> None:
        """The registry reported ``repository`` new: its fallback tags are ours to know."""
        self._new_repos.add(repository)

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
                    None,
                    self._api_url(repository, EMPTY_JSON_DIGEST, None),
                )
            except _Unsupported as exc:
                if exc.cacheable:
                    self._api[repository] = False
                return False
            self._api[repository] = True
            return True

    def _probe_lock(self, repository: str) -> asyncio.Lock:
        """Held while a repository's API support is being learned: one request asks."""
        lock = self._probes.get(repository)
        if lock is None:
            lock = self._probes[repository] = asyncio.Lock()
        return lock

    def _api_url(self, repository: str, digest: str, artifact_type: str | None) -> URL:
        query = {"artifactType": artifact_type} if artifact_type else None
        return self._transport.repo_url(repository, f"referrers/{digest}", query)

    # -- listing ---------------------------------------------------------------------------

    async def find(
        self, repository: str, desc: Descriptor, artifact_type: str | None
    ) -> list[Descriptor]:
        """Referrers of ``desc`` in ``repository``, optionally of one artifact type.

        While API support is unknown, one listing at a time asks the API (its
        answer teaches whether the repository has it); concurrent listings of
        the same repository wait for that answer instead of each asking.
        """
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
        found = await self._from_tag(repository, desc.digest)
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
                log.debug(
                    "registry.referrers.no_api",
                    host=self._transport.host,
                    repository=repository,
                )
            return None
        self._api[repository] = True
        return found

    async def _from_api(
        self, repository: str, digest: str, artifact_type: str | None
    ) -> list[Descriptor]:
        url: URL | None = self._api_url(repository, digest, artifact_type)
        out: list[Descriptor] = []
        seen_urls: set[str] = set()
        pages = 0
        while url is not None:
            pages += 1
            seen_urls.add(str(url))
            entries, next_url = await self._api_page(repository, digest, artifact_type, url)
            out.extend(entries)
            if next_url is None:
                break
            if str(next_url) in seen_urls:
                raise protocol_error(
                    self._transport.host,
                    repository,
                    f"referrers of {digest}: the next-page link loops to a page already read",
                )
            if pages >= self._transport.options.max_pages:
                raise protocol_error(
                    self._transport.host,
                    repository,
                    f"referrers of {digest}: more than {pages} pages; giving up",
                )
            url = next_url
        if artifact_type:
            # Filtering is optional for registries: always apply it here too.
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    async def _api_page(
        self, repository: str, digest: str, artifact_type: str | None, url: URL
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
                self._transport.host,
                repository,
                f"referrers of {digest}: the answer is not an image index",
                status=reply.status,
            )
        link = parse_next_link(reply.headers.getall("Link", []))
        next_url: URL | None = None
        if link:
            candidate = self._transport.resolve(reply.url, link)
            if not self._transport.is_own_origin(candidate):
                log.warning(
                    "registry.referrers.foreign_link",
                    host=self._transport.host,
                    repository=repository,
                )
            else:
                next_url = candidate
        return entries, next_url

    async def _from_tag(self, repository: str, digest: str) -> list[Descriptor]:
        tags = await self._tags(repository)
        if tags is not None and referrers_tag(digest) not in tags:
            return []  # no fallback tag: nothing to read
        current = await self._read_fallback(repository, digest)
        return current[1] if current is not None else []

    async def _tags(self, repository: str) -> set[str] | None:
        """The repository's tags from one listing per run, or None when not known.

        Without the referrers API every node's referrers are read from its
        fallback tag, and most nodes have none (signatures, platform manifests):
        one 404 each.  One tag listing per repository tells which fallback tags
        exist, so only those are read.  A listing longer than
        ``_TAG_LIST_PAGES`` pages, or one the registry refuses, is not used (the
        tags are then read one by one, as without it).  The set follows this
        run's own fallback-index writes; tags someone else pushes during the run
        are not seen.
        """
        if repository in self._tag_sets:
            return self._tag_sets[repository]
        lock = self._tag_locks.setdefault(repository, asyncio.Lock())
        async with lock:
            if repository in self._tag_sets:
                return self._tag_sets[repository]
            try:
                tags = await self._target.tags_within(repository, _TAG_LIST_PAGES)
            except ReplicatorError as exc:
                log.debug(
                    "registry.referrers.tag_list_unused",
                    host=self._transport.host,
                    repository=repository,
                    error=str(exc),
                )
                tags = None
            known = set(tags) if tags is not None else None
            self._tag_sets[repository] = known
            return known

    def _tag_written(self, repository: str, tag: str, *, present: bool) -> None:
        """Keep a listed tag set true to this run's own writes."""
        known = self._tag_sets.get(repository)
        if known is not None:
            if present:
                known.add(tag)
            else:
                known.discard(tag)

    async def _read_fallback(
        self, repository: str, digest: str
    ) -> tuple[Descriptor, list[Descriptor]] | None:
        """The fallback index (descriptor and entries), or None when absent or invalid."""
        tag = referrers_tag(digest)
        try:
            desc, raw = await self._target.fetch_manifest(repository, tag)
        except NotFoundError:
            return None
        entries = index_entries(raw) if desc.media_type == OCI_INDEX else None
        if entries is None:
            log.warning(
                "registry.referrers.invalid_fallback",
                host=self._transport.host,
                repository=repository,
                tag=tag,
                media_type=desc.media_type,
            )
            return None
        return desc, entries

    async def listed(self, repository: str, subject: str) -> frozenset[str]:
        """Digests ``repository`` lists as referrers of ``subject``, read directly.

        With the referrers API, its listing; otherwise the fallback index
        itself (no tag listing first: this is asked about subjects known to
        have referrers), or this run's own last write in a repository it found
        new (no request).
        """
        if await self.api_supported(repository):
            return frozenset(d.digest for d in await self._from_api(repository, subject, None))
        current = await self._current(repository, subject)
        return frozenset(e.digest for e in current[1]) if current is not None else frozenset()

    # -- maintenance -----------------------------------------------------------------------

    async def after_push(self, repository: str, manifest: Manifest) -> bool:
        """Make a pushed manifest with a subject findable; True when done."""
        subject = manifest.subject
        if subject is None:
            return False
        if await self.api_supported(repository):
            return True
        await self._update(repository, subject.digest, add=manifest.descriptor)
        return True

    async def ensure_listed(
        self, repository: str, subject: str, referrers: Sequence[Descriptor]
    ) -> list[str]:
        """Add to ``subject``'s fallback index those of ``referrers`` it lacks (their digests)."""
        if not referrers or await self.api_supported(repository):
            return []
        # One read-modify-write: entries already listed change nothing, and
        # when none is missing the index is not written.
        changes = [_Change(r, None) for r in referrers]
        await self._apply_changes(repository, subject, changes)
        return [c.add.digest for c in changes if c.added and c.add is not None]

    async def unlist(self, repository: str, subject: str, digests: Sequence[str]) -> int:
        """Remove ``digests`` from ``subject``'s fallback index in one update; how many went."""
        if not digests or await self.api_supported(repository):
            return 0
        changes = [_Change(None, d) for d in dict.fromkeys(digests)]
        await self._apply_changes(repository, subject, changes)
        return sum(1 for c in changes if c.removed)

    async def after_delete(self, repository: str, digest: str, subject_digest: str) -> None:
        """Drop a deleted referrer from its subject's fallback index (no-op with the API)."""
        if await self.api_supported(repository):
            return
        await self._update(repository, subject_digest, remove=digest)

    def _lock(self, repository: str, subject: str) -> asyncio.Lock:
        key = (repository, subject)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _update(
        self,
        repository: str,
        subject: str,
        *,
        add: Descriptor | None = None,
        remove: str | None = None,
    ) -> None:
        await self._apply_changes(repository, subject, [_Change(add, remove)])

    async def _apply_changes(self, repository: str, subject: str, changes: list[_Change]) -> None:
        """Queue ``changes`` together and return once the write carrying them is done."""
        key = (repository, subject)
        self._pending.setdefault(key, []).extend(changes)
        try:
            async with self._lock(repository, subject):
                if not all(c.done for c in changes):
                    await self._apply_pending(repository, subject)
        finally:
            # Cancelled before its write: what was not applied must not be later.
            pending = self._pending.get(key, [])
            for c in changes:
                if not c.done and c in pending:
                    pending.remove(c)
        for c in changes:
            if c.error is not None:
                raise c.error

    async def _current(
        self, repository: str, subject: str
    ) -> tuple[Descriptor, list[Descriptor]] | None:
        """The subject's fallback index now: this run's last write in a new repository
        (no request), else read from the registry."""
        if repository in self._new_repos:
            return self._written.get((repository, subject))
        return await self._read_fallback(repository, subject)

    async def _apply_pending(self, repository: str, subject: str) -> None:
        """Under the subject's lock: apply every pending change in one read-modify-write.

        The changes are taken after the read, so those queued while it was in
        flight join this write.  Every change taken is marked done (with the
        write's error, if any); a cancelled write hands them back to the queue,
        for the next lock holder.
        """
        key = (repository, subject)
        current = await self._current(repository, subject)
        batch = self._pending.pop(key, [])
        try:
            written = await self._write(repository, subject, current, batch)
        except Exception as exc:
            for c in batch:
                c.done, c.error = True, exc
            return
        except BaseException:
            self._pending.setdefault(key, [])[:0] = batch
            raise
        if repository in self._new_repos:
            self._written[key] = written
        for c in batch:
            c.done = True

    async def _write(
        self,
        repository: str,
        subject: str,
        current: tuple[Descriptor, list[Descriptor]] | None,
        batch: list[_Change],
    ) -> tuple[Descriptor, list[Descriptor]] | None:
        """Apply ``batch`` to ``current``; the index as it now is (None: no index)."""
        old_desc, entries = current if current is not None else (None, [])
        new_entries = list(entries)
        for c in batch:
            if c.add is not None:
                if not any(e.digest == c.add.digest for e in new_entries):
                    new_entries.append(c.add)
                    c.added = True
            else:
                kept = [e for e in new_entries if e.digest != c.remove]
                c.removed = len(kept) != len(new_entries)
                new_entries = kept
        if [e.digest for e in new_entries] == [e.digest for e in entries]:
            return current
        tag = referrers_tag(subject)
        if new_entries:
            raw = build_index(new_entries)
            new_digest = await self._target.put_manifest_bytes(repository, tag, raw, OCI_INDEX)
            self._tag_written(repository, tag, present=True)
            written = (Descriptor(OCI_INDEX, new_digest, len(raw)), new_entries)
            log.debug(
                "registry.referrers.index_updated",
                host=self._transport.host,
                repository=repository,
                tag=tag,
                entries=len(new_entries),
                changes=len(batch),
            )
            if old_desc is not None and old_desc.digest != new_digest:
                await self._drop_index(repository, old_desc.digest)
            return written
        if old_desc is not None:
            await self._drop_index(repository, old_desc.digest)
            self._tag_written(repository, tag, present=False)
        return None

    async def _drop_index(self, repository: str, digest: str) -> None:
        try:
            await self._target.delete_manifest_digest(repository, digest)
        except NotFoundError:
            pass
        except RegistryError as exc:
            log.info(
                "registry.referrers.stale_index_kept",
                host=self._transport.host,
                repository=repository,
                digest=digest,
                reason=exc.code or exc.status,
            )
