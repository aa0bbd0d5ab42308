"""The end of a create: the layout files, the parts' digests, ``bundle.json`` and its signature.

Called once the engine run succeeded (every selected graph is in the writer).
In order: a ``finalizing`` mark in the log (a kill from here on makes the
rerun cut the parts back to it and finalize again), the referrers fallback
indexes and ``index.json`` appended to the stream (:mod:`.layout`), the
end-of-archive marker, every part fsynced and hashed, the signature file, then
``bundle.json`` (written atomically: its presence means the bundle is
complete), then the log removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator.bundle.appender import blob_path
from replicator.bundle.layout import fallback_indexes, index_json
from replicator.bundle.model import (
    DOCUMENT_NAME,
    SIGNATURE_NAME,
    BaseRecord,
    BlobRecord,
    BundleDocument,
    Content,
    ManifestRecord,
    PartRecord,
    RepositoryContent,
    StoredFile,
    part_name,
)
from replicator.bundle.signing import SigningKey
from replicator.bundle.spans import read_spans
from replicator.bundle.state import Member
from replicator.bundle.tarformat import END_OF_ARCHIVE, PartStream
from replicator.bundle.writer import BundleWriter
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import parse_manifest
from replicator.targets.ocilayout.entries import ManifestInfo, listed_artifact_type
from replicator.targets.ocilayout.files import write_atomically

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Finish:
    """What ``bundle.json`` says besides the writer's state."""

    jobs: list[Any]
    tool: str
    roots: dict[str, set[str]]
    base: BaseRecord | None
    sign_key: SigningKey | None


def _parse_stored(
    directory: Path, manifests: list[Member]
) -> tuple[dict[str, ManifestInfo], dict[str, list[str]]]:
    """Every stored manifest's layout facts and blob digests (blocking: reads the parts)."""
    infos: dict[str, ManifestInfo] = {}
    blobs: dict[str, list[str]] = {}
    for member in manifests:
        raw = read_spans(directory, member.spans)
        m = parse_manifest(raw, member.media_type)
        infos[member.digest] = ManifestInfo(
            media_type=m.media_type,
            size=len(raw),
            subject=m.subject.digest if m.subject else None,
            artifact_type=m.artifact_type,
            listed_type=listed_artifact_type(m),
            annotations=dict(m.annotations) or None,
            children=frozenset(c.digest for c in m.children()),
        )
        blobs[member.digest] = [b.digest for b in m.blobs()]
    return infos, blobs


def content_of(
    writer: BundleWriter, roots: dict[str, set[str]], blobs_of: dict[str, list[str]]
) -> Content:
    """The bundle's content list from the writer's state."""
    state = writer.state
    content = Content()
    for digest, member in state.members.items():
        if member.kind == "manifest":
            content.manifests[digest] = ManifestRecord(
                member.media_type, member.size, member.artifact_type, member.subject
            )
        elif member.kind == "blob":
            content.blobs[digest] = BlobRecord(member.media_type, member.size)
    names = set(state.repo_manifests) | set(state.tags) | set(roots)
    for name in sorted(names):
        manifests = set(state.repo_manifests.get(name, set()))
        content.repositories[name] = RepositoryContent(
            tags=dict(state.tags.get(name, {})),
            roots=set(roots.get(name, set())),
            manifests=manifests,
            blobs={b for d in manifests for b in blobs_of.get(d, [])},
        )
    return content


async def _store_layout_file(
    writer: BundleWriter, path: str, desc: Descriptor, raw: bytes
) -> StoredFile:
    member = writer.state.members.get(desc.digest) or writer.state.layout.get(path)
    if member is None:
        seq = await writer.appender.append_bytes("layout", desc, raw, path=path)
        await writer.appender.commit(seq)
        member = writer.state.layout[path]
    return StoredFile(desc.digest, desc.size, member.spans)


async def finalize(writer: BundleWriter, finish: Finish) -> BundleDocument:
    """Write the layout files, seal the parts, write ``bundle.json`` (see the module doc)."""
    state = writer.state
    appender = writer.appender
    await appender.commit(appender.note({"finalizing": list(appender.stream.position)}))
    state.finalizing = appender.stream.position
    stored = [m for m in state.members.values() if m.kind == "manifest"]
    infos, blobs_of = await anyio.to_thread.run_sync(_parse_stored, writer.directory, stored)
    content = content_of(writer, finish.roots, blobs_of)
    repos = {name: repo.manifests for name, repo in content.repositories.items()}
    indexes = fallback_indexes(repos, infos)
    layout = {"oci-layout": _stored(state.layout["oci-layout"])}
    for desc, raw in dict((d.digest, (d, r)) for d, r in indexes.values()).values():
        path = blob_path(desc.digest)
        layout[path] = await _store_layout_file(writer, path, desc, raw)
    index = index_json(
        {n: r.tags for n, r in content.repositories.items()},
        {n: r.roots for n, r in content.repositories.items()},
        infos,
        indexes,
    )
    layout["index.json"] = await _store_layout_file(
        writer, "index.json", descriptor_for(index, mediatype.OCI_INDEX), index
    )
    parts = await anyio.to_thread.run_sync(_seal, appender.stream)
    document = BundleDocument(
        id=state.identity.id,
        tool=finish.tool,
        created=state.identity.created,
        jobs=finish.jobs,
        max_part_size=appender.stream.max,
        content=content,
        spans={d: m.spans for d, m in state.members.items()},
        layout=layout,
        parts=parts,
        base=finish.base,
    )
    raw = document.render()
    await anyio.to_thread.run_sync(_write_documents, writer.directory, raw, finish.sign_key)
    appender.log_file.remove()
    log.info(
        "bundle.created",
        bundle=str(writer.directory),
        parts=len(parts),
        bytes=document.size,
        content_digest=document.content_digest,
        commits=appender.commits,
    )
    return document


def _stored(member: Member) -> StoredFile:
    return StoredFile(member.digest, member.size, member.spans)


def _seal(stream: PartStream) -> list[PartRecord]:
    """End-of-archive marker, every part fsynced; the parts' records (blocking)."""
    stream.start_member(len(END_OF_ARCHIVE))
    stream.write(END_OF_ARCHIVE)
    stream.sync()
    return [PartRecord(part_name(i), size, sha) for i, (size, sha) in enumerate(stream.digests())]


def _write_documents(directory: Path, raw: bytes, key: SigningKey | None) -> None:
    """The signature first, then ``bundle.json`` (each atomically)."""
    if key is not None:
        write_atomically(directory / SIGNATURE_NAME, key.sign(raw))
    write_atomically(directory / DOCUMENT_NAME, raw)
