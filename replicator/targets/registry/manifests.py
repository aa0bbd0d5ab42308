"""Manifests on a registry: resolve, read, write, delete — exact bytes, verified.

:class:`ManifestStore` speaks the ``/v2/<name>/manifests/<reference>`` part of
the distribution API for the registry target (and, through the narrow
:class:`~.fallback.IndexStore` protocol, for the referrers fallback indexes).

Guarantees:

* References are checked before any request: a digest must be well formed, a
  tag must match the tag grammar (:class:`~replicator.errors.ReferenceError`).
* Manifests are read with ``Accept`` naming all four manifest types, capped at
  :data:`~replicator.oci.manifest.MAX_MANIFEST_SIZE` bytes, and verified against
  the digest asked for (for a tag: ``Docker-Content-Digest``, else the computed
  one is returned).
* A manifest is written as its exact bytes and only ``201 Created`` counts as
  stored; a registry reporting another digest than the bytes' is a
  :class:`~replicator.errors.ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from replicator.errors import InputError, IntegrityError, NotFoundError, ReferenceError
from replicator.oci.descriptor import Descriptor, validate_digest
from replicator.oci.digest import digest_bytes, verify_bytes
from replicator.oci.manifest import MAX_MANIFEST_SIZE, parse_manifest
from replicator.oci.mediatype import MANIFEST_ACCEPT, is_manifest
from replicator.oci.reference import TAG_RE
from replicator.targets.registry.errors import protocol_error
from replicator.targets.registry.exchange import RequestSpec
from replicator.targets.registry.listing import pull_scopes
from replicator.targets.registry.transport import Transport


def push_scopes(repository: str) -> list[str]:
    """Token scopes for writing to ``repository``."""
    return [f"repository:{repository}:pull,push"]


def is_digest(reference: str) -> bool:
    """Whether ``reference`` is a digest (``alg:hex``) rather than a tag."""
    return ":" in reference


def manifest_what(reference: str) -> str:
    """How error messages name the manifest at ``reference``."""
    return f"manifest {reference}" if is_digest(reference) else f'manifest "{reference}"'


def _clean_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip()


@dataclass(frozen=True, slots=True)
class Stored:
    """What a manifest ``PUT`` did: the digest stored, whether ``OCI-Subject`` came back."""

    digest: str
    subject_acknowledged: bool


class ManifestStore:
    """The manifests of one registry, through its :class:`Transport` (see module doc)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def _host(self) -> str:
        return self.transport.host

    def check_reference(self, reference: str) -> None:
        """A digest must be well formed and a tag must match the tag grammar."""
        if is_digest(reference):
            try:
                validate_digest(reference)
            except InputError as exc:
                raise ReferenceError(f"{self._host}: {exc}") from None
        elif not TAG_RE.fullmatch(reference):
            shown = reference if len(reference) <= 80 else reference[:79] + "…"
            raise ReferenceError(f"invalid tag {shown!r}")

    def _url(self, repository: str, reference: str) -> URL:
        self.check_reference(reference)
        return self.transport.repo_url(repository, f"manifests/{reference}")

    def _read_spec(self, method: str, repository: str, reference: str) -> RequestSpec:
        return RequestSpec(
            method=method,
            url=self._url(repository, reference),
            kind="manifest_head" if method == "HEAD" else "manifest_get",
            scopes=pull_scopes(repository),
            repository=repository,
            what=manifest_what(reference),
            ok=(200,),
            headers={"Accept": MANIFEST_ACCEPT},
        )

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor of the manifest named by ``reference`` (HEAD; GET when HEAD says too little)."""
        reply = await self.transport.request(self._read_spec("HEAD", repository, reference))
        header_digest = reply.headers.get("Docker-Content-Digest")
        media_type = _clean_type(reply.headers.get("Content-Type"))
        length = reply.headers.get("Content-Length")
        digest = reference if is_digest(reference) else header_digest
        usable = (
            digest is not None
            and is_manifest(media_type)
            and length is not None
            and length.isdigit()
            and (header_digest is None or header_digest == digest)
        )
        if usable and digest is not None and length is not None:
            try:
                validate_digest(digest)
            except InputError:
                pass
            else:
                return Descriptor(media_type=media_type, digest=digest, size=int(length))
        desc, _ = await self.fetch(repository, reference)
        return desc

    async def fetch(self, repository: str, reference: str | Descriptor) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and exact bytes, verified (see the module docstring)."""
        expected = reference if isinstance(reference, Descriptor) else None
        ref = reference.digest if isinstance(reference, Descriptor) else reference
        what = manifest_what(ref)
        spec = self._read_spec("GET", repository, ref)
        if expected is not None and expected.size > MAX_MANIFEST_SIZE:
            raise protocol_error(
                self._host, repository, f"{what} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        reply = await self.transport.request(spec, max_body=MAX_MANIFEST_SIZE)
        raw = reply.body
        digest = self._digest_of(ref, reply.headers.get("Docker-Content-Digest"), raw, repository)
        try:
            verify_bytes(raw, digest, expected.size if expected is not None else None)
        except IntegrityError as exc:
            raise IntegrityError(f"{self._host}/{repository}: {what}: {exc}") from None
        media_type = self._media_type(
            reply.headers.get("Content-Type"), raw, expected, repository, what
        )
        if expected is not None:
            return expected, raw
        return Descriptor(media_type=media_type, digest=digest, size=len(raw)), raw

    def _digest_of(self, ref: str, header: str | None, raw: bytes, repository: str) -> str:
        """The digest the bytes must have: the one asked for, else the registry's, else theirs."""
        if is_digest(ref):
            return ref
        if header:
            try:
                return validate_digest(header)
            except InputError:
                raise protocol_error(
                    self._host,
                    repository,
                    f"{manifest_what(ref)}: invalid Docker-Content-Digest header",
                ) from None
        return digest_bytes(raw)

    def _media_type(
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
                self._host,
                repository,
                f"{what}: the answer is not a manifest (Content-Type {shown})",
            ) from None

    async def exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest ``desc.digest`` is in ``repository`` (HEAD)."""
        try:
            await self.transport.request(self._read_spec("HEAD", repository, desc.digest))
        except NotFoundError:
            return False
        return True

    async def put(self, repository: str, reference: str, raw: bytes, media_type: str) -> Stored:
        """PUT ``raw`` under ``reference`` (tag or digest); what the registry stored."""
        expected = digest_bytes(raw)
        reply = await self.transport.request(
            RequestSpec(
                method="PUT",
                url=self._url(repository, reference),
                kind="manifest_put",
                scopes=push_scopes(repository),
                repository=repository,
                what=manifest_what(reference),
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
                self._host,
                repository,
                f"{manifest_what(reference)} was stored as {stored}, expected {expected}",
                status=reply.status,
            )
        return Stored(expected, bool(reply.headers.get("OCI-Subject")))

    async def put_manifest_bytes(
        self, repository: str, reference: str, raw: bytes, media_type: str
    ) -> str:
        """PUT ``raw`` under ``reference``; the digest stored (no referrers bookkeeping)."""
        return (await self.put(repository, reference, raw, media_type)).digest

    async def fetch_manifest(self, repository: str, reference: str) -> tuple[Descriptor, bytes]:
        """:meth:`fetch` by tag or digest (the name :class:`~.fallback.IndexStore` uses)."""
        return await self.fetch(repository, reference)

    async def delete_manifest_digest(self, repository: str, digest: str) -> None:
        """``DELETE`` a manifest by digest, without referrers bookkeeping."""
        await self.transport.request(
            RequestSpec(
                method="DELETE",
                url=self._url(repository, digest),
                kind="manifest_delete",
                scopes=[f"repository:{repository}:delete"],
                repository=repository,
                what=manifest_what(digest),
                ok=(200, 202, 204),
            )
        )
