"""The OCI image layout target: a directory on disk that speaks the Target protocol.

Layout (OCI image-spec, "image layout")::

    PATH/oci-layout          {"imageLayoutVersion": "1.0.0"}
    PATH/index.json          an image index: the tags and the other listed manifests
    PATH/blobs/<alg>/<hex>   every blob and every manifest, named by its digest

One layout holds many repositories with one shared blob store.  A tag of the
repository ``""`` is stored as the plain tag (``ref.name`` = ``v1``, what
skopeo and oras write for ``oci:PATH:v1``); a tag of any other repository as
the full reference ``<repository>:<tag>``.  Digests are not scoped by
repository: a blob or manifest present for one repository is present for all,
so :meth:`OCILayoutTarget.mount_blob` is true whenever the blob exists.

Guarantees and decisions:

* Blobs (and manifests, which live in the same store) are streamed into a
  uniquely named temporary file ``blobs/<alg>/.tmp-...``, hashed and counted on
  the way, fsynced, and renamed into place only when digest and size verify.
  On any error, cancellation included, the temporary file is removed.  A blob
  already present with the right size is never rewritten.
* ``push_blob`` always writes the whole blob from ``opener(0)``: a local write
  is cheap to restart, so ``resume`` and ``on_progress`` are accepted and
  ignored, and ``chunk_size`` is ignored too.
* ``index.json`` is rewritten atomically (temporary file, fsync, rename, fsync
  of the directory) under an asyncio lock inside the process and an advisory
  ``flock`` on the ``oci-layout`` file across processes (so no extra lock file
  is left in the layout).  Updates are read-modify-write on the current file
  and group-committed: concurrent updates within the process are applied
  together in one rewrite, and none is lost.
* Untagged manifest pushes are listed in ``index.json`` without a
  ``ref.name``, so nothing pushed is lost.  When an index is pushed, the
  untagged entries of its children are dropped again (they are reachable
  through the index) unless they are referrers (have a ``subject``), which
  always stay listed so that :meth:`OCILayoutTarget.referrers` finds them.
  Re-tagging replaces the old entry with that ``ref.name``; a referrer that
  loses its last entry that way is kept as an untagged entry.
* ``referrers`` is the union of the listed manifests whose ``subject`` is the
  given digest (parsed once per digest and cached: content under a digest
  never changes) and the entries of the referrers fallback tag
  (``sha256-<hex>``) when it holds a valid index; a fallback tag holding
  anything else is ignored with a warning.
* ``delete_manifest`` removes the entries of that digest for the repository
  (its tags, and untagged entries), removes it from its subject's fallback
  index when there is one, and deletes the manifest file when no entry and no
  listed index still needs it.  Config and layer blobs are left in place:
  there is no garbage collection of blobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import structlog

from replicator.errors import InputError, IntegrityError, LayoutError, NotFoundError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor, validate_digest
from replicator.oci.digest import DigestVerifier, descriptor_for, verify_bytes
from replicator.oci.manifest import MAX_MANIFEST_SIZE, build_index, parse_manifest
from replicator.oci.reference import TAG_RE, referrers_tag
from replicator.targets.base import (
    BlobOpener,
    BlobPushResult,
    ProgressCallback,
    PushResult,
    UploadProgress,
)

log = structlog.get_logger(__name__)

#: Annotation that names a tag in ``index.json``.
REF_NAME = "org.opencontainers.image.ref.name"
#: Version written into a new ``oci-layout`` file.
LAYOUT_VERSION = "1.0.0"
#: Size of the chunks ``fetch_blob`` yields.
READ_CHUNK = 1024 * 1024


_TMP_PREFIX = ".tmp-"

#: A pure change of the ``manifests`` list of ``index.json``.
IndexMutation = Callable[[list[dict[str, Any]]], None]


@dataclass(frozen=True, slots=True)
class _ManifestInfo:
    """What the target remembers about a parsed manifest (content never changes)."""

    media_type: str
    size: int
    subject: str | None
    artifact_type: str | None
    annotations: Mapping[str, str] | None
    children: frozenset[str]


@dataclass(slots=True)
class _IndexSnapshot:
    """``index.json`` as read, with the stat key that tells whether it changed."""

    key: tuple[int, int, int]
    document: dict[str, Any]
    entries: list[dict[str, Any]]


def _entry_ref_name(entry: Mapping[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    if isinstance(annotations, Mapping):
        name = annotations.get(REF_NAME)
        if isinstance(name, str):
            return name
    return None


def ref_name_for(repository: str, tag: str) -> str:
    """The ``ref.name`` a tag of ``repository`` is stored under.

    Repository ``""`` gives the plain tag; any other repository the full
    reference ``<repository>:<tag>``.
    """
    return f"{repository}:{tag}" if repository else tag


def tag_of_ref_name(repository: str, name: str) -> str | None:
    """The tag of ``repository`` that ``ref.name`` ``name`` stands for, or None."""
    if repository:
        prefix = repository + ":"
        if not name.startswith(prefix):
            return None
        name = name[len(prefix) :]
    return name if TAG_RE.fullmatch(name) else None


def _check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise InputError(f"invalid tag {tag!r}")
    return tag


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _index_entry(
    desc: Descriptor, info: _ManifestInfo | None, ref_name: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "mediaType": info.media_type if info else desc.media_type,
        "digest": desc.digest,
        "size": desc.size,
    }
    artifact_type = info.artifact_type if info else desc.artifact_type
    if artifact_type:
        entry["artifactType"] = artifact_type
    if ref_name is not None:
        entry["annotations"] = {REF_NAME: ref_name}
    return entry


class OCILayoutTarget:
    """An OCI image layout directory as a replication source or destination.

    ``create=True`` makes the layout when it is missing (the directory, the
    ``oci-layout`` file, an empty ``index.json``); otherwise a missing or
    malformed layout raises :class:`~replicator.errors.LayoutError` at once.
    See the module docstring for the storage guarantees.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self._path_text = os.fspath(path)
        self._root = Path(self._path_text)
        self._blobs = self._root / "blobs"
        self._index_path = self._root / "index.json"
        self._layout_path = self._root / "oci-layout"
        self._index_lock = asyncio.Lock()
        self._pending: list[tuple[IndexMutation, asyncio.Future[None]]] = []
        self._snapshot: _IndexSnapshot | None = None
        self._infos: dict[str, _ManifestInfo] = {}
        self._open_layout(create)

    # ------------------------------------------------------------------ layout

    @property
    def display(self) -> str:
        """``ocidir://PATH`` as the user gave the path."""
        return f"ocidir://{self._path_text}"

    @property
    def is_local(self) -> bool:
        """A layout is a directory: asking it costs no request."""
        return True

    @property
    def path(self) -> Path:
        """The layout directory."""
        return self._root

    def __repr__(self) -> str:
        return f"OCILayoutTarget({self._path_text!r})"

    def _malformed(self, reason: str) -> LayoutError:
        return LayoutError(f"{self.display} is not an OCI image layout: {reason}")

    def _open_layout(self, create: bool) -> None:
        """Check (or with ``create`` make) the layout; small synchronous file I/O."""
        root = self._root
        if root.exists() and not root.is_dir():
            raise self._malformed("it is not a directory")
        if not root.exists():
            if not create:
                raise self._malformed("the directory does not exist")
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._malformed(f"cannot create it ({exc.strerror})") from None
        has_layout = self._layout_path.exists()
        has_index = self._index_path.exists()
        if not has_layout and not has_index and create:
            self._create_files()
            return
        if not has_layout:
            raise self._malformed("no oci-layout file")
        self._check_layout_file()
        if not has_index:
            raise self._malformed("no index.json")
        self._parse_index(self._read_bytes_sync(self._index_path, "index.json"))

    def _create_files(self) -> None:
        try:
            (self._blobs / "sha256").mkdir(parents=True, exist_ok=True)
            self._write_sync(
                self._index_path,
                json.dumps(
                    {"schemaVersion": 2, "mediaType": mediatype.OCI_INDEX, "manifests": []}
                ).encode(),
            )
            self._write_sync(
                self._layout_path, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
            )
        except OSError as exc:
            raise self._malformed(f"cannot create it ({exc.strerror})") from None
        log.info("oci_layout_created", layout=self.display)

    def _write_sync(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{path.name}{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            _unlink_quietly(tmp)
        _fsync_path(path.parent, directory=True)

    def _read_bytes_sync(self, path: Path, what: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read(MAX_MANIFEST_SIZE * 16 + 1)
        except OSError as exc:
            raise self._malformed(f"cannot read {what} ({exc.strerror})") from None

    def _check_layout_file(self) -> None:
        raw = self._read_bytes_sync(self._layout_path, "oci-layout")
        try:
            data = json.loads(raw)
        except ValueError:
            raise self._malformed("oci-layout is not JSON") from None
        version = data.get("imageLayoutVersion") if isinstance(data, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise self._malformed(f"unsupported imageLayoutVersion {version!r}")

    def _parse_index(self, raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            document = json.loads(raw)
        except ValueError:
            raise self._malformed("index.json is not JSON") from None
        if not isinstance(document, dict):
            raise self._malformed("index.json is not a JSON object")
        if document.get("schemaVersion") != 2:
            raise self._malformed("index.json has no schemaVersion 2")
        entries = document.get("manifests", [])
        if not isinstance(entries, list):
            raise self._malformed("index.json has no manifests list")
        for entry in entries:
            try:
                Descriptor.from_json(entry)
            except InputError as exc:
                raise self._malformed(f"index.json: {exc.message}") from None
        return document, entries

    # ------------------------------------------------------------- index.json

    def _stat_key(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._index_path)
        except FileNotFoundError:
            raise self._malformed("index.json disappeared") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _load_index(self, *, fresh: bool = False) -> _IndexSnapshot:
        """The current ``index.json``, re-read when the file changed on disk (or ``fresh``)."""
        key = self._stat_key()
        snap = self._snapshot
        if snap is not None and snap.key == key and not fresh:
            return snap
        try:
            async with aiofiles.open(self._index_path, "rb") as fh:
                raw = await fh.read()
        except OSError as exc:
            raise self._malformed(f"cannot read index.json ({exc.strerror})") from None
        document, entries = self._parse_index(raw)
        snap = _IndexSnapshot(key=key, document=document, entries=entries)
        self._snapshot = snap
        return snap

    async def _entries(self) -> list[dict[str, Any]]:
        return (await self._load_index()).entries

    async def _update_index(self, mutation: IndexMutation) -> None:
        """Apply ``mutation`` to ``index.json``'s manifests, atomically and durably.

        Concurrent callers are group-committed: whoever holds the lock applies
        every pending mutation in one rewrite.  A mutation that raises is
        skipped (the others still apply) and its caller gets the exception.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((mutation, fut))
        async with self._index_lock:
            if not fut.done():
                batch, self._pending = self._pending, []
                try:
                    await self._commit(batch)
                except asyncio.CancelledError:
                    # Hand the others back; mutations are idempotent, so a
                    # batch that did reach the disk may safely apply again.
                    self._pending[:0] = [(m, f) for m, f in batch if f is not fut and not f.done()]
                    raise
                except BaseException as exc:
                    for _, other in batch:
                        if not other.done():
                            other.set_exception(exc)
        await fut

    async def _commit(self, batch: Sequence[tuple[IndexMutation, asyncio.Future[None]]]) -> None:
        with self._disk_errors("lock oci-layout"):
            fd = await anyio.to_thread.run_sync(os.open, self._layout_path, os.O_RDONLY)
        try:
            with self._disk_errors("lock oci-layout"):
                await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
            snap = await self._load_index(fresh=True)
            entries = [dict(e) for e in snap.entries]
            applied: list[asyncio.Future[None]] = []
            for mutation, fut in batch:
                trial = list(entries)
                try:
                    mutation(trial)
                except Exception as exc:
                    fut.set_exception(exc)
                    continue
                entries = trial
                applied.append(fut)
            document = dict(snap.document)
            document["manifests"] = entries
            await self._write_index(document)
            self._snapshot = _IndexSnapshot(
                key=self._stat_key(), document=document, entries=entries
            )
            for fut in applied:
                fut.set_result(None)
            log.debug("oci_layout_index_written", layout=self.display, updates=len(applied))
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    async def _write_index(self, document: Mapping[str, Any]) -> None:
        data = json.dumps(document, separators=(",", ":")).encode()
        tmp = self._root / f"index.json{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with self._disk_errors("write index.json"):
                async with aiofiles.open(tmp, "wb") as fh:
                    await fh.write(data)
                    await fh.flush()
                    await anyio.to_thread.run_sync(os.fsync, fh.fileno())
                await anyio.to_thread.run_sync(os.replace, tmp, self._index_path)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_unlink_quietly, tmp)
        with self._disk_errors("sync the layout directory"):
            await anyio.to_thread.run_sync(lambda: _fsync_path(self._root, directory=True))

    # ------------------------------------------------------------------- blobs

    def _blob_path(self, digest: str) -> Path:
        try:
            validate_digest(digest)
        except InputError as exc:
            raise InputError(f"{self.display}: {exc.message}") from None
        alg, _, hexpart = digest.partition(":")
        return self._blobs / alg / hexpart

    def _blob_size(self, digest: str) -> int | None:
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def _has_blob(self, desc: Descriptor) -> bool:
        return self._blob_size(desc.digest) == desc.size

    async def blob_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when a file of the right size exists under the blob's digest."""
        return self._has_blob(desc)

    async def manifest_exists(self, repository: str, desc: Descriptor) -> bool:
        """True when the manifest's bytes are in the blob store (listed or not)."""
        return self._has_blob(desc)

    async def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """The blob store is shared by all repositories: true when the blob exists."""
        return self._has_blob(desc)

    @contextlib.contextmanager
    def _disk_errors(self, what: str) -> Iterator[None]:
        """Turn an OSError of a disk operation into one clear LayoutError."""
        try:
            yield
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            if exc.errno == errno.ENOSPC:
                reason = "no space left on device"
            raise LayoutError(f"{self.display}: cannot {what} ({reason})") from None

    async def _store(self, desc: Descriptor, chunks: AsyncIterator[bytes]) -> int:
        """Write a verified blob into place; return the bytes written.

        Errors of the source stream propagate unchanged; disk errors become a
        LayoutError.  The temporary file is gone afterwards in every case.
        """
        final = self._blob_path(desc.digest)
        verifier = DigestVerifier(desc.digest, desc.size)
        what = f"write {desc.digest}"
        with self._disk_errors(f"create {final.parent}"):
            await anyio.to_thread.run_sync(lambda: final.parent.mkdir(parents=True, exist_ok=True))
        tmp = final.parent / f"{_TMP_PREFIX}{final.name[:16]}-{uuid.uuid4().hex}"
        try:
            with self._disk_errors(what):
                fh = await aiofiles.open(tmp, "wb")
            try:
                async for chunk in chunks:
                    verifier.update(chunk)
                    with self._disk_errors(what):
                        await fh.write(chunk)
                verifier.verify()
                with self._disk_errors(what):
                    await fh.flush()
                    await anyio.to_thread.run_sync(os.fsync, fh.fileno())
            finally:
                with anyio.CancelScope(shield=True):
                    await fh.close()
            with self._disk_errors(what):
                await anyio.to_thread.run_sync(os.replace, tmp, final)
                await anyio.to_thread.run_sync(lambda: _fsync_path(final.parent, directory=True))
        finally:
            with anyio.CancelScope(shield=True):
                closer = getattr(chunks, "aclose", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()
                await anyio.to_thread.run_sync(_unlink_quietly, tmp)
        return verifier.seen

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
        """Store the blob ``opener(0)`` yields, verified; ``"exists"`` if already present.

        Always writes from offset 0 into a fresh temporary file: ``resume``,
        ``on_progress`` and ``chunk_size`` are accepted and ignored.  ``verify``
        is accepted and ignored too: the layout always hashes what it writes, so
        no unverified temporary file is ever renamed into place.
        """
        if self._has_blob(desc):
            return BlobPushResult("exists")
        written = await self._store(desc, opener(0))
        log.debug("oci_layout_blob_written", layout=self.display, digest=desc.digest, size=written)
        return BlobPushResult("uploaded", bytes_sent=written)

    async def fetch_blob(
        self, repository: str, desc: Descriptor, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream a blob from ``offset`` in 1 MiB chunks.

        The file size must match ``desc.size``.  Read from 0, the bytes are
        hashed and the last chunk is yielded only after the digest verified.
        """
        path = self._blob_path(desc.digest)
        size = self._blob_size(desc.digest)
        if size is None:
            raise NotFoundError(
                f"blob {desc.digest} not found in {self.display}",
                registry=self.display,
                repository=repository,
            )
        if size != desc.size:
            raise IntegrityError(
                f"{self.display}: blob {desc.digest} has {size} bytes on disk, expected {desc.size}"
            )
        if offset < 0 or offset > size:
            raise InputError(f"offset {offset} is outside blob {desc.digest} of {size} bytes")
        verifier = DigestVerifier(desc.digest, desc.size) if offset == 0 else None
        what = f"read {desc.digest}"
        with self._disk_errors(what):
            fh = await aiofiles.open(path, "rb")
        try:
            if offset:
                with self._disk_errors(what):
                    await fh.seek(offset)
            held: bytes | None = None
            while True:
                with self._disk_errors(what):
                    chunk = await fh.read(READ_CHUNK)
                if not chunk:
                    break
                if verifier is not None:
                    verifier.update(chunk)
                if held is not None:
                    yield held
                held = chunk
            if verifier is not None:
                try:
                    verifier.verify()
                except IntegrityError as exc:
                    raise IntegrityError(f"{self.display}: corrupt blob: {exc.message}") from None
            if held is not None:
                yield held
        finally:
            with anyio.CancelScope(shield=True):
                await fh.close()

    # --------------------------------------------------------------- manifests

    async def _read_manifest(self, digest: str, size: int | None, repository: str) -> bytes:
        path = self._blob_path(digest)
        try:
            async with aiofiles.open(path, "rb") as fh:
                raw = await fh.read(MAX_MANIFEST_SIZE + 1)
        except FileNotFoundError:
            raise NotFoundError(
                f"manifest {digest} not found in {self.display}",
                registry=self.display,
                repository=repository,
            ) from None
        except OSError as exc:
            raise LayoutError(f"{self.display}: cannot read {digest} ({exc.strerror})") from None
        if len(raw) > MAX_MANIFEST_SIZE:
            raise IntegrityError(
                f"{self.display}: manifest {digest} is larger than {MAX_MANIFEST_SIZE} bytes"
            )
        try:
            verify_bytes(raw, digest, size)
        except IntegrityError as exc:
            raise IntegrityError(f"{self.display}: corrupt manifest: {exc.message}") from None
        return raw

    def _remember(self, digest: str, raw: bytes, media_type: str | None) -> _ManifestInfo:
        manifest = parse_manifest(raw, media_type)
        info = _ManifestInfo(
            media_type=manifest.media_type,
            size=len(raw),
            subject=manifest.subject.digest if manifest.subject else None,
            artifact_type=manifest.artifact_type,
            annotations=dict(manifest.annotations) if manifest.annotations else None,
            children=frozenset(c.digest for c in manifest.children()),
        )
        self._infos[digest] = info
        return info

    async def _info(
        self, digest: str, media_type: str | None = None, *, quiet: bool = False
    ) -> _ManifestInfo | None:
        """Parsed facts about a stored manifest; None when missing or unparsable.

        A missing or broken manifest is logged as a warning unless ``quiet``.
        """
        info = self._infos.get(digest)
        if info is not None:
            return info
        if quiet and self._blob_size(digest) is None:
            return None
        try:
            raw = await self._read_manifest(digest, None, "")
            return self._remember(digest, raw, media_type)
        except (NotFoundError, IntegrityError, InputError, LayoutError) as exc:
            log.warning(
                "oci_layout_manifest_unreadable", layout=self.display, digest=digest, error=str(exc)
            )
            return None

    @staticmethod
    def _public(entry: Mapping[str, Any]) -> Descriptor:
        """An index.json entry as a descriptor, without the ref.name annotation."""
        desc = Descriptor.from_json(entry)
        annotations = {k: v for k, v in (desc.annotations or {}).items() if k != REF_NAME}
        return Descriptor(
            media_type=desc.media_type,
            digest=desc.digest,
            size=desc.size,
            annotations=annotations or None,
            artifact_type=desc.artifact_type,
            platform=desc.platform,
            urls=desc.urls,
        )

    async def _find_tag(self, repository: str, tag: str) -> dict[str, Any] | None:
        name = ref_name_for(repository, tag)
        for entry in await self._entries():
            if _entry_ref_name(entry) == name:
                return entry
        return None

    def _not_found(self, repository: str, reference: str) -> NotFoundError:
        where = f"{repository}:{reference}" if repository else reference
        if ":" in reference:
            where = f"{repository}@{reference}" if repository else reference
        return NotFoundError(
            f"{where} not found in {self.display}", registry=self.display, repository=repository
        )

    async def resolve(self, repository: str, reference: str) -> Descriptor:
        """Descriptor of the manifest a tag (of ``repository``) or a digest names.

        By digest the manifest file must exist; its media type comes from an
        ``index.json`` entry, failing that from parsing the manifest.
        """
        if ":" not in reference:
            _check_tag(reference)
            entry = await self._find_tag(repository, reference)
            if entry is None:
                raise self._not_found(repository, reference)
            return self._public(entry)
        size = self._blob_size(reference)
        if size is None:
            raise self._not_found(repository, reference)
        for entry in await self._entries():
            if entry.get("digest") == reference:
                public = self._public(entry)
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
        try:
            if size > MAX_MANIFEST_SIZE:
                raise InputError("too large for a manifest")
            raw = await self._read_manifest(reference, size, repository)
            info = self._remember(reference, raw, None)
        except InputError:
            raise NotFoundError(
                f"{reference} in {self.display} is not a manifest",
                registry=self.display,
                repository=repository,
            ) from None
        return Descriptor(
            media_type=info.media_type,
            digest=reference,
            size=size,
            artifact_type=info.artifact_type,
        )

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and its exact bytes, verified against the digest."""
        desc = (
            reference
            if isinstance(reference, Descriptor)
            else await self.resolve(repository, reference)
        )
        raw = await self._read_manifest(desc.digest, desc.size, repository)
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
            _check_tag(tag)
        try:
            verify_bytes(raw, desc.digest, desc.size)
        except IntegrityError as exc:
            raise IntegrityError(f"{self.display}: manifest push refused: {exc.message}") from None
        info = self._remember(desc.digest, raw, desc.media_type)
        if not self._has_blob(desc):
            await self._store(desc, _once(raw))
        for child in info.children:  # learn whether untagged children are referrers
            await self._info(child, quiet=True)
        entry_desc = Descriptor(media_type=info.media_type, digest=desc.digest, size=desc.size)
        names = tuple(ref_name_for(repository, t) for t in tags)
        await self._update_index(self._listing_mutation(entry_desc, info, names))
        log.debug(
            "oci_layout_manifest_pushed",
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

    def _listing_mutation(
        self, desc: Descriptor, info: _ManifestInfo, names: tuple[str, ...]
    ) -> IndexMutation:
        infos = self._infos

        def mutate(entries: list[dict[str, Any]]) -> None:
            displaced: set[str] = set()
            if names:  # a tagged manifest needs no untagged entry besides
                entries[:] = [
                    e
                    for e in entries
                    if e.get("digest") != desc.digest or _entry_ref_name(e) is not None
                ]
            for name in names:
                for i in range(len(entries) - 1, -1, -1):
                    if _entry_ref_name(entries[i]) == name:
                        displaced.add(str(entries[i].get("digest")))
                        del entries[i]
                entries.append(_index_entry(desc, info, name))
            listed = {e.get("digest") for e in entries}
            if not names and desc.digest not in listed:
                entries.append(_index_entry(desc, info, None))
            if info.children:
                entries[:] = [
                    e
                    for e in entries
                    if not (
                        e.get("digest") in info.children
                        and _entry_ref_name(e) is None
                        and _known_plain(infos, e)
                    )
                ]
            listed = {e.get("digest") for e in entries}
            for digest in displaced - {d for d in listed if isinstance(d, str)}:
                old = infos.get(digest)
                if old is not None and old.subject is not None:
                    entries.append(
                        _index_entry(
                            Descriptor(media_type=old.media_type, digest=digest, size=old.size),
                            old,
                            None,
                        )
                    )

        return mutate

    async def tag(self, repository: str, desc: Descriptor, raw: bytes, tag: str) -> None:
        """Point ``tag`` of ``repository`` at the manifest ``desc`` (stored if missing)."""
        await self.push_manifest(repository, desc, raw, (tag,))

    async def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` only, sorted (referrers fallback tags included)."""
        found: set[str] = set()
        for entry in await self._entries():
            name = _entry_ref_name(entry)
            if name is None:
                continue
            tag = tag_of_ref_name(repository, name)
            if tag is not None:
                found.add(tag)
        return sorted(found)

    # --------------------------------------------------------------- referrers

    async def referrers(
        self, repository: str, desc: Descriptor, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``desc``: listed ones and the fallback tag's.

        Each descriptor carries the referrer's ``artifactType`` and annotations.
        """
        found: dict[str, Descriptor] = {}
        for entry in list(await self._entries()):
            digest = entry.get("digest")
            media_type = entry.get("mediaType")
            if not isinstance(digest, str) or digest in found:
                continue
            if not isinstance(media_type, str) or not mediatype.is_manifest(media_type):
                continue
            info = await self._info(digest, media_type)
            if info is None or info.subject != desc.digest:
                continue
            found[digest] = Descriptor(
                media_type=info.media_type,
                digest=digest,
                size=info.size,
                artifact_type=info.artifact_type,
                annotations=info.annotations,
            )
        for child in await self._fallback_referrers(repository, desc.digest):
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
            raw = await self._read_manifest(digest, None, repository)
            manifest = parse_manifest(raw, None)
        except (NotFoundError, IntegrityError, InputError, LayoutError) as exc:
            log.warning(
                "oci_layout_fallback_tag_ignored", layout=self.display, tag=tag, error=str(exc)
            )
            return None
        if not manifest.is_index:
            log.warning(
                "oci_layout_fallback_tag_ignored",
                layout=self.display,
                tag=tag,
                error=f"it holds {manifest.media_type}, not an index",
            )
            return None
        return tag, list(manifest.children())

    async def _fallback_referrers(self, repository: str, subject: str) -> list[Descriptor]:
        found = await self._fallback_index(repository, subject)
        return found[1] if found else []

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
        if self._blob_size(desc.digest) is None:
            raise self._not_found(repository, desc.digest)
        info = await self._info(desc.digest, desc.media_type)
        digest = desc.digest

        def mutate(entries: list[dict[str, Any]]) -> None:
            entries[:] = [
                e
                for e in entries
                if e.get("digest") != digest
                or (
                    (name := _entry_ref_name(e)) is not None
                    and tag_of_ref_name(repository, name) is None
                )
            ]

        await self._update_index(mutate)
        if info is not None and info.subject is not None:
            await self._drop_from_fallback(repository, info.subject, digest)
        if await self._still_needed(digest):
            log.info("oci_layout_manifest_unlisted", layout=self.display, digest=digest)
            return
        await anyio.to_thread.run_sync(_unlink_quietly, self._blob_path(digest))
        log.info("oci_layout_manifest_deleted", layout=self.display, digest=digest)

    async def _still_needed(self, digest: str) -> bool:
        for entry in await self._entries():
            other = entry.get("digest")
            if other == digest:
                return True
            media_type = entry.get("mediaType")
            if (
                isinstance(other, str)
                and isinstance(media_type, str)
                and mediatype.is_index(media_type)
            ):
                info = await self._info(other, media_type)
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
        name = ref_name_for(repository, tag)
        if not remaining:

            def untag(entries: list[dict[str, Any]]) -> None:
                entries[:] = [e for e in entries if _entry_ref_name(e) != name]

            await self._update_index(untag)
            return
        raw = build_index(remaining)
        await self.push_manifest(repository, descriptor_for(raw, mediatype.OCI_INDEX), raw, (tag,))

    async def aclose(self) -> None:
        """Nothing to release: files are opened per call."""
        self._infos.clear()


def _known_plain(infos: Mapping[str, _ManifestInfo], entry: Mapping[str, Any]) -> bool:
    """True when the entry's manifest is known to have no subject (not a referrer)."""
    info = infos.get(str(entry.get("digest")))
    return info is not None and info.subject is None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
