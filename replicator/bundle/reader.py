""":class:`BundleSource`: a verified bundle as a read-only Target, the source of an import.

The engine imports from it as from any source, with all its guarantees: it
reads manifests and blobs straight from the parts by offset (no unpacking),
each verified against its digest as it streams.  Referrers are listed from
``bundle.json``'s ``subject`` records — which verification checked against the
manifests themselves — so the source has the referrers API ability (a listing
is trusted without reading each referrer).

An incremental bundle's source also has the *base* it relies on: what the base
holds lies at the destination already (the import checked it first), so a
manifest or blob the bundle leaves out is read from the destination, where the
base's content list places it (:class:`BaseAtDestination`) — a blob needed in a
repository of the destination other than the one holding it travels from there,
verified like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from replicator.bundle.model import BundleDocument, Content
from replicator.bundle.spans import read_spans, stream_spans
from replicator.errors import LayoutError, NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier, verify_bytes
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    Target,
    UploadProgress,
)


@dataclass(frozen=True, slots=True)
class BaseAtDestination:
    """Where an incremental bundle's base lies: the destination target and its repository names."""

    target: Target
    content: Content
    #: The destination repository of a bundle repository.
    repository: Callable[[str], str]


class BundleSource:
    """A bundle read through the Target protocol (see the module doc).

    Read only: every write raises :class:`~replicator.errors.LayoutError`.
    Build it from a document :func:`~replicator.bundle.verify.verify_bundle`
    found sound.
    """

    def __init__(
        self, directory: Path, document: BundleDocument, base: BaseAtDestination | None = None
    ) -> None:
        self.directory = directory
        self.document = document
        self.base = base

    @property
    def display(self) -> str:
        """``bundle DIR``."""
        return f"bundle {self.directory}"

    @property
    def is_local(self) -> bool:
        """A directory on disk."""
        return True

    @property
    def location(self) -> str:
        """The location key of this bundle as a source."""
        return f"ocidir://{self.directory}#{self.document.id}"

    async def referrers_api_supported(self, repository: str) -> bool:
        """Listings come from verified ``subject`` records: trusted as the API's would be."""
        return True

    # -------------------------------------------------------------- manifests

    def _manifest_desc(self, repository: str, digest: str) -> Descriptor | None:
        content = self.document.content
        if content.holds_manifest(repository, digest):
            record = content.manifests[digest]
        elif self.base is not None and self.base.content.holds_manifest(repository, digest):
            record = self.base.content.manifests[digest]
        else:
            return None
        return Descriptor(
            record.media_type, digest, record.size, artifact_type=record.artifact_type
        )

    def _not_found(self, repository: str, reference: str) -> NotFoundError:
        return NotFoundError(
            f"{repository}:{reference} not found in {self.display}",
            registry=self.display,
            repository=repository,
        )

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """A tag of ``repository`` in the bundle, or a manifest it (or its base) holds there."""
        digest = reference
        if ":" not in reference:
            repo = self.document.content.repositories.get(repository)
            found = repo.tags.get(reference) if repo is not None else None
            if found is None:
                raise self._not_found(repository, reference)
            digest = found
        desc = self._manifest_desc(repository, digest)
        if desc is None:
            raise self._not_found(repository, digest)
        return desc

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The manifest's exact bytes, verified: from the parts, else from the base."""
        digest = reference.digest if isinstance(reference, Descriptor) else reference
        desc = await self.resolve(repository, digest)
        if self.document.content.holds_manifest(repository, desc.digest):
            spans = self.document.spans[desc.digest]
            raw = await anyio.to_thread.run_sync(read_spans, self.directory, spans)
            verify_bytes(raw, desc.digest, desc.size)
            return desc, raw
        assert self.base is not None
        return await self.base.target.fetch_manifest(self.base.repository(repository), desc)

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the bundle holds the manifest for ``repository``."""
        return self.document.content.holds_manifest(repository, desc.digest)

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests of ``repository`` whose subject is ``desc``: the bundle's and the base's.

        The base's are listed only when the bundle holds a referrer of them
        (so the import walks down to it); the others are at the destination.
        """
        digests = self.document.content.referrers_of(repository, desc.digest)
        if self.base is not None:
            digests += [
                d
                for d in self.base.content.referrers_of(repository, desc.digest)
                if d not in digests and self._leads_to_bundle(repository, d)
            ]
        out = []
        for digest in digests:
            found = self._manifest_desc(repository, digest)
            if found is not None and (
                artifact_type is None or found.artifact_type == artifact_type
            ):
                out.append(found)
        return out

    def _leads_to_bundle(self, repository: str, digest: str) -> bool:
        """True when some referrer the bundle holds sits (transitively) on ``digest``."""
        assert self.base is not None
        seen = set()
        todo = [digest]
        while todo:
            subject = todo.pop()
            if subject in seen:
                continue
            seen.add(subject)
            if self.document.content.referrers_of(repository, subject):
                return True
            todo.extend(self.base.content.referrers_of(repository, subject))
        return False

    async def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` in the bundle, sorted."""
        repo = self.document.content.repositories.get(repository)
        return sorted(repo.tags) if repo is not None else []

    # ------------------------------------------------------------------ blobs

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the bundle holds the blob."""
        return self.document.content.holds_blob(desc.digest)

    def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream a blob from the parts (read from 0: verified before its last chunk)."""
        content = self.document.content
        if content.holds_blob(desc.digest):
            return self._stream(desc, offset)
        if self.base is not None and self.base.content.holds_blob(desc.digest):
            home = self.base.content.blob_home(desc.digest, repository) or repository
            return self.base.target.fetch_blob(self.base.repository(home), desc, offset)
        raise NotFoundError(
            f"blob {desc.digest} not found in {self.display}",
            registry=self.display,
            repository=repository,
        )

    async def _stream(self, desc: Descriptor, offset: int) -> AsyncIterator[bytes]:
        spans = self.document.spans[desc.digest]
        verifier = DigestVerifier(desc.digest, desc.size) if offset == 0 else None
        held: bytes | None = None
        async for chunk in stream_spans(self.directory, spans, offset):
            if held is not None:
                yield held
            if verifier is not None:
                verifier.update(chunk)
            held = chunk
        if verifier is not None:
            verifier.verify()
        if held is not None:
            yield held

    # ----------------------------------------------------------------- writes

    def _read_only(self) -> LayoutError:
        return LayoutError(f"{self.display} is read only")

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
        """Refused: read only."""
        raise self._read_only()

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Never mounts (read only)."""
        return False

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Refused: read only."""
        raise self._read_only()

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Refused: read only."""
        raise self._read_only()

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Refused: read only."""
        raise self._read_only()

    async def aclose(self) -> None:
        """Nothing to release: files are opened per read."""
