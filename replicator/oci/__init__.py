"""The pure OCI model: references, descriptors, manifests, media types, digests.

Nothing in this package does I/O.  Malformed references raise
:class:`replicator.errors.ReferenceError`; malformed manifests, descriptors and
digests raise :class:`replicator.errors.InputError`; content that does not match
its digest raises :class:`replicator.errors.IntegrityError`.
"""

from __future__ import annotations

from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor, Platform, validate_digest
from replicator.oci.digest import DigestVerifier, descriptor_for, digest_bytes, verify_bytes
from replicator.oci.manifest import (
    EMPTY_CONFIG,
    MAX_MANIFEST_SIZE,
    Manifest,
    build_image_manifest,
    build_index,
    parse_manifest,
)
from replicator.oci.reference import (
    DOCKER_HUB_DISPLAY,
    DOCKER_HUB_REGISTRY,
    TAG_RE,
    Reference,
    is_referrers_tag,
    normalise_host,
    parse_reference,
    parse_repository,
    referrers_tag,
    split_tags,
)

__all__ = [
    "DOCKER_HUB_DISPLAY",
    "DOCKER_HUB_REGISTRY",
    "EMPTY_CONFIG",
    "MAX_MANIFEST_SIZE",
    "TAG_RE",
    "Descriptor",
    "DigestVerifier",
    "Manifest",
    "Platform",
    "Reference",
    "build_image_manifest",
    "build_index",
    "descriptor_for",
    "digest_bytes",
    "is_referrers_tag",
    "mediatype",
    "normalise_host",
    "parse_manifest",
    "parse_reference",
    "parse_repository",
    "referrers_tag",
    "split_tags",
    "validate_digest",
    "verify_bytes",
]
