"""The registry target: the :class:`~replicator.targets.base.Target` protocol over HTTP.

:class:`RegistryTarget` speaks the OCI distribution protocol to one registry
host.  Requests go through one :class:`~.transport.Transport` (auth, retries,
error mapping, statistics); uploads live in :mod:`.uploads`, referrers in
:mod:`.referrers`.

Guarantees (on top of those of the Target protocol):

* Manifests are read with ``Accept`` naming all four manifest types, capped at
  :data:`~replicator.oci.manifest.MAX_MANIFEST_SIZE` bytes, and verified against
  the digest asked for (for a tag: ``Docker-Content-Digest``, else the computed
  one is returned).  They are pushed as their exact bytes.
* Blob downloads are hashed as they stream, in the pieces the socket delivers
  (never joined or copied); a connection that breaks resumes with ``Range``
  where it stopped; the last chunk is yielded only after the digest and size
  verified.
* Every failure is one :mod:`replicator.errors` exception naming the host and
  repository, never containing a credential.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection, Sequence

import structlog
from yarl import URL

from replicator.errors import (
    ConnectionFailedError,
    InputError,
    IntegrityError,
    NotFoundError,
    ReferenceError,
)
from replicator.oci.descriptor import Descriptor, validate_digest
from replicator.oci.digest import DigestVerifier, digest_bytes, verify_bytes
from replicator.oci.manifest import MAX_MANIFEST_SIZE, Manifest, parse_manifest
from replicator.oci.mediatype import MANIFEST_ACCEPT, is_manifest
from replicator.oci.reference import DOCKER_HUB_DISPLAY, DOCKER_HUB_REGISTRY, TAG_RE
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    RequestStats,
    UploadProgress,
)
from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.auth import Authenticator
from replicator.targets.registry.errors import connection_error, protocol_error
from replicator.targets.registry.options import RegistryOptions
from replicator.targets.registry.referrers import ReferrersSupport, parse_next_link, pull_scopes
from replicator.targets.registry.transport import (
    AuthProvider,
    RequestSpec,
    Transport,
)
from replicator.targets.registry.uploads import Uploader, push_scopes

log = structlog.get_logger("replicator.registry")

_LIST_BODY_CAP = 32 * 1024 * 1024


class _PageCapReached(Exception):
    """A listing asked to stop after a number of pages had more."""


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _clean_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip()


def _manifest_what(reference: str) -> str:
    return f"manifest {reference}" if _is_digest(reference) else f'manifest "{reference}"'


class RegistryTarget:
    """A registry host (``host[:port]``) as a :class:`~replicator.targets.base.Target`.

    One aiohttp session (and connection pool) per target, created on first
    use; ``aclose()`` releases it.  ``authenticator`` replaces the default
    :class:`~.auth.Authenticator` built from ``options.credentials``.
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
        self._uploads = Uploader(self._transport)
        self._referrers = ReferrersSupport(self, self._transport)

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
        """Cancel upload sessions kept from failed mounts, close the connection pool.

        The target can be used again afterwards.
        """
        try:
            await self._uploads.aclose()
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
        query = {"n": str(page_size)} if page_size else None
        return sorted(
            await self._list_pages(
                self._transport.repo_url(repository, "tags/list", query),
                key="tags",
                kind="tags",
                scopes=pull_scopes(repository),
                repository=repository,
                what="tag list",
            )
        )

    async def tags_within(self, repository: str, pages: int) -> list[str] | None:
        """The tags of ``repository`` when the listing ends within ``pages`` pages, else None.

        The registry's own page size is used.  A repository the registry does not
        know (``404 NAME_UNKNOWN``) has no tags.
        """
        try:
            return await self._list_pages(
                self._transport.repo_url(repository, "tags/list"),
                key="tags",
                kind="tags",
                scopes=pull_scopes(repository),
                repository=repository,
                what="tag list",
                max_pages=pages,
            )
        except _PageCapReached:
            return None
        except NotFoundError as exc:
            if exc.code == "NAME_UNKNOWN":
                return []
            raise

    async def repository_is_new(self, repository: str) -> bool:
        """True when the registry says ``repository`` does not exist yet.

        One ``GET tags/list?n=1``: ``404 NAME_UNKNOWN`` means the registry holds
        no tag there (distribution answers so for a repository it has never
        seen).  Any other answer — a list, another error, a 404 without that
        code — is "not known to be new".  The copy engine uses it to push into a
        new repository without asking about each manifest first; the fallback
        referrers indexes of a new repository are then maintained without
        reading them back (see :mod:`.referrers`).
        """
        try:
            await self._transport.request(
                RequestSpec(
                    method="GET",
                    url=self._transport.repo_url(repository, "tags/list", {"n": "1"}),
                    kind="tags",
                    scopes=pull_scopes(repository),
                    repository=repository,
                    what="tag list",
                    ok=(200,),
                    headers={"Accept": "application/json"},
                ),
                max_body=_LIST_BODY_CAP,
            )
        except NotFoundError as exc:
            if exc.code != "NAME_UNKNOWN":
                return False
            self._referrers.mark_new(repository)
            return True
        return False

    async def catalog(self, *, page_size: int | None = None) -> list[str]:
        """All repositories the registry lists in ``/v2/_catalog``, sorted."""
        query = {"n": str(page_size)} if page_size else None
        return sorted(
            await self._list_pages(
                self._transport.url("/v2/_catalog", query),
                key="repositories",
                kind="catalog",
                scopes=["registry:catalog:*"],
                repository=None,
                what="repository catalog",
            )
        )

    async def _list_pages(
        self,
        first: URL,
        *,
        key: str,
        kind: str,
        scopes: list[str],
        repository: str | None,
        what: str,
        max_pages: int | None = None,
    ) -> list[str]:
        """Every item of a paginated listing; ``max_pages``: stop quietly beyond (raises
        :class:`_PageCapReached`) instead of failing beyond ``options.max_pages``."""
        out: list[str] = []
        url: URL | None = first
        seen: set[str] = set()
        pages = 0
        while url is not None:
            pages += 1
            seen.add(str(url))
            reply = await self._transport.request(
                RequestSpec(
                    method="GET",
                    url=url,
                    kind=kind,
                    scopes=scopes,
                    repository=repository,
                    what=what,
                    ok=(200,),
                    headers={"Accept": "application/json"},
                ),
                max_body=_LIST_BODY_CAP,
            )
            out.extend(self._list_items(reply.body, key, repository, what))
            link = parse_next_link(reply.headers.getall("Link", []))
            if not link:
                break
            next_url = self._transport.resolve(reply.url, link)
            if not self._transport.is_own_origin(next_url):
                raise protocol_error(self.host, repository, f"{what}: next page is on another host")
            if str(next_url) in seen:
                raise protocol_error(
                    self.host,
                    repository,
                    f"{what}: the next-page link loops to a page already read",
                )
            if max_pages is not None and pages >= max_pages:
                raise _PageCapReached
            if pages >= self.options.max_pages:
                raise protocol_error(
                    self.host, repository, f"{what}: more than {pages} pages; giving up"
                )
            url = next_url
        return out

    def _list_items(self, body: bytes, key: str, repository: str | None, what: str) -> list[str]:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise protocol_error(self.host, repository, f"{what} is not JSON") from None
        if not isinstance(data, dict):
            raise protocol_error(self.host, repository, f"{what} is not a JSON object")
        items = data.get(key)
        if items is None:
            return []
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise protocol_error(self.host, repository, f"{what}: {key!r} is not a list of names")
        return list(items)

    # -- manifests -------------------------------------------------------------------------

    def _manifest_url(self, repository: str, reference: str) -> URL:
        self._check_reference(reference)
        return self._transport.repo_url(repository, f"manifests/{reference}")

    def _check_reference(self, reference: str) -> None:
        """A digest must be well formed and a tag must match the tag grammar."""
        if _is_digest(reference):
            try:
                validate_digest(reference)
            except InputError as exc:
                raise ReferenceError(f"{self.host}: {exc}") from None
        elif not TAG_RE.fullmatch(reference):
            shown = reference if len(reference) <= 80 else reference[:79] + "…"
            raise ReferenceError(f"invalid tag {shown!r}")

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor of the manifest named by ``reference`` (HEAD; GET when HEAD says too little)."""
        self._check_reference(reference)
        reply = await self._transport.request(
            RequestSpec(
                method="HEAD",
                url=self._manifest_url(repository, reference),
                kind="manifest_head",
                scopes=pull_scopes(repository),
                repository=repository,
                what=_manifest_what(reference),
                ok=(200,),
                headers={"Accept": MANIFEST_ACCEPT},
            )
        )
        header_digest = reply.headers.get("Docker-Content-Digest")
        media_type = _clean_type(reply.headers.get("Content-Type"))
        length = reply.headers.get("Content-Length")
        digest = reference if _is_digest(reference) else header_digest
        if (
            digest is None
            or not is_manifest(media_type)
            or length is None
            or not length.isdigit()
            or (header_digest is not None and header_digest != digest)
        ):
            desc, _ = await self.fetch_manifest(repository, reference)
            return desc
        try:
            validate_digest(digest)
        except InputError:
            desc, _ = await self.fetch_manifest(repository, reference)
            return desc
        return Descriptor(media_type=media_type, digest=digest, size=int(length))

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and exact bytes, verified (see the module docstring)."""
        expected = reference if isinstance(reference, Descriptor) else None
        ref = reference.digest if isinstance(reference, Descriptor) else reference
        self._check_reference(ref)
        what = _manifest_what(ref)
        if expected is not None and expected.size > MAX_MANIFEST_SIZE:
            raise protocol_error(
                self.host, repository, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        reply = await self._transport.request(
            RequestSpec(
                method="GET",
                url=self._manifest_url(repository, ref),
                kind="manifest_get",
                scopes=pull_scopes(repository),
                repository=repository,
                what=what,
                ok=(200,),
                headers={"Accept": MANIFEST_ACCEPT},
            ),
            max_body=MAX_MANIFEST_SIZE,
        )
        raw = reply.body
        header_digest = reply.headers.get("Docker-Content-Digest")
        if _is_digest(ref):
            digest = ref
        elif header_digest:
            try:
                digest = validate_digest(header_digest)
            except InputError:
                raise protocol_error(
                    self.host, repository, f"{what}: invalid Docker-Content-Digest header"
                ) from None
        else:
            digest = digest_bytes(raw)
        try:
            verify_bytes(raw, digest, expected.size if expected is not None else None)
        except IntegrityError as exc:
            raise IntegrityError(f"{self.host}/{repository}: {what}: {exc}") from None
        media_type = self._manifest_media_type(
            reply.headers.get("Content-Type"), raw, expected, repository, what
        )
        if expected is not None:
            return expected, raw
        return Descriptor(media_type=media_type, digest=digest, size=len(raw)), raw

    def _manifest_media_type(
        self,
        content_type: str | None,
        raw: bytes,
        expected: Descriptor | None,
        repository: str,
        what: str,
    ) -> str:
        """The manifest's media type: a known Content-Type, else what the bytes say."""
        media_type = _clean_type(content_type)
        if is_manifest(media_type):
            return media_type
        try:
            return parse_manifest(raw).media_type
        except InputError:
            if expected is not None:
                return expected.media_type
            shown = media_type[:60] or "none"
            raise protocol_error(
                self.host,
                repository,
                f"{what}: the answer is not a manifest (Content-Type {shown})",
            ) from None

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest ``desc.digest`` is in ``repository`` (HEAD)."""
        try:
            await self._transport.request(
                RequestSpec(
                    method="HEAD",
                    url=self._manifest_url(repository, desc.digest),
                    kind="manifest_head",
                    scopes=pull_scopes(repository),
                    repository=repository,
                    what=_manifest_what(desc.digest),
                    ok=(200,),
                    headers={"Accept": MANIFEST_ACCEPT},
                )
            )
        except NotFoundError:
            return False
        return True

    async def put_manifest_bytes(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """PUT ``raw`` under ``reference`` (tag or digest); the digest the registry stored.

        No referrers bookkeeping: :meth:`push_manifest` is the public way in.
        """
        digest, _ = await self._put_manifest(repository, reference, raw, media_type)
        return digest

    async def _put_manifest(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> tuple[str, bool]:
        expected = digest_bytes(raw)
        reply = await self._transport.request(
            RequestSpec(
                method="PUT",
                url=self._manifest_url(repository, reference),
                kind="manifest_put",
                scopes=push_scopes(repository),
                repository=repository,
                what=_manifest_what(reference),
                # 201 Created is the only success: a registry answering 200 may not
                # have stored anything.
                ok=(201,),
                headers={"Content-Type": media_type},
                data=raw,
                retry_500=True,  # the same bytes to the same name: safe to repeat
            )
        )
        stored = reply.headers.get("Docker-Content-Digest")
        if stored and stored != expected and stored.startswith("sha256:"):
            raise protocol_error(
                self.host,
                repository,
                f"{_manifest_what(reference)} was stored as {stored}, expected {expected}",
                status=reply.status,
            )
        return expected, bool(reply.headers.get("OCI-Subject"))

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
        manifest = self._parse_for_push(repository, desc, raw)
        subject_ack = False
        for reference in tags or (desc.digest,):
            _, acked = await self._put_manifest(repository, reference, raw, desc.media_type)
            subject_ack = subject_ack or acked
        updated = False
        if manifest is not None and manifest.subject is not None:
            if subject_ack:
                updated = True
            elif not defer_referrers:
                updated = await self._referrers.after_push(repository, manifest)
        return PushResult(descriptor=desc, referrers_updated=updated)

    def _parse_for_push(self, repository: str, desc: Descriptor, raw: bytes) -> Manifest | None:
        try:
            return parse_manifest(raw, desc.media_type)
        except InputError as exc:
            log.debug(
                "registry.manifest.unparsed",
                host=self.host,
                repository=repository,
                digest=desc.digest,
                reason=str(exc),
            )
            return None

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` at the manifest ``desc`` (``raw`` are its exact bytes)."""
        verify_bytes(raw, desc.digest, desc.size)
        await self._put_manifest(repository, tag, raw, desc.media_type)

    async def delete_manifest_digest(self, repository: str, digest: str) -> None:
        """``DELETE`` a manifest by digest, without referrers bookkeeping."""
        await self._transport.request(
            RequestSpec(
                method="DELETE",
                url=self._manifest_url(repository, digest),
                kind="manifest_delete",
                scopes=[f"repository:{repository}:delete"],
                repository=repository,
                what=_manifest_what(digest),
                ok=(200, 202, 204),
            )
        )

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Delete a manifest by digest, and its entry in its subject's fallback index.

        ``update_referrers=False``: only the ``DELETE`` (the caller unlists the
        referrers of one subject together, :meth:`unlist_referrers`).
        """
        if not update_referrers:
            await self.delete_manifest_digest(repository, desc.digest)
            return
        _, raw = await self.fetch_manifest(repository, desc.digest)
        manifest = self._parse_for_push(repository, desc, raw)
        await self.delete_manifest_digest(repository, desc.digest)
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

    def _blob_url(self, repository: str, digest: str) -> URL:
        return self._transport.repo_url(repository, f"blobs/{digest}")

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the blob ``desc.digest`` is in ``repository`` (HEAD)."""
        try:
            await self._transport.request(
                RequestSpec(
                    method="HEAD",
                    url=self._blob_url(repository, desc.digest),
                    kind="blob_head",
                    scopes=pull_scopes(repository),
                    repository=repository,
                    what=f"blob {desc.digest}",
                    ok=(200,),
                    follow_redirects=True,
                )
            )
        except NotFoundError:
            return False
        # Present after all: a session a failed mount kept for its upload is not needed.
        self._uploads.discard_pending(repository, desc.digest)
        return True

    async def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream the blob from ``offset``, resuming broken connections with ``Range``.

        From offset 0 the stream is verified against ``desc`` and the last chunk
        is held back until it is; from another offset only the size is checked.
        """
        if offset < 0 or offset > desc.size:
            raise InputError(f"offset {offset} outside blob {desc.digest} of {desc.size} bytes")
        verifier = DigestVerifier(desc.digest, desc.size) if offset == 0 else None
        position = offset
        failures = 0
        pending: bytes | None = None
        policy = self.options.retry
        if offset == desc.size and offset > 0:
            return
        requested = False
        last_status = 0
        while not requested or position < desc.size:
            requested = True
            headers = {"Range": f"bytes={position}-"} if position > 0 else {}
            spec = RequestSpec(
                method="GET",
                url=self._blob_url(repository, desc.digest),
                kind="blob_get",
                scopes=pull_scopes(repository),
                repository=repository,
                what=f"blob {desc.digest}",
                ok=(200, 206),
                headers=headers,
                follow_redirects=True,
            )
            try:
                async with self._transport.stream(spec) as resp:
                    last_status = resp.status
                    skip = self._skip_for(resp, position, repository, desc)
                    # The pieces as they came off the socket (up to 256 KiB each):
                    # no re-cutting, so no joins or copies.
                    async for chunk, _ in resp.content.iter_chunks():
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk = chunk[skip:]
                            skip = 0
                        self.stats.add("bytes_received", len(chunk))
                        if verifier is not None:
                            verifier.update(chunk)
                        elif position + len(chunk) > desc.size:
                            raise IntegrityError(
                                f"{desc.digest}: received more than the declared {desc.size} bytes"
                            )
                        position += len(chunk)
                        failures = 0
                        if pending is not None:
                            yield pending
                        pending = chunk
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                failures += 1
                if failures >= policy.attempts:
                    raise connection_error(self.host, exc) from None
                log.info(
                    "registry.blob.resume",
                    host=self.host,
                    repository=repository,
                    digest=desc.digest,
                    at=position,
                    reason=type(exc).__name__,
                )
                self.stats.add("retries")
                await asyncio.sleep(min(policy.max_delay, policy.base_delay * failures))
                continue
            if position < desc.size:
                if last_status == 200:
                    # The whole blob, as the server declares it, has arrived: it is short.
                    raise IntegrityError(
                        f"{self.host}/{repository}: blob {desc.digest}: size mismatch, "
                        f"expected {desc.size} bytes, got {position}"
                    )
                # A 206 may carry a partial range: ask for the rest.
                failures += 1
                if failures >= policy.attempts:
                    raise ConnectionFailedError(
                        f"cannot reach {self.host}: blob {desc.digest} kept ending early"
                    )
                continue
            break
        if verifier is not None:
            try:
                verifier.verify()
            except IntegrityError as exc:
                raise IntegrityError(f"{self.host}/{repository}: blob {exc}") from None
        if pending is not None:
            yield pending

    def _skip_for(
        self, resp: aiohttp.ClientResponse, position: int, repository: str, desc: Descriptor
    ) -> int:
        """Bytes to drop from the start of ``resp`` to continue at ``position``."""
        if position == 0:
            return 0
        if resp.status == 200:
            log.info("registry.blob.range_ignored", host=self.host, digest=desc.digest)
            return position
        content_range = resp.headers.get("Content-Range", "")
        start = content_range.removeprefix("bytes").strip().split("-", 1)[0].strip()
        if start != str(position):
            raise protocol_error(
                self.host,
                repository,
                f"blob {desc.digest}: asked bytes from {position}, got range {content_range!r}",
                status=resp.status,
            )
        return 0

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
        cancelled after a short time or at :meth:`aclose`.
        """
        return await self._uploads.mount(repository, desc, from_repository)

    async def upload_status(self, location: str) -> int:
        """Bytes the registry acknowledged for the upload session at ``location``."""
        return await self._uploads.status(URL(location, encoded=True))

    async def cancel_upload(self, location: str) -> None:
        """Abandon the upload session at ``location`` (errors ignored)."""
        await self._uploads.cancel(URL(location, encoded=True))
