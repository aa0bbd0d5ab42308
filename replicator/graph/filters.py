"""What part of a graph a copy selects: referrer types, referrer depth, platforms.

Filters are pure: they look at descriptors only, so discovery can decide before
fetching anything.  Referrer filters apply to referrers (never to the root nor to
index children); platform filters apply to the children of the *root* index.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from replicator.oci.descriptor import Descriptor, Platform

#: Annotations Docker (buildx) puts on attestation manifests inside an index.
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"
DOCKER_REFERENCE_DIGEST = "vnd.docker.reference.digest"
DOCKER_ATTESTATION = "attestation-manifest"


def _glob_match(patterns: Iterable[str], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def is_docker_attestation(desc: Descriptor) -> bool:
    """True for a buildx attestation entry (``unknown/unknown`` with the reference annotation)."""
    ann = desc.annotations or {}
    return ann.get(DOCKER_REFERENCE_TYPE) == DOCKER_ATTESTATION


@dataclass(frozen=True, slots=True)
class GraphFilter:
    """The selection of a copy.

    * ``referrers``: follow referrers at all (``-r`` and not ``--no-referrers``).
    * ``max_depth``: referrer levels followed (1 = direct referrers of the root
      graph); ``None`` = unlimited.
    * ``include_types`` / ``exclude_types``: fnmatch globs on a referrer's
      ``artifactType``; a referrer passes when it matches some include (or none
      are given) and no exclude.  A referrer without an artifact type is seen as
      the empty string.
    * ``platforms``: when non-empty, only root-index children of these platforms
      (plus the Docker attestation manifests that describe them) are copied.
    """

    referrers: bool = True
    max_depth: int | None = None
    include_types: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] = field(default=())

    def follows_referrers_at(self, depth: int) -> bool:
        """Whether referrers of a node at referrer level ``depth`` are followed."""
        if not self.referrers:
            return False
        return self.max_depth is None or depth < self.max_depth

    @property
    def filters_types(self) -> bool:
        """True when some artifact-type include or exclude glob is set."""
        return bool(self.include_types or self.exclude_types)

    def accepts_referrer(self, desc: Descriptor) -> bool:
        """Whether a referrer passes the artifact-type globs."""
        kind = desc.artifact_type or ""
        if self.include_types and not _glob_match(self.include_types, kind):
            return False
        return not (self.exclude_types and _glob_match(self.exclude_types, kind))

    def select_platforms(self, children: Sequence[Descriptor]) -> list[Descriptor]:
        """The root-index children the platform filter keeps, in their original order.

        Without platforms every child is kept.  With platforms: each child whose
        platform matches one requested, then each Docker attestation manifest
        whose ``vnd.docker.reference.digest`` names a kept child.
        """
        if not self.platforms:
            return list(children)
        kept = [
            c
            for c in children
            if c.platform is not None
            and not is_docker_attestation(c)
            and any(p.matches(c.platform) for p in self.platforms)
        ]
        kept_digests = {c.digest for c in kept}
        return [
            c
            for c in children
            if c.digest in kept_digests
            or (
                is_docker_attestation(c)
                and (c.annotations or {}).get(DOCKER_REFERENCE_DIGEST) in kept_digests
            )
        ]
