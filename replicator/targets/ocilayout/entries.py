"""``index.json`` entries: tag names, what a manifest's entry says, and the listing rules.

Pure: no I/O.  The mutations built here are handed to
:meth:`~replicator.targets.ocilayout.index_store.IndexStore.update`.

Tags.  One layout holds many repositories.  A tag of the repository ``""`` is
stored as the plain tag (``ref.name`` = ``v1``, what skopeo and oras write for
``oci:PATH:v1``); a tag of any other repository as ``<repository>:<tag>``.

The ``artifactType`` of an entry.  The image-spec describes a descriptor's
``artifactType`` as the type of an artifact *when the descriptor points to an
artifact*, and names the config media type as that type for an image manifest
used as an artifact; its artifact guidance says such a config type is not an
image config type.  So an entry gets:

1. the manifest's (or index's) own ``artifactType`` when it declares one;
2. else, for an image manifest whose config media type is neither an image
   config (``application/vnd.oci.image.config.v1+json``, Docker's
   ``application/vnd.docker.container.image.v1+json``) nor the empty
   descriptor's, that config media type (an artifact such as a Helm chart
   that says what it is through its config);
3. else none: a plain container image, an index without one.

The referrers listing is a different rule (the referrers API's: the
``artifactType``, else the config media type, also for images) and is kept in
:attr:`ManifestInfo.artifact_type`.

Listing.  Untagged manifest pushes are listed without a ``ref.name``, so
nothing pushed is lost.  When an index is pushed, the untagged entries of its
children are dropped again (the index reaches them) unless they are referrers
(have a ``subject``), which always stay listed so a subject scan finds them.
Re-tagging replaces the old entry of that ``ref.name``; a referrer that loses
its last entry that way is kept as an untagged entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replicator.errors import InputError
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest, parse_manifest
from replicator.oci.reference import TAG_RE
from replicator.targets.ocilayout.index_store import IndexMutation

#: Annotation that names a tag in ``index.json``.
REF_NAME = "org.opencontainers.image.ref.name"

_IMAGE_CONFIG_TYPES = frozenset({mediatype.OCI_CONFIG, mediatype.DOCKER_CONFIG})


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What the target remembers about a parsed manifest (content never changes).

    ``artifact_type`` follows the referrers listing rule, ``listed_type`` the
    ``index.json`` entry rule (see the module docstring).
    """

    media_type: str
    size: int
    subject: str | None
    artifact_type: str | None
    listed_type: str | None
    annotations: Mapping[str, str] | None
    children: frozenset[str]


def manifest_info(raw: bytes, media_type: str | None) -> ManifestInfo:
    """Parse ``raw`` (InputError when it is not a manifest) into a :class:`ManifestInfo`."""
    manifest = parse_manifest(raw, media_type)
    return ManifestInfo(
        media_type=manifest.media_type,
        size=len(raw),
        subject=manifest.subject.digest if manifest.subject else None,
        artifact_type=manifest.artifact_type,
        listed_type=listed_artifact_type(manifest),
        annotations=dict(manifest.annotations) if manifest.annotations else None,
        children=frozenset(c.digest for c in manifest.children()),
    )


def listed_artifact_type(manifest: Manifest) -> str | None:
    """The ``artifactType`` of ``manifest``'s ``index.json`` entry (module docstring rule)."""
    declared = _declared_artifact_type(manifest)
    if declared:
        return declared
    config = manifest.config
    if config is None or config.media_type in _IMAGE_CONFIG_TYPES:
        return None
    if config.media_type == mediatype.OCI_EMPTY:
        return None
    return config.media_type


def _declared_artifact_type(manifest: Manifest) -> str | None:
    found = manifest.artifact_type
    if found is None or manifest.config is None or found != manifest.config.media_type:
        return found
    # The parser fills in the config type when the field is absent: look.
    value = json.loads(manifest.raw).get("artifactType")
    return value if isinstance(value, str) and value else None


def entry_ref_name(entry: Mapping[str, Any]) -> str | None:
    """The ``ref.name`` annotation of an entry, if any."""
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


def check_tag(tag: str) -> str:
    """``tag`` when it is a valid tag; InputError otherwise."""
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise InputError(f"invalid tag {tag!r}")
    return tag


def index_entry(digest: str, info: ManifestInfo, ref_name: str | None) -> dict[str, Any]:
    """The ``index.json`` entry of a manifest, tagged ``ref_name`` (or untagged)."""
    entry: dict[str, Any] = {
        "mediaType": info.media_type,
        "digest": digest,
        "size": info.size,
    }
    if info.listed_type:
        entry["artifactType"] = info.listed_type
    if ref_name is not None:
        entry["annotations"] = {REF_NAME: ref_name}
    return entry


def public_descriptor(entry: Mapping[str, Any]) -> Descriptor:
    """An ``index.json`` entry as a descriptor, without the ``ref.name`` annotation."""
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


def _known_plain(infos: Mapping[str, ManifestInfo], entry: Mapping[str, Any]) -> bool:
    """True when the entry's manifest is known to have no subject (not a referrer)."""
    info = infos.get(str(entry.get("digest")))
    return info is not None and info.subject is None


def listing_mutation(
    digest: str,
    info: ManifestInfo,
    names: tuple[str, ...],
    infos: Mapping[str, ManifestInfo],
) -> IndexMutation:
    """List ``digest`` under each ``ref.name`` of ``names`` (untagged when none).

    ``infos`` are the manifests known so far: an index's children are only
    unlisted when known not to be referrers.
    """

    def mutate(entries: list[dict[str, Any]]) -> None:
        if names:  # a tagged manifest needs no untagged entry besides
            entries[:] = [
                e for e in entries if e.get("digest") != digest or entry_ref_name(e) is not None
            ]
        displaced: set[str] = set()
        for name in names:
            for i in range(len(entries) - 1, -1, -1):
                if entry_ref_name(entries[i]) == name:
                    displaced.add(str(entries[i].get("digest")))
                    del entries[i]
            entries.append(index_entry(digest, info, name))
        if not names and digest not in {e.get("digest") for e in entries}:
            entries.append(index_entry(digest, info, None))
        if info.children:
            entries[:] = [
                e
                for e in entries
                if not (
                    e.get("digest") in info.children
                    and entry_ref_name(e) is None
                    and _known_plain(infos, e)
                )
            ]
        _keep_displaced_referrers(entries, displaced, infos)

    return mutate


def _keep_displaced_referrers(
    entries: list[dict[str, Any]], displaced: set[str], infos: Mapping[str, ManifestInfo]
) -> None:
    """A referrer whose last entry a re-tag removed stays listed, untagged."""
    listed = {d for e in entries if isinstance(d := e.get("digest"), str)}
    for digest in sorted(displaced - listed):
        old = infos.get(digest)
        if old is not None and old.subject is not None:
            entries.append(index_entry(digest, old, None))


def unlisting_mutation(repository: str, digest: str) -> IndexMutation:
    """Remove ``repository``'s tags of ``digest`` and every untagged entry of it."""

    def mutate(entries: list[dict[str, Any]]) -> None:
        entries[:] = [
            e
            for e in entries
            if e.get("digest") != digest
            or (
                (name := entry_ref_name(e)) is not None
                and tag_of_ref_name(repository, name) is None
            )
        ]

    return mutate


def untag_mutation(name: str) -> IndexMutation:
    """Remove every entry whose ``ref.name`` is ``name``."""

    def mutate(entries: list[dict[str, Any]]) -> None:
        entries[:] = [e for e in entries if entry_ref_name(e) != name]

    return mutate
