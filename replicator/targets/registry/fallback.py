"""The referrers tag schema: fallback indexes kept by the client.

On a registry without the OCI referrers API, the referrers of a manifest are
listed in an image index tagged ``<alg>-<hex>`` after its digest.
:class:`FallbackIndexes` reads those indexes and keeps them up to date, through
two narrow protocols — :class:`IndexStore` (read, write and delete a manifest)
and :class:`TagLister` (list a repository's tags) — rather than the whole
registry target.

Guarantees:

* Updates are serialised per (repository, subject) inside the process, skip
  duplicates, and leave no orphan: the index they replace is deleted by digest
  (when the registry allows deletes).  Updates of one subject's index that wait
  for each other are coalesced: whoever holds the lock applies every pending
  addition and removal in one read-modify-write (one ``GET`` and one ``PUT``
  for all of them), and each caller returns once the write that carried its
  own change is done (or fails with it).  An index left empty is deleted, its
  tag with it.
* A fallback tag that does not hold a valid image index counts as "no
  referrers" (with a warning), never as an error.
* A repository's tags are listed once per run (when the listing fits in
  :data:`TAG_LIST_PAGES` pages) and only the fallback tags that exist are read:
  nodes without referrers (most of a graph) cost no request.  The set follows
  this process's own writes.
* In a repository the registry reported as new (:meth:`FallbackIndexes.mark_new`),
  this process is taken to be the only writer of its fallback tags for the rest
  of the run: an index it has not written yet is known absent and one it wrote
  is known by its last write, so the read of the read-modify-write costs no
  request.  Elsewhere every update reads the index first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog

from replicator.errors import InputError, NotFoundError, RegistryError, ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import build_index
from replicator.oci.mediatype import OCI_INDEX
from replicator.oci.reference import referrers_tag

log = structlog.get_logger("replicator.registry.referrers")

#: Pages of a repository's tag listing worth reading to skip fallback-tag lookups.
TAG_LIST_PAGES = 3

#: A fallback index as read or written: its descriptor and its entries.
Index = tuple[Descriptor, list[Descriptor]]


class IndexStore(Protocol):
    """Reading, writing and deleting the manifests that fallback indexes are."""

    async def fetch_manifest(self, repository: str, reference: str) -> tuple[Descriptor, bytes]:
        """The manifest at ``reference`` (tag or digest), verified; NotFoundError if absent."""
        ...

    async def put_manifest_bytes(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """Store ``raw`` under ``reference``; the digest stored."""
        ...

    async def delete_manifest_digest(self, repository: str, digest: str) -> None:
        """Delete the manifest ``digest`` (its tags go with it)."""
        ...


class TagLister(Protocol):
    """Listing a repository's tags when that takes few pages."""

    async def tags_within(self, repository: str, pages: int) -> list[str] | None:
        """The tags when the listing ends within ``pages`` pages, else None."""
        ...


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


@dataclass(eq=False, slots=True)
class Change:
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


def referrers_shaped(entries: list[Descriptor]) -> bool:
    """True when every entry looks like a referrer: an artifact type, no platform.

    An image index (a multi-platform image) lists platform manifests; a
    referrers index lists artifacts by type.  Only the latter may be deleted as
    a superseded fallback index written by someone else.
    """
    return all(e.artifact_type and e.platform is None for e in entries)


def apply_changes(entries: list[Descriptor], batch: list[Change]) -> list[Descriptor]:
    """``entries`` with ``batch`` applied (each change marked with what it did)."""
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
    return new_entries


class FallbackIndexes:
    """The fallback indexes of one registry (see module doc)."""

    def __init__(self, store: IndexStore, tags: TagLister, host: str) -> None:
        self._store = store
        self._tag_lister = tags
        self._host = host
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        self._pending: dict[tuple[str, str], list[Change]] = {}
        # Repositories reported new, and the fallback indexes written there since.
        self._new_repos: set[str] = set()
        self._written: dict[tuple[str, str], Index | None] = {}
        # Tags of a repository from one listing (None: not listed, or not usable).
        self._tag_sets: dict[str, set[str] | None] = {}
        self._tag_locks: dict[str, anyio.Lock] = {}
        # Index digests this process wrote: the only superseded ones it deletes.
        self._owned: set[str] = set()

    def mark_new(self, repository: str) -> None:
        """The registry reported ``repository`` new: its fallback tags are ours to know."""
        self._new_repos.add(repository)

    # -- reading ---------------------------------------------------------------------------

    async def find(self, repository: str, subject: str) -> list[Descriptor]:
        """The entries of ``subject``'s index (none when its tag does not exist)."""
        tags = await self._tags(repository)
        if tags is not None and referrers_tag(subject) not in tags:
            return []  # no fallback tag: nothing to read
        current = await self.read(repository, subject)
        return current[1] if current is not None else []

    async def _tags(self, repository: str) -> set[str] | None:
        """The repository's tags from one listing per run, or None when not known.

        A listing longer than :data:`TAG_LIST_PAGES` pages, or one the registry
        refuses, is not used (the tags are then read one by one, as without it).
        """
        if repository in self._tag_sets:
            return self._tag_sets[repository]
        lock = self._tag_locks.get(repository)
        if lock is None:
            lock = self._tag_locks[repository] = anyio.Lock()
        async with lock:
            if repository in self._tag_sets:
                return self._tag_sets[repository]
            try:
                tags = await self._tag_lister.tags_within(repository, TAG_LIST_PAGES)
            except ReplicatorError as exc:
                log.debug(
                    "registry.referrers_tag_list_unused",
                    host=self._host,
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

    async def read(self, repository: str, subject: str) -> Index | None:
        """The fallback index (descriptor and entries), or None when absent or invalid."""
        tag = referrers_tag(subject)
        try:
            desc, raw = await self._store.fetch_manifest(repository, tag)
        except NotFoundError:
            return None
        entries = index_entries(raw) if desc.media_type == OCI_INDEX else None
        if entries is None:
            log.warning(
                "registry.referrers_fallback_invalid",
                host=self._host,
                repository=repository,
                tag=tag,
                media_type=desc.media_type,
            )
            return None
        return desc, entries

    async def current(self, repository: str, subject: str) -> Index | None:
        """The subject's index now: this run's last write in a new repository
        (no request), else read from the registry."""
        if repository in self._new_repos:
            return self._written.get((repository, subject))
        return await self.read(repository, subject)

    # -- writing ---------------------------------------------------------------------------

    async def update(self, repository: str, subject: str, changes: Sequence[Change]) -> None:
        """Queue ``changes`` together and return once the write carrying them is done."""
        key = (repository, subject)
        self._pending.setdefault(key, []).extend(changes)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = anyio.Lock()
        try:
            async with lock:
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

    async def _apply_pending(self, repository: str, subject: str) -> None:
        """Under the subject's lock: apply every pending change in one read-modify-write.

        The changes are taken after the read, so those queued while it was in
        flight join this write.  Every change taken is marked done (with the
        write's error, if any); a cancelled write hands them back to the queue,
        for the next lock holder.
        """
        key = (repository, subject)
        current = await self.current(repository, subject)
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
        self, repository: str, subject: str, current: Index | None, batch: list[Change]
    ) -> Index | None:
        """Apply ``batch`` to ``current``; the index as it now is (None: no index)."""
        old_desc, entries = current if current is not None else (None, [])
        new_entries = apply_changes(entries, batch)
        if [e.digest for e in new_entries] == [e.digest for e in entries]:
            return current
        tag = referrers_tag(subject)
        disposable = old_desc is not None and (
            old_desc.digest in self._owned or referrers_shaped(entries)
        )
        if not new_entries:
            if old_desc is not None:
                await self._remove_tag(repository, subject, old_desc.digest, disposable)
                self._tag_written(repository, tag, present=False)
            return None
        raw = build_index(new_entries)
        new_digest = await self._store.put_manifest_bytes(repository, tag, raw, OCI_INDEX)
        self._owned.add(new_digest)
        self._tag_written(repository, tag, present=True)
        log.debug(
            "registry.referrers_index_updated",
            host=self._host,
            repository=repository,
            tag=tag,
            entries=len(new_entries),
            changes=len(batch),
        )
        if old_desc is not None and old_desc.digest != new_digest:
            if disposable:
                await self._drop_index(repository, old_desc.digest)
            else:
                self._keep_superseded(repository, tag, old_desc.digest)
        return Descriptor(OCI_INDEX, new_digest, len(raw)), new_entries

    def _keep_superseded(self, repository: str, tag: str, digest: str) -> None:
        """A superseded index that may be something else stays (untagged).

        Deleting a manifest deletes every tag on it, and the fallback tag is
        only a claim: anyone who can push a tag can point ``sha256-<subject>``
        at an image index other tags rely on.  So a superseded index is deleted
        only when this process wrote it, or when it has the shape of a
        referrers index (:func:`referrers_shaped`); another stays in the
        registry, untagged, for its garbage collection.
        """
        log.info(
            "registry.referrers_superseded_index_kept",
            host=self._host,
            repository=repository,
            tag=tag,
            digest=digest,
        )

    async def _remove_tag(
        self, repository: str, subject: str, digest: str, disposable: bool
    ) -> None:
        """Remove ``subject``'s fallback tag, deleting no manifest another tag may need.

        A ``disposable`` index (see :meth:`_keep_superseded`) is deleted with
        its tag.  Any other is left in place: the tag is first moved onto a
        marker index of its own (unique to the subject), deleted with the tag.
        """
        if disposable:
            await self._drop_index(repository, digest)
            return
        tag = referrers_tag(subject)
        marker = build_index([], annotations={"vnd.replicator.removed-referrers-of": subject})
        moved = await self._store.put_manifest_bytes(repository, tag, marker, OCI_INDEX)
        self._keep_superseded(repository, tag, digest)
        await self._drop_index(repository, moved)

    async def _drop_index(self, repository: str, digest: str) -> None:
        try:
            await self._store.delete_manifest_digest(repository, digest)
        except NotFoundError:
            pass
        except RegistryError as exc:
            log.info(
                "registry.referrers_stale_index_kept",
                host=self._host,
                repository=repository,
                digest=digest,
                reason=exc.code or exc.status,
            )
