"""The registry target: the :class:`~replicator.targets.base.Target` protocol over HTTP.

:class:`RegistryTarget` speaks the OCI distribution protocol to one registry
host.  It is a facade over parts that each own one piece of the protocol:

* :mod:`.transport` — the request path (auth, redirects, retries, error
  mapping, statistics) every other part sends through;
* :mod:`.manifests` — resolve, read, write and delete manifests;
* :mod:`.blobs` — blob presence and verified, resumable downloads;
* :mod:`.uploads` and :mod:`.sessions` — blob uploads and mounts;
* :mod:`.listing` — tags, catalog, pagination;
* :mod:`.referrers` and :mod:`.fallback` — referrers through the API or the
  tag-schema fallback the target maintains itself.

Guarantees (on top of those of the Target protocol and of each part):

* One aiohttp session (and connection pool) per target, created on first use;
  :meth:`RegistryTarget.aclose` releases it and cancels the upload sessions
  kept from failed mounts; the target can be used again afterwards.
* Every failure is one :mod:`replicator.errors` exception naming the host and
  repository, never containing a credential.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence

import structlog
from yarl import URL

from replicator.errors import InputError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import verify_bytes
from replicator.oci.manifest import Manifest, parse_manifest
from replicator.oci.reference import DOCKER_HUB_DISPLAY, DOCKER_HUB_REGISTRY
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    RequestStats,
    UploadProgress,
)
from replicator.targets.registry.auth import Authenticator
from replicator.targets.registry.auth_layer import AuthProvider
from replicator.targets.registry.blobs import BlobReader
from replicator.targets.registry.exchange import RequestSpec
from replicator.targets.registry.listing import Listings
from replicator.targets.registry.manifests import ManifestStore
from replicator.targets.registry.options import RegistryOptions
from replicator.targets.registry.referrers import ReferrersSupport
from replicator.targets.registry.sessions import UploadSessions
from replicator.targets.registry.transport import Transport
from replicator.targets.registry.uploads import Uploader

log = structlog.get_logger("replicator.registry")


class RegistryTarget:
    """A registry host (``host[:port]``) as a :class:`~replicator.targets.base.Target`.

    ``authenticator`` replaces the default :class:`~.auth.Authenticator` built
    from ``options.credentials``.
    """

    def __init__(
        self,
        host: str,
        options: RegistryOptions | None = None,
        *,
        authenticator: AuthProvider | None = None,
    ) -> None:
        self.host = host
        self.options = options or RegistryOptions()
        auth = authenticator or Authenticator(host, self.options.credentials)
        self._transport = Transport(host, self.options, auth)
        self._manifests = ManifestStore(self._transport)
        self._blobs = BlobReader(self._transport)
        self._listings = Listings(self._transport)
        self._sessions = UploadSessions(self._transport, self._blobs)
        self._uploads = Uploader(self._transport, self._sessions)
        self._referrers = ReferrersSupport(self._transport, self._manifests, self._listings)

    def __repr__(self) -> str:
        return f"RegistryTarget({self.host!r})"

    @property
    def display(self) -> str:
        """The host as users write it (``docker.io`` for Docker Hub)."""
        return DOCKER_HUB_DISPLAY if self.host == DOCKER_HUB_REGISTRY else self.host

    @property
    def is_local(self) -> bool:
        """A registry is remote: every question costs a request."""
        return False

    @property
    def stats(self) -> RequestStats:
        """Requests sent so far, by kind, with retries and bytes."""
        return self._transport.stats

    async def aclose(self) -> None:
        """Cancel upload sessions kept from failed mounts, close the connection pool."""
        try:
            await self._sessions.aclose()
        finally:
            await self._transport.aclose()

    async def __aenter__(self) -> RegistryTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- basics ----------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the host speaks the distribution API (``GET /v2/``), authenticating."""
        await self._transport.request(
            RequestSpec(
                method="GET",
                url=self._transport.url("/v2/"),
                kind="ping",
                scopes=[],
                repository=None,
                what="the API root /v2/",
                ok=(200,),
            )
        )

    async def tags(self, repository: str, *, page_size: int | None = None) -> list[str]:
        """All tags of ``repository``, sorted (pages followed up to ``options.max_pages``)."""
        return await self._listings.tags(repository, page_size=page_size)

    async def tags_within(self, repository: str, pages: int) -> list[str] | None:
        """The tags of ``repository`` when the listing ends within ``pages`` pages, else None.

        The registry's own page size is used.  A repository the registry does not
        know (``404 NAME_UNKNOWN``) has no tags.
        """
        return await self._listings.tags_within(repository, pages)

    async def repository_is_new(self, repository: str) -> bool:
        """True when the registry says ``repository`` does not exist yet.

        One ``GET tags/list?n=1``: ``404 NAME_UNKNOWN`` means the registry holds
        no tag there (distribution answers so for a repository it has never
        seen).  The copy engine uses it to push into a new repository without
        asking about each manifest first; the fallback referrers indexes of a
        new repository are then maintained without reading them back (see
        :mod:`.fallback`).
        """
        new = await self._listings.repository_is_new(repository)
        if new:
            self._referrers.mark_new(repository)
        return new

    async def catalog(self, *, page_size: int | None = None) -> list[str]:
        """All repositories the registry lists in ``/v2/_catalog``, sorted."""
        return await self._listings.catalog(page_size=page_size)

    # -- manifests -------------------------------------------------------------------------

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor of the manifest named by ``reference`` (HEAD; GET when HEAD says too little)."""
        return await self._manifests.resolve(repository, reference)

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and exact bytes, verified (see :mod:`.manifests`)."""
        return await self._manifests.fetch(repository, reference)

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest ``desc.digest`` is in ``repository`` (HEAD)."""
        return await self._manifests.exists(repository, desc)

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Store ``raw`` under its digest (or under each of ``tags``); maintain referrers.

        With ``defer_referrers`` the fallback index is not touched (see
        :meth:`ensure_referrers_listed`); a registry that acknowledged the
        subject (``OCI-Subject``) lists the referrer itself either way.
        """
        verify_bytes(raw, desc.digest, desc.size)
        manifest = self._parse(repository, desc, raw)
        subject_ack = False
        for reference in tags or (desc.digest,):
            stored = await self._manifests.put(repository, reference, raw, desc.media_type)
            subject_ack = subject_ack or stored.subject_acknowledged
        updated = False
        if manifest is not None and manifest.subject is not None:
            if subject_ack:
                updated = True
            elif not defer_referrers:
                updated = await self._referrers.after_push(repository, manifest)
        return PushResult(descriptor=desc, referrers_updated=updated)

    def _parse(self, repository: str, desc: Descriptor, raw: bytes) -> Manifest | None:
        try:
            return parse_manifest(raw, desc.media_type)
        except InputError as exc:
            log.debug(
                "registry.manifest_unparsed",
                host=self.host,
                repository=repository,
                digest=desc.digest,
                reason=str(exc),
            )
            return None

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` at the manifest ``desc`` (``raw`` are its exact bytes)."""
        verify_bytes(raw, desc.digest, desc.size)
        await self._manifests.put(repository, tag, raw, desc.media_type)

    async def put_manifest_bytes(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """PUT ``raw`` under ``reference`` (tag or digest); the digest the registry stored.

        No referrers bookkeeping: :meth:`push_manifest` is the public way in.
        """
        return await self._manifests.put_manifest_bytes(repository, reference, raw, media_type)

    async def delete_manifest_digest(self, repository: str, digest: str) -> None:
        """``DELETE`` a manifest by digest, without referrers bookkeeping."""
        await self._manifests.delete_manifest_digest(repository, digest)

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Delete a manifest by digest, and its entry in its subject's fallback index.

        ``update_referrers=False``: only the ``DELETE`` (the caller unlists the
        referrers of one subject together, :meth:`unlist_referrers`).
        """
        if not update_referrers:
            await self._manifests.delete_manifest_digest(repository, desc.digest)
            return
        _, raw = await self._manifests.fetch(repository, desc.digest)
        manifest = self._parse(repository, desc, raw)
        await self._manifests.delete_manifest_digest(repository, desc.digest)
        if manifest is not None and manifest.subject is not None:
            await self._referrers.after_delete(repository, desc.digest, manifest.subject.digest)

    # -- referrers -------------------------------------------------------------------------

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose subject is ``desc``: the referrers API, else the fallback tag."""
        return await self._referrers.find(repository, desc, artifact_type)

    async def ensure_referrers_listed(
        self, repository: str, subject: Descriptor, referrers: Sequence[Descriptor]
    ) -> list[str]:
        """Make ``referrers`` (already in ``repository``) findable under ``subject``.

        Nothing to do with the referrers API (the registry lists by ``subject``);
        otherwise one read of the fallback index (none in a repository this run
        found new) and one update adding the entries it lacks.  Returns their
        digests.
        """
        return await self._referrers.ensure_listed(repository, subject.digest, referrers)

    async def unlist_referrers(
        self, repository: str, subject: Descriptor, digests: Collection[str]
    ) -> int:
        """Remove ``digests`` from ``subject``'s fallback index in one write (see Target)."""
        return await self._referrers.unlist(repository, subject.digest, list(digests))

    async def listed_referrers(self, repository: str, subject: Descriptor) -> frozenset[str]:
        """Digests of the referrers ``repository`` lists for ``subject`` (API or fallback index).

        A registry stores an index only when every manifest it names is there
        (distribution refuses the ``PUT`` otherwise), and the referrers API lists
        only stored manifests: the copy engine takes a listed referrer as present
        instead of asking about each one.
        """
        return await self._referrers.listed(repository, subject.digest)

    async def referrers_api_supported(self, repository: str) -> bool:
        """Whether the registry serves the referrers API for ``repository`` (cached)."""
        return await self._referrers.api_supported(repository)

    # -- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the blob ``desc.digest`` is in ``repository`` (HEAD)."""
        if not await self._blobs.exists(repository, desc):
            return False
        # Present after all: a session a failed mount kept for its upload is not needed.
        await self._sessions.discard_pending(repository, desc.digest)
        return True

    def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset``, resuming broken connections with ``Range``.

        From offset 0 the stream is verified against ``desc`` and the last chunk
        is held back until it is; from another offset only the size is checked.
        """
        return self._blobs.fetch(repository, desc, offset)

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
        """Upload a blob (monolithic up to ``options.monolithic_max``, else chunked).

        Does not check for existence first: callers ask :meth:`blob_exists`.
        ``verify=False`` skips hashing the bytes on the way (sizes are still
        checked): the registry verifies the digest at the closing ``PUT``.
        """
        return await self._uploads.push(
            repository,
            desc,
            opener,
            resume=resume,
            on_progress=on_progress,
            chunk_size=chunk_size,
            verify=verify,
        )

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Cross-repository mount from ``from_repository``; True when the blob is now present.

        When the registry answers 202 (not mounted, an upload session begun) the
        session is kept: the :meth:`push_blob` of ``desc`` to ``repository`` that
        follows uploads into it instead of opening another.  Unused, it is
        cancelled by a later upload operation once it expired, or at :meth:`aclose`.
        """
        return await self._sessions.mount(repository, desc, from_repository)

    async def upload_status(self, location: str) -> int:
        """Bytes the registry acknowledged for the upload session at ``location``."""
        offset, _ = await self._sessions.status(URL(location, encoded=True))
        return offset

    async def cancel_upload(self, location: str) -> None:
        """Abandon the upload session at ``location`` (errors ignored)."""
        await self._sessions.cancel(URL(location, encoded=True))
