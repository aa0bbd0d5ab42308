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

Beyond the :class:`Target` protocol a store may have *optional abilities*, each a
small runtime-checkable protocol of its own (:class:`ReferrersApiProbe`,
:class:`ReferrersListing`, :class:`ReferrersIndexKeeper`, :class:`RepositoryProbe`,
:class:`CountsRequests`, :class:`UploadCanceller`, :class:`CatalogLister`).
Callers find them with ``isinstance`` (as oras-go finds ``registry.Mounter`` by
type assertion), never by looking a method up by its name: a store that lacks
an ability simply does not pass the check, and a third backend learns from this
module what it may implement.  :func:`abilities_of` answers all the checks once
per target (``isinstance`` against a protocol costs a lookup per member).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, fields
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


@dataclass(slots=True)
class RequestStats:
    """Counters of requests a store sent, by kind, plus retries and bytes.

    Every attempt counts (a retried request counts twice under its kind and once
    under ``retries``).  ``token`` counts requests to a token server.  Kinds a
    store never sends stay 0.  ``rate_limit_pauses`` and ``rate_limit_paused_ms``
    are not requests: how often, and for how long in all, requests to the store
    were held back because its quota headers said too few requests remained
    (``limits.min-remaining``; the ``registry.rate_limit_paused`` log event).
    """

    manifest_get: int = 0
    manifest_head: int = 0
    manifest_put: int = 0
    manifest_delete: int = 0
    blob_head: int = 0
    blob_get: int = 0
    blob_upload_start: int = 0
    blob_upload_status: int = 0
    blob_upload_cancel: int = 0
    blob_patch: int = 0
    blob_put: int = 0
    blob_mount: int = 0
    referrers: int = 0
    tags: int = 0
    catalog: int = 0
    ping: int = 0
    token: int = 0
    #: Attempts by ``(kind, status class)``: ``2xx``... ``5xx``, ``none`` when no
    #: answer came (stores that speak HTTP; the service metrics).  Not a counter
    #: :meth:`as_dict` returns.
    answers: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rate_limit_pauses: int = 0
    rate_limit_paused_ms: int = 0

    def add(self, kind: str, n: int = 1) -> None:
        """Add ``n`` to counter ``kind`` (unknown kinds are ignored)."""
        if kind in _STAT_FIELDS:
            setattr(self, kind, getattr(self, kind) + n)

    def answered(self, kind: str, status: int | None) -> None:
        """Count one attempt of ``kind`` by the class of its HTTP ``status`` (None: no answer)."""
        key = (kind, f"{status // 100}xx" if status is not None else "none")
        self.answers[key] = self.answers.get(key, 0) + 1

    def as_dict(self) -> dict[str, int]:
        """All counters as a plain dict (for metrics and logs); ``answers`` is not among them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "answers"}


_STAT_FIELDS = frozenset(f.name for f in fields(RequestStats))
#: Counters of :class:`RequestStats` that are not requests (left out of request totals).
NOT_REQUESTS = frozenset(
    {"retries", "bytes_sent", "bytes_received", "rate_limit_pauses", "rate_limit_paused_ms"}
)


@runtime_checkable
class Target(Protocol):
    """One storage location: a registry host or an OCI image layout."""

    @property
    def display(self) -> str:
        """Human name of the location (``docker.io``, ``ocidir://./out``)."""
        ...

    @property
    def is_local(self) -> bool:
        """True when asking the store costs no request (a directory on disk).

        The engine then probes freely (``blob_exists`` before any upload) instead
        of inferring presence to save round trips.
        """
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

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Delete a manifest by digest, and its entry in its subject's referrers index.

        ``update_referrers=False`` leaves a client-kept referrers index (a
        registry's fallback tag) alone: the caller deletes many referrers of
        one subject and updates that index once
        (:meth:`ReferrersIndexKeeper.unlist_referrers`).  Stores whose listing
        follows their content (the referrers API, a layout's scan) ignore it.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...


# ---------------------------------------------------------------------- abilities


@runtime_checkable
class ReferrersApiProbe(Protocol):
    """A store that can say whether it serves the OCI referrers API."""

    async def referrers_api_supported(self, repository: str) -> bool:
        """True when ``repository`` answers the referrers API (asked once, cached).

        Its listings are then derived by the store from each manifest's own
        ``subject``: a listed referrer needs no check of its subject.
        """
        ...


@runtime_checkable
class ReferrersListing(Protocol):
    """A store that can say cheaply which referrers it lists for a subject."""

    async def listed_referrers(self, repository: str, subject: Descriptor) -> frozenset[str]:
        """Digests the store lists as referrers of ``subject`` (API or fallback index).

        The store stored that listing only with every manifest it names present
        (distribution refuses an index naming a missing manifest), so a caller
        may take a listed referrer as present, as a present index vouches for
        its children.
        """
        ...


@runtime_checkable
class ReferrersIndexKeeper(Protocol):
    """A store whose referrers index the client maintains (the fallback tag schema)."""

    async def ensure_referrers_listed(
        self, repository: str, subject: Descriptor, referrers: Sequence[Descriptor]
    ) -> list[str]:
        """Add the present ``referrers`` the index lacks, in one update; their digests.

        A no-op (``[]``) where the store lists referrers by itself.
        """
        ...

    async def unlist_referrers(
        self, repository: str, subject: Descriptor, digests: Collection[str]
    ) -> int:
        """Remove ``digests`` from ``subject``'s index in one update; the number removed.

        The index is deleted when it becomes empty.  A no-op (0) where the store
        lists referrers by itself.
        """
        ...


@runtime_checkable
class RepositoryProbe(Protocol):
    """A store that can tell, in one request, that a repository does not exist yet."""

    async def repository_is_new(self, repository: str) -> bool:
        """True when the store does not know ``repository`` (nothing there to ask about)."""
        ...


@runtime_checkable
class CountsRequests(Protocol):
    """A store that counts the requests it sends."""

    @property
    def stats(self) -> RequestStats:
        """Its live counters."""
        ...


@runtime_checkable
class UploadCanceller(Protocol):
    """A store whose upload sessions outlive a process and can be cancelled."""

    async def cancel_upload(self, location: str) -> None:
        """Cancel the upload session at ``location`` (failures are ignored)."""
        ...


@runtime_checkable
class CatalogLister(Protocol):
    """A store that can list its repositories."""

    async def catalog(self) -> list[str]:
        """Every repository name, sorted."""
        ...


@dataclass(frozen=True, slots=True)
class Abilities:
    """Which optional abilities one target has (see the module doc)."""

    referrers_api_probe: ReferrersApiProbe | None
    referrers_listing: ReferrersListing | None
    referrers_index: ReferrersIndexKeeper | None
    repository_probe: RepositoryProbe | None
    request_counter: CountsRequests | None
    upload_canceller: UploadCanceller | None
    catalog: CatalogLister | None


def abilities_of(target: Target) -> Abilities:
    """Check every optional ability of ``target`` once."""
    return Abilities(
        referrers_api_probe=target if isinstance(target, ReferrersApiProbe) else None,
        referrers_listing=target if isinstance(target, ReferrersListing) else None,
        referrers_index=target if isinstance(target, ReferrersIndexKeeper) else None,
        repository_probe=target if isinstance(target, RepositoryProbe) else None,
        request_counter=target if isinstance(target, CountsRequests) else None,
        upload_canceller=target if isinstance(target, UploadCanceller) else None,
        catalog=target if isinstance(target, CatalogLister) else None,
    )
