"""Breadth-first discovery of an artifact graph through the Target protocol.

:func:`walk_graph` visits a root manifest, then level by level its index
children and its referrers (API or fallback tag, whatever the target does),
recursively, with a :class:`~replicator.graph.filters.GraphFilter`.  Each
manifest is fetched once; a digest reached twice is visited once, so referrer
cycles, self-referencing fallback tags and diamonds terminate.  Listed referrers
are admitted by the shared rules of :mod:`replicator.graph.rules`: one whose
manifest does not name the listed subject (unless the store serves the
referrers API), or that the store does not have, is skipped with a warning.

The copy engine interleaves the same discovery rules with transfers (see
``replicator.engine.copier``); this walker is the plain, sequential form used to
inspect or compare graphs (tests, ``discover``-like tools, benchmarks).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

import anyio
import structlog

from replicator.errors import InputError, ProtocolError
from replicator.graph.filters import GraphFilter
from replicator.graph.rules import CycleGuard, admit_referrers, listing_is_trusted, successors
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest, parse_manifest
from replicator.targets.base import Target

_log = structlog.get_logger("replicator.graph")

Relation = Literal["root", "child", "referrer"]


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One manifest of a graph.

    ``depth`` is the referrer level (0 for the root and its index children);
    ``parent`` is the digest it was reached from, ``relation`` how.
    """

    descriptor: Descriptor
    manifest: Manifest
    depth: int
    relation: Relation
    parent: str | None = None


@dataclass(slots=True)
class GraphSnapshot:
    """Everything a walk found: manifests by digest (exact bytes), blobs, referrer edges."""

    manifests: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    referrers: dict[str, set[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


async def walk_graph(
    target: Target,
    repository: str,
    root: Descriptor | str,
    flt: GraphFilter | None = None,
    *,
    warnings: list[str] | None = None,
) -> AsyncIterator[GraphNode]:
    """Yield every selected manifest of the graph under ``root``, breadth first.

    ``root`` is a descriptor or a tag/digest string.  Referrers are admitted by
    :func:`~replicator.graph.rules.admit_referrers` (the rules every graph
    follower shares); warnings about skipped entries are appended to
    ``warnings`` when given (and logged).
    """
    flt = flt or GraphFilter()
    got, raw = await target.fetch_manifest(repository, root)
    queue: deque[GraphNode] = deque([_node(got, raw, 0, "root", None, repository)])
    guard = CycleGuard(got.digest)
    trusted: bool | None = None

    while queue:
        node = queue.popleft()
        yield node
        digest = node.descriptor.digest
        for child in successors(node.manifest).children:
            if not guard.first_visit(child.digest):
                continue
            c_desc, c_raw = await target.fetch_manifest(repository, child)
            queue.append(_node(c_desc, c_raw, node.depth, "child", digest, repository))
        if not flt.follows_referrers_at(node.depth):
            continue
        listed = await target.referrers(repository, node.descriptor)
        if trusted is None:
            trusted = await listing_is_trusted(target, repository)
        admission = await admit_referrers(
            target,
            repository,
            digest,
            listed,
            trusted=trusted,
            accept=flt.accepts_referrer,
            skip=guard,
            limiter=anyio.CapacityLimiter(1),
        )
        for message in admission.warnings:
            _log.warning("graph.referrer_skipped", reason=message)
            if warnings is not None:
                warnings.append(message)
        for found in admission.admitted:
            if not guard.first_visit(found.descriptor.digest):
                continue
            if found.raw is None:
                r_desc, r_raw = await target.fetch_manifest(repository, found.descriptor)
            else:
                r_desc, r_raw = found.descriptor, found.raw
            queue.append(_node(r_desc, r_raw, node.depth + 1, "referrer", digest, repository))


def _node(
    desc: Descriptor, raw: bytes, depth: int, relation: Relation, parent: str | None, repo: str
) -> GraphNode:
    try:
        manifest = parse_manifest(raw, desc.media_type)
    except InputError as exc:
        raise ProtocolError(f"{repo}@{desc.digest}: {exc}") from exc
    return GraphNode(desc, manifest, depth, relation, parent)


async def snapshot_graph(
    target: Target, repository: str, root: Descriptor | str, flt: GraphFilter | None = None
) -> GraphSnapshot:
    """Walk the graph and collect manifests, blobs and referrer edges (for comparisons)."""
    snap = GraphSnapshot()
    async for node in walk_graph(target, repository, root, flt, warnings=snap.warnings):
        snap.manifests[node.descriptor.digest] = node.manifest.raw
        for blob in node.manifest.blobs():
            snap.blobs[blob.digest] = blob
        if node.relation == "referrer" and node.parent is not None:
            snap.referrers.setdefault(node.parent, set()).add(node.descriptor.digest)
    return snap
