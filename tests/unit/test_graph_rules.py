"""The subject check of a listed referrer (:func:`replicator.graph.rules.check_listed_referrer`)."""

from __future__ import annotations

import json

from replicator.graph.rules import (
    check_listed_referrer,
    foreign_subject_warning,
    self_reference_warning,
)
from replicator.oci import mediatype as mt
from replicator.oci.manifest import Manifest, parse_manifest

EMPTY = {"mediaType": mt.OCI_EMPTY, "digest": mt.EMPTY_JSON_DIGEST, "size": 2}
NODE = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
LISTED = "sha256:" + "c" * 64


def _artifact(subject: str | None) -> Manifest:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/example",
        "config": EMPTY,
        "layers": [EMPTY],
    }
    if subject is not None:
        doc["subject"] = {"mediaType": mt.OCI_MANIFEST, "digest": subject, "size": 10}
    return parse_manifest(json.dumps(doc).encode(), mt.OCI_MANIFEST)


def test_a_manifest_naming_the_node_is_its_referrer() -> None:
    assert check_listed_referrer(NODE, LISTED, _artifact(NODE)) is None


def test_a_manifest_naming_another_subject_or_none_is_foreign() -> None:
    for manifest in (_artifact(OTHER), _artifact(None)):
        assert check_listed_referrer(NODE, LISTED, manifest) == foreign_subject_warning(
            LISTED, NODE
        )


def test_the_node_listed_under_itself_is_a_self_reference() -> None:
    assert check_listed_referrer(NODE, NODE, _artifact(NODE)) == self_reference_warning(NODE)
