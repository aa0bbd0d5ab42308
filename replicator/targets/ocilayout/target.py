"""The OCI image layout target: a directory on disk that speaks the Target protocol.

Layout (OCI image-spec, "image layout")::

    PATH/oci-layout          {"imageLayoutVersion": "1.0.0"}
    PATH/index.json          an image index: the tags and the other listed manifests
    PATH/blobs/<alg>/<hex>   every blob and every manifest, named by its digest

This module composes the parts and holds the manifest, tag, referrers and
delete logic: ``files.py`` (paths, opening, safety checks), ``index_store.py``
(``index.json`` updates), ``entries.py`` (what an entry says, listing rules),
``blobs.py`` and ``tempfiles.py`` (verified, resumable blob storage),
``manifests.py`` (verified manifest reads).

One layout holds many repositories with one shared blob store (tag naming in
``entries.py``).  Digests are not scoped by repository: a blob or manifest
present for one repository is present for all, so
:meth:`OCILayoutTarget.mount_blob` is true whenever the blob exists.

Guarantees beyond those of the parts:

* ``referrers`` is the union of the listed manifests whose ``subject`` is the
  given digest (each parsed once per target) and the entries of the referrers
  fallback tag (``sha256-<hex>``) when it holds a valid index; a fallback tag
  holding anything else is ignored with a warning.
* ``delete_manifest`` removes the entries of that digest for the repository
  (its tags, and untagged entries), removes it from its subject's fallback
  index when there is one, and deletes the manifest file when no entry and no
  listed index still needs it.  Config and layer blobs are left in place:
  there is no garbage collection of blobs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for, verify_bytes
from replicator.oci.manifest import MAX_MANIFEST_SIZE, build_index, parse_manifest
from replicator.oci.reference import referrers_tag
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    UploadProgress,
)
from replicator.targets.ocilayout import entries as ent
from replicator.targets.ocilayout.blobs import BlobStore
from replicator.targets.ocilayout.files import LayoutFiles
from replicator.targets.ocilayout.index_store import IndexSnapshot, IndexStore
from replicator.targets.ocilayout.manifests import Manifests

log = structlog.get_logger(__name__)


class OCILayoutTarget:
    """An OCI image layout directory as a replication source or destination.

    ``create=True`` makes the layout when it is missing (the directory, the
    ``oci-layout`` file, an empty ``index.json``); otherwise a missing or
    malformed layout raises :class:`~replicator.errors.LayoutError` at once.
    Beyond the Target protocol it has the ``UploadCanceller`` ability (an
    abandoned temporary blob file is its upload session).  See the module
    docstrings of the package for the storage guarantees.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self._path_text = os.fspath(path)
        self._files = LayoutFiles(path, f"ocidir://{self._path_text}")
        self._files.open(create)
        self._index = IndexStore(self._files)
        self._blobs = BlobStore(self._files)
        self._manifests = Manifests(self._files)
        self._listed: tuple[IndexSnapshot, frozenset[str]] | None = None

    @property
    def display(self) -> str:
        """``ocidir://PATH`` as the user gave the path."""
        return self._files.display

    @property
    def is_local(self) -> bool:
        """A layout is a directory: asking it costs no request."""
        return True

    @property
    def path(self) -> Path:
        """The layout directory."""
        return self._files.root

    def __repr__(self) -> str:
        return f"OCILayoutTarget({self._path_text!r})"

    def _not_found(self, repository: str, reference: str) -> NotFoundError:
        where = f"{repository}:{reference}" if repository else reference
        if ":" in reference:
            where = f"{repository}@{reference}" if repository else reference
        return NotFoundError(
            f"{where} not found in {self.display}", registry=self.display, repository=repository
        )

    # ------------------------------------------------------------------- blobs

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when a file of the right size exists under the blob's digest."""
        return self._blobs.has(desc)

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest's bytes are in the blob store — and a referrer is listed.

        A referrer is found only through a listing (an ``index.json`` entry, or its
        subject's fallback index), so its bytes alone do not make it present: a
        writer killed between storing them and listing them leaves such bytes, and
        the next copy must push it (which lists it).  Any other manifest counts
        listed or not: the index or tag above it is what reaches it.
        """
        if not self._blobs.has(desc):
            return False
        info = await self._manifests.info(desc.digest, desc.media_type, quiet=True)
        if info is None or info.subject is None:
            return True
        if desc.digest in await self._listed_digests():
            return True
        fallback = await self._fallback_index(repository, info.subject)
        return fallback is not None and any(c.digest == desc.digest for c in fallback[1])

    async def _listed_digests(self) -> frozenset[str]:
        """Digests of every ``index.json`` entry (kept until the file changes)."""
        snap = await self._index.snapshot()
        if self._listed is None or self._listed[0] is not snap:
            self._listed = (snap, frozenset(str(e.get("digest")) for e in snap.entries))
        return self._listed[1]

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """The blob store is shared by all repositories: true when the blob exists."""
        return self._blobs.has(desc)

    async def push_blob(
        self,
        repository: str,
        desc: Descriptor,
        opener: BlobOpener,
        *,
        resume: UploadProgress | None = None,
        on_progress: ProgressCallback | None = None,
        chunk_size: int | None = None,
        verify: bool = True,
    ) -> BlobPushResult:
        """Store the blob ``opener`` yields, verified; ``"exists"`` if already present.

        An abandoned temporary file of this digest is continued from its size
        (``opener(offset)``), whatever ``resume`` says: the file on disk is
        the truth; a file ``resume`` names that was not continued is removed
        afterwards if abandoned.  ``on_progress`` hears the offset the write starts from,
        with the temporary file as the session ``location``.  ``chunk_size``
        is ignored, and so is ``verify``: the layout always hashes what it
        writes, so no unverified file is ever renamed into place.
        ``bytes_sent`` counts the bytes read from the source in this call.
        """
        sent = None
        if not self._blobs.has(desc):
            sent = await self._blobs.write(repository, desc, opener, on_progress)
        if resume is not None and resume.digest == desc.digest:
            # A file the journal knew that this write did not continue (another
            # writer's private one, since abandoned): not needed any more.
            await self._blobs.cancel(resume.location)
        if sent is None:
            return BlobPushResult("exists")
        log.debug("layout.blob_written", layout=self.display, digest=desc.digest, size=desc.size)
        return BlobPushResult("uploaded", bytes_sent=sent)

    async def cancel_upload(self, location: str) -> None:
        """Remove the abandoned temporary blob file ``location`` names.

        A live writer's file, a name that is not a temporary blob file of this
        layout and a file already gone are left alone (failures are ignored).
        """
        await self._blobs.cancel(location)

    def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream a blob from ``offset`` in 1 MiB chunks.

        The file size must match ``desc.size``.  Read from 0, the bytes are
        hashed and the last chunk is yielded only after the digest verified.
        """
        return self._blobs.read(repository, desc, offset)

    # --------------------------------------------------------------- manifests

    async def _find_tag(self, repository: str, tag: str) -> dict[str, Any] | None:
        name = ent.ref_name_for(repository, tag)
        for entry in await self._index.entries():
            if ent.entry_ref_name(entry) == name:
                return entry
        return None

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor of the manifest a tag (of ``repository``) or a digest names.

        By digest the manifest file must exist; its media type and
        ``artifactType`` come from an ``index.json`` entry, failing that from
        parsing the manifest (with the entry rule of ``entries.py``).
        """
        if ":" not in reference:
            ent.check_tag(reference)
            entry = await self._find_tag(repository, reference)
            if entry is None:
                raise self._not_found(repository, reference)
            return ent.public_descriptor(entry)
        size = self._blobs.size(reference)
        if size is None:
            raise self._not_found(repository, reference)
        for entry in await self._index.entries():
            if entry.get("digest") == reference:
                public = ent.public_descriptor(entry)
                if public.size != size:
                    raise IntegrityError(
                        f"{self.display}: manifest {reference} has {size} bytes on disk, "
                        f"index.json says {public.size}"
                    )
                return Descriptor(
                    media_type=public.media_type,
                    digest=reference,
                    size=size,
                    artifact_type=public.artifact_type,
                )
        info = await self._parse_unlisted(repository, reference, size)
        return Descriptor(
            media_type=info.media_type, digest=reference, size=size, artifact_type=info.listed_type
        )

    async def _parse_unlisted(self, repository: str, digest: str, size: int) -> ent.ManifestInfo:
        try:
            if size > MAX_MANIFEST_SIZE:
                raise InputError("too large for a manifest")
            raw = await self._manifests.read(digest, size, repository)
            return self._manifests.remember(digest, raw, None)
        except InputError:
            raise NotFoundError(
                f"{digest} in {self.display} is not a manifest",
                registry=self.display,
                repository=repository,
            ) from None

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and its exact bytes, verified against the digest."""
        desc = (
            reference
            if isinstance(reference, Descriptor)
            else await self.resolve(repository, reference)
        )
        raw = await self._manifests.read(desc.digest, desc.size, repository)
        return desc, raw

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Store ``raw`` (verified against ``desc``) and list it in ``index.json``.

        ``defer_referrers`` is ignored: a layout finds referrers by their
        ``subject``, so listing the manifest is all a referrer needs.

        With tags, each tag's entry is replaced; without, the manifest is
        listed untagged unless some entry already lists it.  Pushing an index
        drops the untagged entries of its children that are not referrers.
        """
        for tag in tags:
            ent.check_tag(tag)
        try:
            verify_bytes(raw, desc.digest, desc.size)
        except IntegrityError as exc:
            raise IntegrityError(f"{self.display}: manifest push refused: {exc.message}") from None
        info = self._manifests.remember(desc.digest, raw, desc.media_type)
        if not self._blobs.has(desc):
            await self._blobs.write(repository, desc, _opener_of(raw))
        for child in info.children:  # learn whether untagged children are referrers
            await self._manifests.info(child, quiet=True)
        names = tuple(ent.ref_name_for(repository, t) for t in tags)
        await self._index.update(
            ent.listing_mutation(desc.digest, info, names, self._manifests.infos)
        )
        log.debug(
            "layout.manifest_pushed",
            layout=self.display,
            repository=repository,
            digest=desc.digest,
            tags=list(tags),
        )
        return PushResult(
            descriptor=Descriptor(
                media_type=info.media_type,
                digest=desc.digest,
                size=desc.size,
                artifact_type=info.artifact_type,
                annotations=info.annotations,
            ),
            referrers_updated=info.subject is not None,
        )

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` of ``repository`` at the manifest ``desc`` (stored if missing)."""
        await self.push_manifest(repository, desc, raw, (tag,))

    async def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` only, sorted (referrers fallback tags included)."""
        found: set[str] = set()
        for entry in await self._index.entries():
            name = ent.entry_ref_name(entry)
            if name is None:
                continue
            tag = ent.tag_of_ref_name(repository, name)
            if tag is not None:
                found.add(tag)
        return sorted(found)

    # --------------------------------------------------------------- referrers

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``desc``: listed ones and the fallback tag's.

        Each descriptor carries the referrer's ``artifactType`` (the referrers
        API rule: its own, else its config media type) and annotations.
        """
        found: dict[str, Descriptor] = {}
        for entry in list(await self._index.entries()):
            digest = entry.get("digest")
            media_type = entry.get("mediaType")
            if not isinstance(digest, str) or digest in found:
                continue
            if not isinstance(media_type, str) or not mediatype.is_manifest(media_type):
                continue
            info = await self._manifests.info(digest, media_type)
            if info is None or info.subject != desc.digest:
                continue
            found[digest] = Descriptor(
                media_type=info.media_type,
                digest=digest,
                size=info.size,
                artifact_type=info.artifact_type,
                annotations=info.annotations,
            )
        fallback = await self._fallback_index(repository, desc.digest)
        for child in fallback[1] if fallback else []:
            found.setdefault(child.digest, child)
        result = list(found.values())
        if artifact_type is not None:
            result = [d for d in result if d.artifact_type == artifact_type]
        return result

    async def _fallback_index(
        self, repository: str, subject: str
    ) -> tuple[str, list[Descriptor]] | None:
        """The fallback tag of ``subject`` in ``repository`` and its entries, if valid."""
        tag = referrers_tag(subject)
        entry = await self._find_tag(repository, tag)
        if entry is None:
            return None
        digest = str(entry.get("digest"))
        try:
            raw = await self._manifests.read(digest, None, repository)
            manifest = parse_manifest(raw, None)
        except (NotFoundError, IntegrityError, InputError, LayoutError) as exc:
            log.warning("layout.fallback_tag_ignored", layout=self.display, tag=tag, error=str(exc))
            return None
        if not manifest.is_index:
            log.warning(
                "layout.fallback_tag_ignored",
                layout=self.display,
                tag=tag,
                error=f"it holds {manifest.media_type}, not an index",
            )
            return None
        return tag, list(manifest.children())

    # ------------------------------------------------------------------ delete

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Delete a manifest: its entries here, its fallback entry, then its file.

        ``update_referrers`` is moot here: a layout finds referrers by scanning
        its entries' subjects, so there is no separate index to keep.

        Removes this repository's tags of the digest and every untagged entry
        of it; the file goes when no other entry and no listed index needs it.
        Config and layer blobs are left (no garbage collection).
        """
        digest = desc.digest
        if self._blobs.size(digest) is None:
            raise self._not_found(repository, digest)
        await anyio.to_thread.run_sync(self._files.check_blob_dir, digest)  # a link: refused
        info = await self._manifests.info(digest, desc.media_type)
        await self._index.update(ent.unlisting_mutation(repository, digest))
        if info is not None and info.subject is not None:
            await self._drop_from_fallback(repository, info.subject, digest)
        if await self._still_needed(digest):
            log.info("layout.manifest_unlisted", layout=self.display, digest=digest)
            return
        await anyio.to_thread.run_sync(self._files.remove_blob, digest)
        log.info("layout.manifest_deleted", layout=self.display, digest=digest)

    async def _still_needed(self, digest: str) -> bool:
        for entry in await self._index.entries():
            other = entry.get("digest")
            if other == digest:
                return True
            media_type = entry.get("mediaType")
            if (
                isinstance(other, str)
                and isinstance(media_type, str)
                and mediatype.is_index(media_type)
            ):
                info = await self._manifests.info(other, media_type)
                if info is not None and digest in info.children:
                    return True
        return False

    async def _drop_from_fallback(self, repository: str, subject: str, digest: str) -> None:
        found = await self._fallback_index(repository, subject)
        if found is None:
            return
        tag, children = found
        remaining = [c for c in children if c.digest != digest]
        if len(remaining) == len(children):
            return
        if not remaining:
            await self._index.update(ent.untag_mutation(ent.ref_name_for(repository, tag)))
            return
        raw = build_index(remaining)
        await self.push_manifest(repository, descriptor_for(raw, mediatype.OCI_INDEX), raw, (tag,))

    async def aclose(self) -> None:
        """Nothing to release: files are opened per call."""
        self._manifests.clear()


def _opener_of(data: bytes) -> BlobOpener:
    """A BlobOpener over bytes in memory (a manifest being stored)."""

    async def open_at(offset: int) -> AsyncIterator[bytes]:
        yield data[offset:]

    return open_at
