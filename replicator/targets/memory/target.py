"""The memory store's manifests, tags, referrers and optional abilities.

:class:`MemoryTarget` completes :class:`~replicator.targets.memory.store.MemoryStore`
into a :class:`~replicator.targets.base.Target` (see the package doc for the
guarantees).  ``MemoryTarget(...)`` returns an instance of a subclass composed of
exactly the abilities asked for, so that ``isinstance`` checks see them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, ClassVar, cast

import anyio
import structlog

from replicator.errors import InputError, IntegrityError, NotFoundError, ReferenceError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor, validate_digest
from replicator.oci.digest import descriptor_for, verify_bytes
from replicator.oci.manifest import Manifest, build_index, parse_manifest
from replicator.oci.reference import TAG_RE, referrers_tag
from replicator.targets.base import PushResult
from replicator.targets.memory.store import MemoryStore, StoredManifest, Write

log = structlog.get_logger("replicator.targets.memory")


def _check_reference(reference: str) -> None:
    """A well-formed digest, or a tag of the tag grammar; else ReferenceError."""
    if ":" in reference:
        try:
            validate_digest(reference)
        except InputError as exc:
            raise ReferenceError(exc.message) from None
    elif not TAG_RE.fullmatch(reference):
        raise ReferenceError(f"invalid tag {reference[:80]!r}")


class MemoryTarget(MemoryStore):
    """A registry in memory (the package doc states its guarantees).

    ``name`` is its display (use it as the endpoints' location).  ``referrers_api``:
    it serves the referrers API, else it keeps fallback indexes (and is a
    ``ReferrersIndexKeeper``).  ``repository_probe``, ``catalog``, ``upload_cancel``:
    the abilities of those names.  ``mounts``: cross-repository mounts succeed.
    Uploads without ``chunk_size`` up to ``monolithic_max`` bytes go in one ``PUT``,
    others in ``PATCH`` requests of ``chunk_size``; reads yield ``read_chunk`` bytes.
    """

    _composed: ClassVar[dict[tuple[type, ...], type[MemoryTarget]]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> MemoryTarget:
        if cls is not MemoryTarget:
            return super().__new__(cls)
        bases: list[type] = [] if kwargs.get("referrers_api", False) else [_ReferrersIndex]
        bases += [mixin for flag, mixin in _OPTIONAL.items() if kwargs.get(flag, True)]
        key = (*bases, MemoryTarget)
        composed = cls._composed.get(key)
        if composed is None:
            composed = cast("type[MemoryTarget]", type("MemoryTarget", key, {}))
            cls._composed[key] = composed
        return super().__new__(composed)

    def __init__(
        self,
        name: str = "memory",
        *,
        referrers_api: bool = False,
        repository_probe: bool = True,
        catalog: bool = True,
        upload_cancel: bool = True,
        mounts: bool = True,
        is_local: bool = False,
        monolithic_max: int = 32 * 1024 * 1024,
        chunk_size: int = 32 * 1024 * 1024,
        read_chunk: int = 64 * 1024,
    ) -> None:
        del repository_probe, catalog, upload_cancel  # chosen by __new__
        super().__init__(
            name,
            mounts=mounts,
            monolithic_max=monolithic_max,
            chunk_size=chunk_size,
            read_chunk=read_chunk,
        )
        self.referrers_api, self._local = referrers_api, is_local
        self._probed: set[str] = set()
        self._new: set[str] = set()  # found new: this client knows every fallback tag there
        self._listed: set[str] = set()  # tags listed once for the fallback listings
        self._index_locks: dict[tuple[str, str], anyio.Lock] = {}

    @property
    def display(self) -> str:
        """The name given at construction."""
        return self.name

    @property
    def is_local(self) -> bool:
        """As configured (default False: asking costs a request, as at a registry)."""
        return self._local

    async def aclose(self) -> None:
        """Nothing to release."""

    def restart_client(self) -> None:
        """Forget the referrers API answers, the repositories found new, the tag listings."""
        super().restart_client()
        self._probed.clear()
        self._new.clear()
        self._listed.clear()

    # ------------------------------------------------------------ manifests

    def _lookup(self, repository: str, reference: str) -> tuple[str, StoredManifest]:
        repo = self.repo(repository)
        digest = reference if ":" in reference else repo.tags.get(reference)
        stored = repo.manifests.get(digest) if digest is not None else None
        if digest is None or stored is None:
            raise self._error(repository, f"manifest {reference} not found", "MANIFEST_UNKNOWN")
        return digest, stored

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Media type, digest and size of a manifest named by tag or digest (``manifest_head``)."""
        _check_reference(reference)
        await self._request("manifest_head", repository, reference)
        digest, stored = self._lookup(repository, reference)
        return Descriptor(stored.manifest.media_type, digest, len(stored.raw))

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The descriptor and exact bytes, verified against the digest (``manifest_get``)."""
        expected = reference if isinstance(reference, Descriptor) else None
        ref = reference.digest if isinstance(reference, Descriptor) else reference
        _check_reference(ref)
        await self._request("manifest_get", repository, ref)
        digest, stored = self._lookup(repository, ref)
        self.stats.add("bytes_received", len(stored.raw))
        try:
            verify_bytes(stored.raw, digest, expected.size if expected is not None else None)
        except IntegrityError as exc:
            raise IntegrityError(f"{self.name}/{repository}: {exc.message}") from None
        found = Descriptor(stored.manifest.media_type, digest, len(stored.raw))
        return expected or found, stored.raw

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest is in ``repository`` (one ``manifest_head``)."""
        await self._request("manifest_head", repository, desc.digest)
        return desc.digest in self.repo(repository).manifests

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Store ``raw`` by digest (one ``PUT``) or under each tag (one ``PUT`` each).

        A manifest with a ``subject`` is listed at once by the referrers API;
        without it, its subject's fallback index is updated unless ``defer_referrers``.
        """
        for tag in tags:
            _check_reference(tag)
        verify_bytes(raw, desc.digest, desc.size)
        for reference in tags or (desc.digest,):
            manifest = await self._put(repository, reference, desc, raw)
        if manifest.subject is None or (defer_referrers and not self.referrers_api):
            return PushResult(desc)
        if not self.referrers_api:
            await self._index_change(repository, manifest.subject.digest, [manifest.descriptor])
        return PushResult(desc, referrers_updated=True)

    async def _put(self, repository: str, reference: str, desc: Descriptor, raw: bytes) -> Manifest:
        """One manifest ``PUT``: parsed, checked for what it names, stored, tagged."""
        await self._request("manifest_put", repository, reference)
        self.stats.add("bytes_sent", len(raw))
        try:
            manifest = parse_manifest(raw, desc.media_type)
        except InputError as exc:
            raise self._error(repository, exc.message, "MANIFEST_INVALID") from None
        repo = self.repo(repository)
        missing = [b.digest for b in manifest.blobs() if b.digest not in repo.blobs]
        missing += [c.digest for c in manifest.children() if c.digest not in repo.manifests]
        if missing:
            message = f"{desc.digest} names {missing[0]}, which is not in the repository"
            raise self._error(repository, message, "MANIFEST_BLOB_UNKNOWN")
        repo = self.repos.setdefault(repository, repo)
        if desc.digest not in repo.manifests:
            repo.manifests[desc.digest] = StoredManifest(raw, manifest)
            self.writes.append(Write("manifest", repository, desc.digest))
        if reference != desc.digest:
            repo.tags[reference], repo.named = desc.digest, True
            self.writes.append(Write("tag", repository, desc.digest, reference))
        return manifest

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` at the manifest ``raw`` (one ``PUT`` by tag, no referrers bookkeeping)."""
        _check_reference(tag)
        verify_bytes(raw, desc.digest, desc.size)
        await self._put(repository, tag, desc, raw)

    async def tags(self, repository: str) -> list[str]:
        """The repository's tags, sorted; ``NAME_UNKNOWN`` before its first tag."""
        await self._request("tags", repository)
        repo = self.repo(repository)
        if not repo.named:
            raise self._error(repository, "repository not known", "NAME_UNKNOWN")
        return sorted(repo.tags)

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Delete by digest (its tags go too), then unlist it from its subject's fallback index.

        With ``update_referrers`` and no referrers API the manifest is read first to
        learn its subject, as the registry target does.
        """
        subject: Descriptor | None = None
        if update_referrers and not self.referrers_api:
            _, raw = await self.fetch_manifest(repository, desc.digest)
            subject = parse_manifest(raw, desc.media_type).subject
        await self._request("manifest_delete", repository, desc.digest)
        self._remove(repository, desc.digest)
        if subject is not None:
            await self._index_change(repository, subject.digest, remove={desc.digest})

    def _remove(self, repository: str, digest: str) -> None:
        repo = self.repo(repository)
        if repo.manifests.pop(digest, None) is None:
            raise self._error(repository, f"manifest {digest} not found", "MANIFEST_UNKNOWN")
        for tag in [t for t, d in repo.tags.items() if d == digest]:
            del repo.tags[tag]
        self.writes.append(Write("delete", repository, digest))

    # ------------------------------------------------------------ referrers

    async def _api_supported(self, repository: str) -> bool:
        """Whether the referrers API is served; the first question per repository is a request."""
        if repository not in self._probed:
            self._probed.add(repository)
            await self._request("referrers", repository, mt.EMPTY_JSON_DIGEST)
        return self.referrers_api

    async def _listing(self, repository: str, subject: str, *, listing: bool) -> list[Descriptor]:
        """The API's listing (from ``subject`` fields; one request) or the fallback index's."""
        if not self.referrers_api:
            return (await self._index_read(repository, subject, listing=listing))[1]
        await self._request("referrers", repository, subject)
        manifests = self.repo(repository).manifests.values()
        return [
            s.manifest.descriptor
            for s in manifests
            if s.manifest.subject is not None and s.manifest.subject.digest == subject
        ]

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """The API's listing, else the fallback index's entries as stored (they can be anything).

        The first listing of a repository asks the API (one ``referrers``); without
        it the repository's tags are listed once (one ``tags``) and a fallback tag
        is read (one ``manifest_get``) only where it exists.
        """
        if repository not in self._probed and not self.referrers_api:
            await self._api_supported(repository)
        self._probed.add(repository)
        found = await self._listing(repository, desc.digest, listing=True)
        return [d for d in found if artifact_type in (None, d.artifact_type)]

    async def referrers_api_supported(self, repository: str) -> bool:
        """Whether this store serves the referrers API (one request per repository)."""
        return await self._api_supported(repository)

    async def listed_referrers(self, repository: str, subject: Descriptor) -> frozenset[str]:
        """Digests listed for ``subject``: the API's listing, else the fallback index's."""
        await self._api_supported(repository)
        found = await self._listing(repository, subject.digest, listing=False)
        return frozenset(d.digest for d in found)

    async def _index_read(
        self, repository: str, subject: str, *, listing: bool = False
    ) -> tuple[str | None, list[Descriptor]]:
        """The fallback index (digest, entries) of ``subject``; (None, []) if absent or no index.

        As the registry target reads it: in a repository found new, from what this
        client wrote (no request); for a listing, only a tag that exists (the
        repository's tags listed once); otherwise with one ``manifest_get``.
        """
        tag, known = referrers_tag(subject), repository in self._new
        if listing and not known and repository not in self._listed:
            self._listed.add(repository)
            await self._request("tags", repository)
        digest = self.repo(repository).tags.get(tag)
        if not known and (digest is not None or not listing):
            try:
                digest = (await self.fetch_manifest(repository, tag))[0].digest
            except NotFoundError:
                return None, []
        stored = self.repo(repository).manifests.get(digest) if digest is not None else None
        if stored is None or stored.manifest.media_type != mt.OCI_INDEX:
            if stored is not None:
                log.warning("memory.fallback_index_ignored", target=self.name, tag=tag)
            return None, []
        return digest, stored.manifest.children()

    async def _index_change(
        self,
        repository: str,
        subject: str,
        add: Sequence[Descriptor] = (),
        remove: Collection[str] = (),
    ) -> tuple[list[str], int]:
        """One read-modify-write of ``subject``'s fallback index, serialised per subject.

        Adds the ``add`` entries it lacks, drops ``remove``; writes nothing when
        nothing changes; deletes the replaced index (or the index once empty).
        Returns the digests added and the number removed.
        """
        async with self._index_locks.setdefault((repository, subject), anyio.Lock()):
            old, entries = await self._index_read(repository, subject)
            listed = {e.digest for e in entries}
            added: list[Descriptor] = []
            for d in add:
                if d.digest not in listed:
                    listed.add(d.digest)
                    added.append(d)
            kept = [e for e in [*entries, *added] if e.digest not in remove]
            removed = len(entries) + len(added) - len(kept)
            if not added and not removed:
                return [], 0
            new: str | None = None
            if kept:
                raw = build_index(kept)
                new = (desc := descriptor_for(raw, mt.OCI_INDEX)).digest
                await self._put(repository, referrers_tag(subject), desc, raw)
            if old is not None and old != new:
                await self._request("manifest_delete", repository, old)
                if old in self.repo(repository).manifests:
                    self._remove(repository, old)
            return [d.digest for d in added if d.digest not in remove], removed


class _ReferrersIndex(MemoryTarget):
    """A store without the referrers API: the client keeps its fallback indexes."""

    async def ensure_referrers_listed(
        self, repository: str, subject: Descriptor, referrers: Sequence[Descriptor]
    ) -> list[str]:
        """Add the present ``referrers`` the index lacks, in one update; their digests."""
        present = [r for r in referrers if r.digest in self.repo(repository).manifests]
        if not present or await self._api_supported(repository):
            return []
        return (await self._index_change(repository, subject.digest, add=present))[0]

    async def unlist_referrers(
        self, repository: str, subject: Descriptor, digests: Collection[str]
    ) -> int:
        """Remove ``digests`` from the index in one update (deleted once empty); how many."""
        if not digests or await self._api_supported(repository):
            return 0
        return (await self._index_change(repository, subject.digest, remove=set(digests)))[1]


class _RepositoryProbe(MemoryTarget):
    """The ``RepositoryProbe`` ability."""

    async def repository_is_new(self, repository: str) -> bool:
        """True until the repository's first tag (``tags/list`` answers ``NAME_UNKNOWN``)."""
        await self._request("tags", repository)
        new = not self.repo(repository).named
        if new:
            self._new.add(repository)
        return new


class _Catalog(MemoryTarget):
    """The ``CatalogLister`` ability."""

    async def catalog(self) -> list[str]:
        """Every repository holding something, sorted (one ``catalog`` request)."""
        await self._request("catalog", None)
        return sorted(self.repos)


class _UploadCancel(MemoryTarget):
    """The ``UploadCanceller`` ability."""

    async def cancel_upload(self, location: str) -> None:
        """Cancel the session at ``location`` (one ``DELETE``; failures ignored)."""
        await self._drop_session(location)


#: Constructor flag -> the subclass that gives its ability.
_OPTIONAL: dict[str, type[MemoryTarget]] = {
    "repository_probe": _RepositoryProbe,
    "catalog": _Catalog,
    "upload_cancel": _UploadCancel,
}
