"""The graph rules: what a manifest's successors are and which listed referrers count.

One set of rules for every place that follows a graph — the copy engine, the
sequential walker (:mod:`replicator.graph.walk`, the tests' oracle), ``discover``,
``manifest delete`` and ``verify`` — so that they agree on what a graph is:

* **Successors** of a manifest are its index children (manifests) and its config
  and layer blobs (:func:`successors`); the ``subject`` is an edge *up*, not a
  successor.
* **Referrer listings are claims, not facts.**  A listing (the referrers API, a
  fallback tag ``sha256-<hex>``, a layout's scan) names candidates;
  :func:`referrer_candidates` drops what can never be a referrer of that node —
  the node itself (a self-reference), entries that are not manifests, and
  duplicates.  A candidate is *admitted* only when its own manifest names the
  node as its ``subject`` (:func:`names_subject`): anyone who can push a tag can
  forge a fallback index listing an unrelated manifest, and a tool that deletes
  or copies what such a listing names would act on the wrong content.  A store
  that serves the referrers API derives its listing from the manifests'
  ``subject`` fields itself, so its candidates are admitted without a read.
* **Selection** by artifact type and referrer depth is
  :class:`~replicator.graph.filters.GraphFilter`'s (globs, one rule for
  ``copy`` and ``discover``).
* **Cycles** cannot form through successors (content addressing makes them a
  DAG) but can through listings (A lists B, B lists A): :class:`CycleGuard`
  expands each digest once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest


@dataclass(frozen=True, slots=True)
class Successors:
    """What a manifest needs present before it: index children and blobs."""

    children: tuple[Descriptor, ...]
    blobs: tuple[Descriptor, ...]


def successors(manifest: Manifest) -> Successors:
    """The index children and the config/layer blobs of ``manifest`` (not its subject)."""
    return Successors(tuple(manifest.children()), tuple(manifest.blobs()))


def self_reference_warning(subject: str) -> str:
    """The warning for a listing that names its own subject."""
    return f"{subject} lists itself as its own referrer: skipped"


def foreign_subject_warning(referrer: str, subject: str) -> str:
    """The warning for a listed manifest whose ``subject`` is not the node listing it."""
    return (
        f"{referrer} is listed as a referrer of {subject} but does not name it as its "
        "subject: skipped"
    )


@dataclass(slots=True)
class Candidates:
    """A referrer listing after :func:`referrer_candidates`: what to consider, and why not."""

    kept: list[Descriptor] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def referrer_candidates(subject: str, listed: Iterable[Descriptor]) -> Candidates:
    """The entries of a referrer listing of ``subject`` that may be referrers of it.

    Drops the subject itself (with a warning), entries whose media type is not
    a manifest, and repeated digests; keeps the listing's order.  What is kept
    is still only a candidate: admit it with :func:`names_subject` unless the
    listing came from the referrers API.
    """
    out = Candidates()
    seen: set[str] = set()
    for desc in listed:
        if desc.digest == subject:
            if subject not in seen:
                out.warnings.append(self_reference_warning(subject))
                seen.add(subject)
            continue
        if desc.digest in seen or not mt.is_manifest(desc.media_type):
            continue
        seen.add(desc.digest)
        out.kept.append(desc)
    return out


def names_subject(manifest: Manifest, subject: str) -> bool:
    """True when ``manifest``'s own ``subject`` field names ``subject``: a genuine referrer."""
    return manifest.subject is not None and manifest.subject.digest == subject


class CycleGuard:
    """Digests already expanded: each node of a walk is expanded once."""

    __slots__ = ("_seen",)

    def __init__(self, *digests: str) -> None:
        self._seen: set[str] = set(digests)

    def first_visit(self, digest: str) -> bool:
        """True the first time ``digest`` is offered (and remembers it)."""
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    def __contains__(self, digest: object) -> bool:
        return digest in self._seen
