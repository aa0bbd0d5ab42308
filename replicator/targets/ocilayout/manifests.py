"""Manifests stored in a layout: reading their exact bytes, verified, and what they say.

Owns the per-target cache of parsed manifest facts
(:class:`~replicator.targets.ocilayout.entries.ManifestInfo`), keyed by digest:
content under a digest never changes, so a manifest is parsed at most once
per target.

Guarantees: :meth:`Manifests.read` returns bytes checked against the digest
(and size, when given), never more than ``MAX_MANIFEST_SIZE``; a missing file
is a :class:`~replicator.errors.NotFoundError`, different bytes an
:class:`~replicator.errors.IntegrityError`.  :meth:`Manifests.info` never
raises for a missing or broken manifest: it logs ``layout.manifest_unreadable``
(unless quiet) and answers None.
"""

from __future__ import annotations

import aiofiles
import structlog

from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci.digest import verify_bytes
from replicator.oci.manifest import MAX_MANIFEST_SIZE
from replicator.targets.ocilayout.entries import ManifestInfo, manifest_info
from replicator.targets.ocilayout.files import LayoutFiles

log = structlog.get_logger(__name__)


class Manifests:
    """Reads manifests of one layout and remembers what they say."""

    def __init__(self, files: LayoutFiles) -> None:
        self._files = files
        self.infos: dict[str, ManifestInfo] = {}

    async def read(self, digest: str, size: int | None, repository: str) -> bytes:
        """The manifest's exact bytes, verified against ``digest`` (and ``size``)."""
        files = self._files
        path = files.blob_path(digest)
        try:
            async with aiofiles.open(path, "rb") as fh:
                raw = await fh.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            raise NotFoundError(
                f"manifest {digest} not found in {files.display}",
                registry=files.display,
                repository=repository,
            ) from None
        except OSError as exc:
            raise LayoutError(f"{files.display}: cannot read {digest} ({exc.strerror})") from None
        if len(raw) > MAX_MANIFEST_SIZE:
            raise IntegrityError(
                f"{files.display}: manifest {digest} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        try:
            verify_bytes(raw, digest, size)
        except IntegrityError as exc:
            raise IntegrityError(f"{files.display}: corrupt manifest: {exc.message}") from None
        return raw

    def remember(self, digest: str, raw: bytes, media_type: str | None) -> ManifestInfo:
        """Parse ``raw`` (InputError if it is no manifest) and cache what it says."""
        info = manifest_info(raw, media_type)
        self.infos[digest] = info
        return info

    async def info(
        self, digest: str, media_type: str | None = None, *, quiet: bool = False
    ) -> ManifestInfo | None:
        """Parsed facts about a stored manifest; None when missing or unparsable.

        A missing or broken manifest is logged as a warning unless ``quiet``
        (and with ``quiet`` a missing file is not even opened).
        """
        info = self.infos.get(digest)
        if info is not None:
            return info
        if quiet and self._files.blob_size(digest) is None:
            return None
        try:
            raw = await self.read(digest, None, "")
            return self.remember(digest, raw, media_type)
        except (NotFoundError, IntegrityError, InputError, LayoutError) as exc:
            log.warning(
                "layout.manifest_unreadable",
                layout=self._files.display,
                digest=digest,
                error=str(exc),
            )
            return None

    def clear(self) -> None:
        """Forget every cached fact."""
        self.infos.clear()
