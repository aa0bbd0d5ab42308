"""Build and push an artifact (``push``) or a referrer (``attach``) through a Target.

The manifest is an OCI image manifest with ``artifactType``, the empty config
(``application/vnd.oci.empty.v1+json``, content ``{}``) and one layer per file
or directory, the way ORAS 1.1 writes it.  Blobs go up first (concurrently,
up to a limit), the manifest last; a manifest with a ``subject`` is pushed by
digest only and the target makes it findable as a referrer.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import structlog

from replicator.artifacts.files import (
    ANNOTATION_CONTENT_DIGEST,
    ANNOTATION_CREATED,
    ANNOTATION_TITLE,
    ANNOTATION_UNPACK,
    CONFIG_KEY,
    MANIFEST_KEY,
    FileSpec,
    file_digest,
    merge_annotations,
    pack_directory,
)
from replicator.errors import InputError, UsageError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_image_manifest
from replicator.targets.base import BlobOpener, PushResult, Target

log = structlog.get_logger(__name__)

#: ``(action, descriptor, name)``: "Uploading", "Uploaded", "Exists".
EventCallback = Callable[[str, Descriptor, str], None]

_READ_CHUNK = 1024 * 1024
DEFAULT_PUSH_CONCURRENCY = 5  # ORAS's default

# RFC 6838 section 4.2: type "/" subtype, each a restricted-name (a letter or digit,
# then at most 126 of letters, digits and ! # $ & - ^ _ . +); no parameters.
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
#: A media type as an ``artifactType`` may be (anchored).
MEDIA_TYPE_RE = re.compile(rf"^{_RESTRICTED_NAME}/{_RESTRICTED_NAME}\Z")


def check_artifact_type(value: str, *, label: str = "artifact type") -> str:
    """``value`` when it is a media type (RFC 6838 ``type/subtype``), else :class:`UsageError`.

    ``readme/example`` and ``application/vnd.dev.cosign.artifact.sig.v1+json``
    pass; spaces, parameters (``;charset=...``), a missing or extra ``/`` and
    characters outside RFC 6838's restricted names do not.  ``label`` names the
    value in the message (``--artifact-type`` on the command line).
    """
    if MEDIA_TYPE_RE.match(value):
        return value
    shown = value if len(value) <= 80 else value[:79] + "…"
    raise UsageError(
        f"{label} {shown!r} is not a media type: expected type/subtype as in RFC 6838 "
        "(letters, digits and !#$&^_.+- after a leading letter or digit), "
        "e.g. application/vnd.example.sbom.v1+json"
    )


@dataclass(frozen=True, slots=True)
class ArtifactSpec:
    """Everything that defines the artifact manifest, apart from where it goes."""

    files: Sequence[FileSpec]
    artifact_type: str
    #: Manifest annotations (``--annotation`` and the file's ``$manifest``).
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: The annotation file: ``$config`` and per-title maps.
    annotation_file: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    subject: Descriptor | None = None


@dataclass(frozen=True, slots=True)
class _Blob:
    descriptor: Descriptor
    name: str
    path: str | None  # None = in memory
    data: bytes = b""


def created_now() -> str:
    """The current UTC time in RFC 3339 with second precision (``2023-01-10T14:44:06Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_spec(spec: ArtifactSpec) -> None:
    """Refuse a malformed artifact type (UsageError), duplicate titles and
    annotation-file keys naming no file (InputError)."""
    check_artifact_type(spec.artifact_type)
    titles: set[str] = set()
    for f in spec.files:
        if f.title in titles:
            raise InputError(f"two files would have the same title {f.title!r}")
        titles.add(f.title)
    for key in spec.annotation_file:
        if key not in (MANIFEST_KEY, CONFIG_KEY) and key not in titles:
            raise InputError(f"annotation file names {key!r}, which is not a pushed file")


def manifest_annotations(spec: ArtifactSpec) -> dict[str, str]:
    """The manifest's annotations: created time (unless given), then file, then flags."""
    merged = merge_annotations(spec.annotation_file.get(MANIFEST_KEY), spec.annotations)
    if ANNOTATION_CREATED not in merged:
        merged = {ANNOTATION_CREATED: created_now(), **merged}
    return merged


def empty_config(annotations: Mapping[str, str] | None = None) -> Descriptor:
    """The empty config descriptor (``{}``, size 2, the well-known digest)."""
    return Descriptor(
        media_type=mediatype.OCI_EMPTY,
        digest=mediatype.EMPTY_JSON_DIGEST,
        size=len(mediatype.EMPTY_JSON),
        annotations=dict(annotations) if annotations else None,
    )


async def _prepare_layers(spec: ArtifactSpec, workdir: str) -> list[_Blob]:
    blobs: list[_Blob] = []
    for index, f in enumerate(spec.files):
        extra = spec.annotation_file.get(f.title)
        if f.is_dir:
            dest = os.path.join(workdir, f"layer-{index}.tar.gz")
            packed = await anyio.to_thread.run_sync(pack_directory, f.path, f.title, dest)
            annotations = merge_annotations(
                {
                    ANNOTATION_CONTENT_DIGEST: packed.content_digest,
                    ANNOTATION_UNPACK: "true",
                    ANNOTATION_TITLE: f.title,
                },
                extra,
            )
            desc = Descriptor(f.media_type, packed.digest, packed.size, annotations=annotations)
            blobs.append(_Blob(desc, f.title, packed.path))
        else:
            try:
                digest, size = await anyio.to_thread.run_sync(file_digest, f.path)
            except OSError as exc:
                raise InputError(f"{f.path}: cannot read ({exc.strerror})") from None
            annotations = merge_annotations({ANNOTATION_TITLE: f.title}, extra)
            desc = Descriptor(f.media_type, digest, size, annotations=annotations)
            blobs.append(_Blob(desc, f.title, f.path))
    return blobs


def _opener(blob: _Blob) -> BlobOpener:
    async def open_at(offset: int) -> AsyncIterator[bytes]:
        if blob.path is None:
            yield blob.data[offset:]
            return
        async with await anyio.open_file(blob.path, "rb") as fh:
            await fh.seek(offset)
            while chunk := await fh.read(_READ_CHUNK):
                yield chunk

    return open_at


async def _upload(
    target: Target,
    repository: str,
    blobs: Sequence[_Blob],
    concurrency: int,
    on_event: EventCallback | None,
) -> None:
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def one(blob: _Blob) -> None:
        async with limiter:
            if on_event:
                on_event("Uploading", blob.descriptor, blob.name)
            result = await target.push_blob(repository, blob.descriptor, _opener(blob))
            log.debug("artifact.blob_pushed", digest=blob.descriptor.digest, how=result.how)
            if on_event:
                on_event(
                    "Exists" if result.how == "exists" else "Uploaded", blob.descriptor, blob.name
                )

    async with anyio.create_task_group() as tg:
        for blob in blobs:
            tg.start_soon(one, blob)


async def push_artifact(
    target: Target,
    repository: str,
    spec: ArtifactSpec,
    *,
    tags: Sequence[str] = (),
    expected_digest: str | None = None,
    concurrency: int = DEFAULT_PUSH_CONCURRENCY,
    on_event: EventCallback | None = None,
) -> PushResult:
    """Pack, upload and push an artifact; return the manifest's push result.

    Directories are packed into a private temporary directory that is removed
    afterwards.  ``expected_digest`` (a reference given by digest) must match
    the manifest built, else :class:`InputError` and nothing is pushed but
    blobs.  Guarantees: every blob is confirmed by the target before the
    manifest is pushed; the manifest bytes pushed are the ones whose digest is
    returned.
    """
    check_spec(spec)
    with tempfile.TemporaryDirectory(prefix="replicator-push-") as workdir:
        layers = await _prepare_layers(spec, workdir)
        config = empty_config(spec.annotation_file.get(CONFIG_KEY))
        config_blob = _Blob(config, mediatype.OCI_EMPTY, None, mediatype.EMPTY_JSON)
        annotations = manifest_annotations(spec)
        raw = build_image_manifest(
            config=config,
            layers=[b.descriptor for b in layers],
            artifact_type=spec.artifact_type,
            subject=spec.subject,
            annotations=annotations,
        )
        desc = descriptor_for(
            raw,
            mediatype.OCI_MANIFEST,
            artifact_type=spec.artifact_type,
            annotations=annotations or None,
        )
        if expected_digest is not None and expected_digest != desc.digest:
            raise InputError(
                f"the manifest built has digest {desc.digest}, not the {expected_digest} "
                "named by the reference"
            )
        await _upload(target, repository, [*layers, config_blob], concurrency, on_event)
    result = await target.push_manifest(repository, desc, raw, tuple(tags))
    log.debug(
        "artifact.pushed",
        repository=repository,
        digest=desc.digest,
        artifact_type=spec.artifact_type,
        subject=spec.subject.digest if spec.subject else None,
        tags=list(tags),
    )
    return result
