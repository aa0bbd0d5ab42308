""":class:`BundleWriter`: the Target a ``bundle create`` run writes into.

The engine copies the selected graphs from their sources into this target as
into any destination (blobs and children first, referrers after their subject,
tags last, each byte verified on the way); the writer appends what it receives
to the bundle's tar stream (:mod:`.tarformat`), once per digest, and keeps the
repository, tag and location facts in its durable log (:mod:`.state`).

Guarantees:

* **Written once.**  Blobs go straight into the parts: no staging copy.  A
  blob or manifest already in the bundle — or in the base of an incremental
  bundle — is never written again (``"exists"``).  Small blobs are read from
  their source concurrently into memory and appended whole; larger ones stream
  into the parts while holding the append lock.
* **Durable before confirmed.**  ``push_blob``, ``push_manifest`` and ``tag``
  return only after the part bytes and the log line were fsynced (group
  commit: one fsync serves every push waiting at that moment), so whatever the
  engine's journal records is in the parts after a kill.
* **Nothing half-written stays.**  A member whose source fails or is
  cancelled half way is rolled back (parts truncated, hashes restored).
* **Manifests belong to repositories.**  A manifest present for one repository
  is not taken as present for another (import copies it into each), while its
  bytes are stored once.  Blobs are shared by all repositories.

The bundle's layout files and ``bundle.json`` are written by
:mod:`.layout` and :mod:`.create` once the run succeeded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator.bundle.appender import Appender, Pending, blob_path
from replicator.bundle.model import Content
from replicator.bundle.spans import read_spans, stream_spans
from replicator.bundle.state import CreateState, StateLog
from replicator.bundle.tarformat import PartStream
from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import verify_bytes
from replicator.oci.manifest import parse_manifest
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    UploadProgress,
)

log = structlog.get_logger(__name__)

#: Blobs up to this size are read into memory before they are appended.
PREFETCH_MAX = 4 * 1024 * 1024

__all__ = ["PREFETCH_MAX", "BundleWriter", "blob_path"]


class BundleWriter:
    """A bundle being created, as a write-only Target (see the module doc).

    ``base`` is the content an incremental bundle leaves out.  Open one with
    :func:`replicator.bundle.create.open_writer`, which resumes or starts the
    state and the part stream.
    """

    def __init__(
        self,
        directory: Path,
        state: CreateState,
        stream: PartStream,
        log_file: StateLog,
        base: Content | None,
        pending: Pending | None = None,
    ) -> None:
        self.directory = directory
        self.appender = Appender(directory, state, stream, log_file, pending)
        self.state = state
        self.base = base
        self._inflight: dict[str, anyio.Event] = {}
        self._closed = False

    # ------------------------------------------------------------ identity

    @property
    def display(self) -> str:
        """``bundle DIR``."""
        return f"bundle {self.directory}"

    @property
    def is_local(self) -> bool:
        """A directory on disk: asking costs nothing."""
        return True

    @property
    def location(self) -> str:
        """The location key of this create (unique per bundle id)."""
        return f"ocidir://{self.directory}#{self.state.identity.id}"

    # ------------------------------------------------------------------ blobs

    def _has_blob(self, digest: str) -> bool:
        return digest in self.state.members or (
            self.base is not None and self.base.holds_blob(digest)
        )

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the bundle (or its base) holds the blob."""
        return self._has_blob(desc.digest)

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Blobs are shared by every repository of a bundle: true when it holds the blob."""
        return self._has_blob(desc.digest)

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
        """Append the blob ``opener`` yields (read from 0), unless held: ``"exists"``.

        ``verify=False`` trusts the opener's stream to verify itself (a
        ``fetch_blob`` read); sizes are always checked.  ``resume``,
        ``on_progress`` and ``chunk_size`` do not apply: a blob cut off by a
        kill is written again from its start.
        """
        while (event := self._inflight.get(desc.digest)) is not None:
            await event.wait()
        if self._has_blob(desc.digest):
            return BlobPushResult("exists")
        event = self._inflight[desc.digest] = anyio.Event()
        try:
            if desc.size <= PREFETCH_MAX:
                data = await _read_all(opener, desc)
                if verify:
                    verify_bytes(data, desc.digest, desc.size)
                seq = await self.appender.append_bytes("blob", desc, data)
            else:
                seq = await self.appender.append_stream(desc, opener, verify)
            await self.appender.commit(seq)
        finally:
            del self._inflight[desc.digest]
            event.set()
        log.debug("bundle.blob_written", digest=desc.digest, size=desc.size)
        return BlobPushResult("uploaded", bytes_sent=desc.size)

    def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """The bytes of a blob written to this bundle (not verified: the writer's own)."""
        member = self.state.members.get(desc.digest)
        if member is None:
            raise NotFoundError(f"{desc.digest} is not in {self.display}")
        return stream_spans(self.directory, member.spans, offset)

    # -------------------------------------------------------------- manifests

    def _holds_manifest(self, repository: str, digest: str) -> bool:
        return digest in self.state.repo_manifests.get(repository, ()) or (
            self.base is not None and self.base.holds_manifest(repository, digest)
        )

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when ``repository`` of the bundle (or of its base) holds the manifest."""
        return self._holds_manifest(repository, desc.digest)

    async def push_manifest(
        self,
        repository: str,
        desc: Descriptor,
        raw: bytes,
        tags: tuple[str, ...] = (),
        *,
        defer_referrers: bool = False,
    ) -> PushResult:
        """Store ``raw`` (verified) for ``repository`` once, and each tag; durable on return."""
        try:
            verify_bytes(raw, desc.digest, desc.size)
            manifest = parse_manifest(raw, desc.media_type)
        except (IntegrityError, InputError) as exc:
            raise IntegrityError(f"{self.display}: manifest refused: {exc.message}") from None
        subject = manifest.subject.digest if manifest.subject else None
        extra: list[dict[str, Any]] = []
        in_base = self.base is not None and self.base.holds_manifest(repository, desc.digest)
        listed = self.state.repo_manifests.get(repository, set())
        if not in_base and desc.digest not in listed:
            extra.append({"repo": repository, "manifest": desc.digest})
        extra += [{"tag": [repository, tag, desc.digest]} for tag in tags]
        if in_base:
            seq = self.appender.note(*extra)
        else:
            stored = Descriptor(manifest.media_type, desc.digest, desc.size)
            seq = await self.appender.append_bytes(
                "manifest",
                stored,
                raw,
                artifact_type=manifest.artifact_type,
                subject=subject,
                extra=tuple(extra),
            )
        if not in_base:
            self.state.repo_manifests.setdefault(repository, set()).add(desc.digest)
        for tag in tags:
            self.state.tags.setdefault(repository, {})[tag] = desc.digest
        await self.appender.commit(seq)
        return PushResult(
            descriptor=Descriptor(
                manifest.media_type,
                desc.digest,
                desc.size,
                artifact_type=manifest.artifact_type,
                annotations=dict(manifest.annotations) or None,
            ),
            referrers_updated=subject is not None,
        )

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` of ``repository`` at the manifest (stored if missing)."""
        await self.push_manifest(repository, desc, raw, (tag,))

    def _descriptor(self, digest: str) -> Descriptor | None:
        member = self.state.members.get(digest)
        if member is None or member.kind != "manifest":
            return None
        return Descriptor(
            member.media_type, digest, member.size, artifact_type=member.artifact_type
        )

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """A tag set in this bundle, or a manifest it holds for ``repository``."""
        digest = reference
        if ":" not in reference:
            found = self.state.tags.get(repository, {}).get(reference)
            if found is None:
                raise NotFoundError(f"{repository}:{reference} not found in {self.display}")
            digest = found
        desc = self._descriptor(digest)
        if desc is None or digest not in self.state.repo_manifests.get(repository, ()):
            raise NotFoundError(f"{repository}@{digest} not found in {self.display}")
        return desc

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """A manifest this bundle holds, read back from the parts and verified."""
        desc = (
            await self.resolve(repository, reference) if isinstance(reference, str) else reference
        )
        member = self.state.members.get(desc.digest)
        if member is None:
            raise NotFoundError(f"{desc.digest} not found in {self.display}")
        raw = await anyio.to_thread.run_sync(read_spans, self.directory, member.spans)
        verify_bytes(raw, desc.digest, desc.size)
        return desc, raw

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests of ``repository`` in this bundle whose subject is ``desc``."""
        out = []
        for digest in sorted(self.state.repo_manifests.get(repository, ())):
            member = self.state.members.get(digest)
            if member is None or member.subject != desc.digest:
                continue
            if artifact_type is None or member.artifact_type == artifact_type:
                out.append(
                    Descriptor(
                        member.media_type, digest, member.size, artifact_type=member.artifact_type
                    )
                )
        return out

    async def tags(self, repository: str) -> list[str]:
        """The tags set for ``repository`` in this bundle, sorted."""
        return sorted(self.state.tags.get(repository, {}))

    async def delete_manifest(
        self, repository: str, desc: Descriptor, *, update_referrers: bool = True
    ) -> None:
        """Refused: a bundle only grows while it is created."""
        raise LayoutError(f"{self.display}: a bundle being created cannot delete anything")

    async def aclose(self) -> None:
        """Close the part files and release the log (kept for a resume unless removed)."""
        if self._closed:
            return
        self._closed = True
        await anyio.to_thread.run_sync(self.appender.close)


async def _read_all(opener: BlobOpener, desc: Descriptor) -> bytes:
    """A small blob's bytes, read whole (at most ``desc.size``)."""
    buf = bytearray()
    async for chunk in opener(0):
        buf += chunk
        if len(buf) > desc.size:
            raise IntegrityError(f"{desc.digest}: the source sent more than {desc.size} bytes")
    if len(buf) != desc.size:
        raise IntegrityError(f"{desc.digest}: the source sent {len(buf)} of {desc.size} bytes")
    return bytes(buf)
