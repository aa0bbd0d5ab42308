"""Pull an artifact's titled layers into a directory, verified and confined to it.

Two phases, so a failure leaves nothing half-written:

1. *Stage*: every titled layer is downloaded into a private staging directory
   inside the output directory, checked against its digest and size; a layer
   with ``io.deis.oras.content.unpack: "true"`` is decompressed (its tar's
   sha256 checked against ``io.deis.oras.content.digest``), validated entry by
   entry (see :mod:`replicator.artifacts.extract`) and unpacked in staging.
2. *Commit*: each staged file or directory is renamed to its title.

Nothing is renamed before every layer passed phase 1; the staging directory is
removed whatever happens.  Titles and tar entries that would land outside the
output directory raise :class:`~replicator.errors.UnsafePathError`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog

from replicator.artifacts.extract import (
    check_real_directory,
    check_title,
    ensure_real_directory,
    extract_tar,
    replace_path,
    validate_tar,
)
from replicator.artifacts.files import ANNOTATION_CONTENT_DIGEST, ANNOTATION_UNPACK
from replicator.errors import InputError, IntegrityError, ProtocolError, UnsafePathError
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import DigestVerifier
from replicator.oci.manifest import Manifest, parse_manifest
from replicator.targets.base import Target

log = structlog.get_logger(__name__)

#: ``(action, descriptor, name)``: "Downloading", "Downloaded".
EventCallback = Callable[[str, Descriptor, str], None]

DEFAULT_PULL_CONCURRENCY = 5
_CHUNK = 1024 * 1024
_STAGING_PREFIX = ".replicator-pull-"


@dataclass(frozen=True, slots=True)
class PulledLayer:
    """A layer placed in the output directory: where, and whether it was unpacked."""

    descriptor: Descriptor
    title: str
    path: str
    unpacked: bool


@dataclass(slots=True)
class _Staged:
    descriptor: Descriptor
    title: str
    unpack: bool
    blob_path: str
    result_path: str = ""


def titled_layers(manifest: Manifest) -> list[tuple[Descriptor, str]]:
    """The layers to write: ``(descriptor, normalised title)``, titles checked and unique."""
    chosen: list[tuple[Descriptor, str]] = []
    seen: set[str] = set()
    for layer in manifest.layers:
        title = layer.title
        if title is None:
            continue
        path = check_title(title)
        if path in seen:
            raise UnsafePathError(f"two layers have the same title {title!r}")
        seen.add(path)
        chosen.append((layer, path))
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise UnsafePathError(
                    f"layer title {path!r} lies inside layer title {'/'.join(parts[:i])!r}"
                )
    return chosen


async def _download(
    target: Target, repository: str, item: _Staged, on_event: EventCallback | None
) -> None:
    if on_event:
        on_event("Downloading", item.descriptor, item.title)
    verifier = DigestVerifier(item.descriptor.digest, item.descriptor.size)
    async with await anyio.open_file(item.blob_path, "wb") as out:
        async for chunk in target.fetch_blob(repository, item.descriptor):
            verifier.update(chunk)
            await out.write(chunk)
    verifier.verify()
    if on_event:
        on_event("Downloaded", item.descriptor, item.title)


def _decompress(blob_path: str, tar_path: str) -> str:
    """Write the tar inside ``blob_path`` (gzip or plain) to ``tar_path``; return its sha256."""
    with open(blob_path, "rb") as probe:
        magic = probe.read(2)
    h = hashlib.sha256()
    opener = gzip.open if magic == b"\x1f\x8b" else open
    try:
        with opener(blob_path, "rb") as src, open(tar_path, "wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno:
            raise
        raise IntegrityError(f"layer is not a valid gzip stream: {exc}") from None
    return f"sha256:{h.hexdigest()}"


def _unpack(item: _Staged, staging: str, index: int) -> None:
    tar_path = os.path.join(staging, f"tar-{index}")
    content_digest = _decompress(item.blob_path, tar_path)
    os.unlink(item.blob_path)
    want = (item.descriptor.annotations or {}).get(ANNOTATION_CONTENT_DIGEST)
    if want is not None and want != content_digest:
        raise IntegrityError(
            f"layer {item.title!r}: tar digest {content_digest} does not match "
            f"{ANNOTATION_CONTENT_DIGEST} {want}"
        )
    tree = os.path.join(staging, f"tree-{index}")
    os.mkdir(tree)
    try:
        with tarfile.open(tar_path, "r:") as tar:
            plan = validate_tar(tar, item.title)
            item.result_path = extract_tar(tar, plan, tree)
    except tarfile.TarError as exc:
        raise IntegrityError(f"layer {item.title!r} is not a valid tar: {exc}") from None
    finally:
        os.unlink(tar_path)


def _commit(outdir: str, staged: list[_Staged]) -> list[PulledLayer]:
    for item in staged:  # every destination checked before the first rename
        parent = item.title.rpartition("/")[0]
        if parent:
            check_real_directory(outdir, parent)
    placed: list[PulledLayer] = []
    for item in staged:
        parent, _, _ = item.title.rpartition("/")
        directory = ensure_real_directory(outdir, parent) if parent else outdir
        final = os.path.join(directory, item.title.rpartition("/")[2])
        replace_path(item.result_path, final)
        placed.append(PulledLayer(item.descriptor, item.title, final, item.unpack))
    return placed


async def pull_artifact(
    target: Target,
    repository: str,
    reference: str,
    outdir: str,
    *,
    concurrency: int = DEFAULT_PULL_CONCURRENCY,
    on_event: EventCallback | None = None,
) -> tuple[Descriptor, list[PulledLayer]]:
    """Pull the manifest ``reference`` of ``repository`` into ``outdir``.

    Returns the manifest descriptor and the layers placed.  Layers without a
    title are skipped (as ORAS does).  Raises :class:`UnsafePathError` (nothing
    written), :class:`IntegrityError` (a digest did not match; nothing written)
    or :class:`InputError` (``reference`` names an index, ``outdir`` unusable).
    """
    desc, raw = await target.fetch_manifest(repository, reference)
    try:
        manifest = parse_manifest(raw, desc.media_type)
    except InputError as exc:  # what the source sent, not the user's input
        raise ProtocolError(f"{repository}@{desc.digest}: {exc}") from None
    if manifest.is_index:
        raise InputError(f"{desc.digest} is an index; pull one of its manifests instead")
    layers = titled_layers(manifest)
    try:
        os.makedirs(outdir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=outdir)
    except OSError as exc:
        raise InputError(f"cannot use output directory {outdir}: {exc.strerror}") from None
    try:
        staged = [
            _Staged(
                layer,
                title,
                (layer.annotations or {}).get(ANNOTATION_UNPACK) == "true",
                os.path.join(staging, f"blob-{i}"),
            )
            for i, (layer, title) in enumerate(layers)
        ]
        limiter = anyio.CapacityLimiter(max(1, concurrency))

        async def fetch(item: _Staged) -> None:
            async with limiter:
                await _download(target, repository, item, on_event)

        async with anyio.create_task_group() as tg:
            for item in staged:
                tg.start_soon(fetch, item)
        for i, item in enumerate(staged):
            if item.unpack:
                await anyio.to_thread.run_sync(_unpack, item, staging, i)
            else:
                item.result_path = item.blob_path
        placed = await anyio.to_thread.run_sync(_commit, outdir, staged)
    except OSError as exc:
        raise InputError(f"cannot write into {outdir}: {exc.strerror or exc}") from None
    finally:
        await anyio.to_thread.run_sync(_remove_tree, staging)
    log.debug("artifact pulled", repository=repository, digest=desc.digest, layers=len(placed))
    return desc, placed


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
