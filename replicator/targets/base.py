"""The Target protocol: the one storage interface the graph walker and engine use.

A target is one *location*: a registry host (``registry.example:5000``) or one
OCI image layout directory.  Every call names the repository inside it, so one
target object serves many repositories and can mount between them.

Guarantees every implementation gives:

* Manifests travel as their exact bytes; ``fetch_manifest`` verifies the bytes
  against the digest it was asked for (or, for a tag, against the digest the
  store reported) and never re-serialises them.
* ``fetch_blob`` yields bytes that, when read from offset 0 to the end, were
  checked against ``desc.digest`` and ``desc.size``: the final chunk is yielded
  only after the check passed, an :class:`~replicator.errors.IntegrityError` is
  raised instead otherwise.
* ``push_blob`` and ``push_manifest`` return only after the store confirmed;
  nothing is visible under a digest whose content did not verify.
* ``push_manifest`` of a manifest with a ``subject`` makes it findable through
  ``referrers(subject)``: on a registry without the referrers API the target
  maintains the fallback tag itself (serialised per subject).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from replicator.oci.descriptor import Descriptor

#: Opens the source of a blob at a byte offset.  Targets call it again with the
#: offset the destination confirmed when an upload must be retried or resumed.
BlobOpener = Callable[[int], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """State of a chunked upload after the destination acknowledged a chunk.

    ``location`` is the upload URL the destination handed out last (opaque), and
    ``offset`` the number of bytes it confirmed.  The journal stores these so a
    killed run can continue the same upload session.
    """

    repository: str
    digest: str
    location: str
    offset: int


#: Called after each acknowledged chunk (journal seam); may be ``None``.
ProgressCallback = Callable[[UploadProgress], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a manifest push did.

    ``referrers_updated`` is true when this push made the manifest findable as a
    referrer of its subject (the registry answered ``OCI-Subject`` or the target
    updated the fallback index).
    """

    descriptor: Descriptor
    referrers_updated: bool = False


@dataclass(frozen=True, slots=True)
class BlobPushResult:
    """How a blob reached the destination: ``"exists"``, ``"mounted"`` or ``"uploaded"``.

    ``bytes_sent`` counts the bytes sent in this call (0 for exists and mounted).
    """

    how: str
    bytes_sent: int = 0


@runtime_checkable
class Target(Protocol):
    """One storage location: a registry host or an OCI image layout."""

    @property
    def display(self) -> str:
        """Human name of the location (``docker.io``, ``ocidir://./out``)."""
        ...

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor (media type, digest, size) of a manifest named by tag or digest."""
        ...

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and its exact, verified bytes."""
        ...

    def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream a blob from ``offset``; verified against ``desc`` when read from 0."""
        ...

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the blob is present in ``repository``."""
        ...

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest with ``desc.digest`` is present in ``repository``."""
        ...

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
        """Upload a blob whose bytes ``opener(offset)`` yields; verify; confirm.

        ``resume`` continues an upload session a previous run left (asking the
        destination for its status first); ``chunk_size`` None lets the target
        choose monolithic or chunked by size.

        ``verify=False`` tells the target that the opener's stream verifies
        itself (a ``fetch_blob`` stream: read from 0 it raises instead of
        yielding its last chunk when the digest does not match), so it need not
        hash the bytes again.  A target may still hash them, and must still
        check sizes; nothing becomes visible under ``desc.digest`` unless its
        content verified (a registry checks the digest at its closing ``PUT``).
        """
        ...

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Try a cross-repository mount; True when the blob is now present."""
        ...

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Store ``raw`` under its digest (and each tag), maintaining referrers.

        ``defer_referrers``: a store that keeps a referrers index of its own (a
        registry's fallback tag) leaves it alone for this push and says so with
        ``referrers_updated=False``; the caller lists the referrer later
        (``ensure_referrers_listed``).  Stores that need no such write ignore it.
        """
        ...

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` at an existing manifest (``raw`` are its bytes)."""
        ...

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``desc`` (API, fallback tag or scan)."""
        ...

    async def tags(self, repository: str) -> list[str]:
        """All tags of a repository, sorted."""
        ...

    async def delete_manifest(self, repository: str, desc: Descriptor) -> None:
        """Delete a manifest by digest, and its entry in its subject's fallback index."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
