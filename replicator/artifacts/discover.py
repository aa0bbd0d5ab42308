"""Referrer graphs: discovery over the Target protocol and the three output formats.

Discovery follows the graph rules of :mod:`replicator.graph.rules`: a listing
names candidates, and only those whose own ``subject`` names the node are its
referrers (a store serving the referrers API is trusted to have checked that).

Ordering is stable and the same for every store: nodes are sorted by artifact
type (alphabetically) and then by digest.  Registries list referrers in
different orders (the referrers API, a fallback index in insertion order, a copy
of it), so sorting is what makes the tree of a copied graph print exactly like
the tree of its source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from replicator.graph.filters import GraphFilter
from replicator.graph.rules import Admission, CycleGuard, admit_referrers, listing_is_trusted
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Target

log = structlog.get_logger("replicator.discover")

#: Referrer lookups in flight at once during discovery.
DEFAULT_DISCOVER_CONCURRENCY = 8


@dataclass(slots=True)
class ReferrerNode:
    """One referrer and the referrers that point at it in turn."""

    descriptor: Descriptor
    children: list[ReferrerNode] = field(default_factory=list)

    @property
    def artifact_type(self) -> str:
        """The artifact type to group by (the media type when none is declared)."""
        return self.descriptor.artifact_type or self.descriptor.media_type

    def walk(self) -> list[ReferrerNode]:
        """This node and every node below it, depth first (parents before children)."""
        out: list[ReferrerNode] = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


def sort_key(desc: Descriptor) -> tuple[str, str]:
    """Order of nodes among siblings: artifact type, then digest."""
    return (desc.artifact_type or desc.media_type, desc.digest)


@dataclass(frozen=True, slots=True)
class ListedEntry:
    """A listing entry that was not admitted: ``descriptor`` listed under ``subject``."""

    subject: str
    descriptor: Descriptor


@dataclass(slots=True)
class Discovery:
    """A referrer tree and what its listings named that is not part of it.

    ``nodes``: the admitted referrers of the subject, sorted, each with its own;
    ``foreign``: listed manifests that do not name the node listing them as
    their subject (left alone by every command); ``missing``: listed digests the
    store does not have; ``warnings``: one line per skipped entry; ``trusted``:
    the store's listings come from the referrers API (entries admitted unread).
    """

    nodes: list[ReferrerNode] = field(default_factory=list)
    foreign: list[ListedEntry] = field(default_factory=list)
    missing: list[ListedEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    trusted: bool = False

    def all_nodes(self) -> list[ReferrerNode]:
        """Every node of the tree, parents before children."""
        return [n for top in self.nodes for n in top.walk()]


async def discover_graph(
    target: Target,
    repository: str,
    subject: Descriptor,
    *,
    artifact_type: str | None = None,
    depth: int | None = None,
    concurrency: int = DEFAULT_DISCOVER_CONCURRENCY,
    trust_api: bool = True,
) -> Discovery:
    """The admitted referrer tree of ``subject``, sorted, down to ``depth`` levels (None = all).

    Each listing goes through :func:`~replicator.graph.rules.admit_referrers`:
    self-references, listed manifests whose own ``subject`` is another node
    and listed digests the store lacks are left out (and reported), unless the
    store serves the referrers API, whose listing is trusted unread — unless
    ``trust_api`` is False: a caller about to act on the tree irreversibly
    (``manifest delete``) has every listed referrer read and checked, so that a
    lying API cannot make it act on a manifest that refers to something else.
    ``artifact_type`` is a glob (``fnmatch``, the rule of ``copy
    --artifact-type``; an exact type matches itself) applied to the first level
    only, as ``oras discover`` does; deeper levels list every referrer.  A
    digest met twice is expanded once, so a hostile cycle cannot loop.
    """
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    guard = CycleGuard(subject.digest)
    found = Discovery()
    first = GraphFilter(include_types=(artifact_type,)) if artifact_type is not None else None

    async def expand(desc: Descriptor, level: int) -> list[ReferrerNode]:
        async with limiter:
            listed = await target.referrers(repository, desc)
        if level == 1:
            found.trusted = trust_api and await listing_is_trusted(target, repository)
        admission = await admit_referrers(
            target,
            repository,
            desc.digest,
            listed,
            trusted=found.trusted,
            accept=first.accepts_referrer if first is not None and level == 1 else None,
            skip=guard,
            limiter=limiter,
            keep_raw=False,
        )
        _note(found, desc.digest, admission)
        nodes: list[ReferrerNode] = []
        for admitted in sorted(admission.admitted, key=lambda a: sort_key(a.descriptor)):
            if guard.first_visit(admitted.descriptor.digest):
                nodes.append(ReferrerNode(admitted.descriptor))
        if depth is None or level < depth:
            async with anyio.create_task_group() as tg:
                for node in nodes:
                    tg.start_soon(_fill, node, level + 1)
        return nodes

    async def _fill(node: ReferrerNode, level: int) -> None:
        node.children = await expand(node.descriptor, level)

    if depth is None or depth >= 1:
        found.nodes = await expand(subject, 1)
    return found


def _note(found: Discovery, subject: str, admission: Admission) -> None:
    """Record (and log) what one listing named that was not admitted."""
    found.foreign.extend(ListedEntry(subject, d) for d in admission.foreign)
    found.missing.extend(ListedEntry(subject, d) for d in admission.missing)
    found.warnings.extend(admission.warnings)
    for message in admission.warnings:
        log.warning("discover.referrer_skipped", reason=message)


async def discover_referrers(
    target: Target,
    repository: str,
    subject: Descriptor,
    *,
    artifact_type: str | None = None,
    depth: int | None = None,
    concurrency: int = DEFAULT_DISCOVER_CONCURRENCY,
) -> list[ReferrerNode]:
    """The referrer tree of ``subject`` (:func:`discover_graph`'s ``nodes``)."""
    found = await discover_graph(
        target,
        repository,
        subject,
        artifact_type=artifact_type,
        depth=depth,
        concurrency=concurrency,
    )
    return found.nodes


def _grouped(nodes: Sequence[ReferrerNode]) -> list[tuple[str, list[ReferrerNode]]]:
    groups: dict[str, list[ReferrerNode]] = {}
    for node in nodes:
        groups.setdefault(node.artifact_type, []).append(node)
    return sorted(groups.items())


def render_tree(root_label: str, nodes: Sequence[ReferrerNode]) -> str:
    """The ``oras discover -o tree`` picture: artifact-type branches with digests under them."""
    lines = [root_label]

    def branch(children: Sequence[ReferrerNode], prefix: str) -> None:
        groups = _grouped(children)
        for gi, (atype, members) in enumerate(groups):
            last_group = gi == len(groups) - 1
            lines.append(f"{prefix}{'└── ' if last_group else '├── '}{atype}")
            group_prefix = prefix + ("    " if last_group else "│   ")
            for mi, node in enumerate(members):
                last_member = mi == len(members) - 1
                lines.append(
                    f"{group_prefix}{'└── ' if last_member else '├── '}{node.descriptor.digest}"
                )
                branch(node.children, group_prefix + ("    " if last_member else "│   "))

    branch(nodes, "")
    return "\n".join(lines) + "\n"


def tree_to_json(nodes: Sequence[ReferrerNode]) -> dict[str, Any]:
    """``{"manifests": [descriptor + nested "manifests", ...]}`` for ``-o json``."""

    def one(node: ReferrerNode) -> dict[str, Any]:
        data = node.descriptor.to_json()
        data["manifests"] = [one(child) for child in node.children]
        return data

    return {"manifests": [one(node) for node in nodes]}


def render_json(nodes: Sequence[ReferrerNode]) -> str:
    """The JSON document of :func:`tree_to_json`, indented, with a final newline."""
    return json.dumps(tree_to_json(nodes), indent=2) + "\n"


def render_table(nodes: Sequence[ReferrerNode]) -> str:
    """Columns DIGEST, ARTIFACT TYPE, ANNOTATIONS; nested referrers indented by level."""
    rows: list[tuple[str, str, str]] = [("DIGEST", "ARTIFACT TYPE", "ANNOTATIONS")]

    def add(children: Sequence[ReferrerNode], level: int) -> None:
        for node in children:
            annotations = node.descriptor.annotations or {}
            shown = ",".join(f"{k}={v}" for k, v in sorted(annotations.items()))
            rows.append(("  " * level + node.descriptor.digest, node.artifact_type, shown))
            add(node.children, level + 1)

    add(nodes, 0)
    width0 = max(len(r[0]) for r in rows)
    width1 = max(len(r[1]) for r in rows)
    return "".join(f"{a.ljust(width0)}  {b.ljust(width1)}  {c}".rstrip() + "\n" for a, b, c in rows)
