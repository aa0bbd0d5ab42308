"""The OCI image layout files a bundle's tar stream carries besides its blobs (pure).

The concatenated parts form an OCI image layout holding every repository of
the bundle (the rules of ``replicator/targets/ocilayout/entries.py``, so the
``ocidir://`` support and skopeo's ``oci:`` transport read it):

* ``oci-layout`` first, then the blob store ``blobs/sha256/<hex>``;
* ``index.json`` last: every tag as a full reference in
  ``org.opencontainers.image.ref.name`` (``team/api:v1``), every referrer as an
  untagged entry (found by scanning ``subject`` fields), every root named by
  digest only as an untagged entry, and per repository and subject a
  referrers fallback tag (``team/api:sha256-<hex>``) on an OCI index listing
  that subject's referrers.

Only manifests stored in the bundle are listed: in an incremental bundle a
tag whose root lies in the base is not in ``index.json`` (the layout holds the
new content only; ``bundle.json`` lists everything).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_index
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout.entries import ManifestInfo, index_entry, ref_name_for

#: The ``oci-layout`` file's bytes.
OCI_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


def fallback_indexes(
    repositories: Mapping[str, set[str]], infos: Mapping[str, ManifestInfo]
) -> dict[tuple[str, str], tuple[Descriptor, bytes]]:
    """Per ``(repository, subject)`` the referrers index of that subject (its bytes).

    ``repositories`` maps each repository to the manifests stored for it;
    ``infos`` describes every stored manifest.  Referrers are listed by digest.
    """
    out: dict[tuple[str, str], tuple[Descriptor, bytes]] = {}
    for repo, digests in sorted(repositories.items()):
        by_subject: dict[str, list[Descriptor]] = {}
        for digest in sorted(digests):
            info = infos.get(digest)
            if info is None or info.subject is None:
                continue
            by_subject.setdefault(info.subject, []).append(
                Descriptor(
                    info.media_type,
                    digest,
                    info.size,
                    artifact_type=info.artifact_type,
                    annotations=info.annotations,
                )
            )
        for subject, referrers in sorted(by_subject.items()):
            raw = build_index(referrers)
            out[(repo, subject)] = (descriptor_for(raw, mediatype.OCI_INDEX), raw)
    return out


def index_json(
    tags: Mapping[str, Mapping[str, str]],
    roots: Mapping[str, set[str]],
    infos: Mapping[str, ManifestInfo],
    indexes: Mapping[tuple[str, str], tuple[Descriptor, bytes]],
) -> bytes:
    """``index.json`` of the layout (see the module doc); compact, deterministic."""
    entries: list[dict[str, Any]] = []
    for repo, repo_tags in sorted(tags.items()):
        for tag, digest in sorted(repo_tags.items()):
            info = infos.get(digest)
            if info is not None:
                entries.append(index_entry(digest, info, ref_name_for(repo, tag)))
    for (repo, subject), (desc, _raw) in sorted(indexes.items()):
        entries.append(
            {
                "mediaType": desc.media_type,
                "digest": desc.digest,
                "size": desc.size,
                "annotations": {
                    "org.opencontainers.image.ref.name": ref_name_for(repo, referrers_tag(subject))
                },
            }
        )
    listed = {e["digest"] for e in entries if "annotations" not in e}
    untagged = {d for d, info in infos.items() if info.subject is not None}
    for digests in roots.values():
        untagged |= {d for d in digests if d in infos}
    for digest in sorted(untagged - listed):
        entries.append(index_entry(digest, infos[digest], None))
    doc = {"schemaVersion": 2, "mediaType": mediatype.OCI_INDEX, "manifests": entries}
    return json.dumps(doc, separators=(",", ":")).encode()
