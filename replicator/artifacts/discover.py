"""Referrer graphs: discovery over the Target protocol and the three output formats.

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

from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Target

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


async def discover_referrers(
    target: Target,
    repository: str,
    subject: Descriptor,
    *,
    artifact_type: str | None = None,
    depth: int | None = None,
    concurrency: int = DEFAULT_DISCOVER_CONCURRENCY,
) -> list[ReferrerNode]:
    """The referrer tree of ``subject``, sorted, down to ``depth`` levels (None = all).

    ``artifact_type`` filters the first level only (as ``oras discover``
    does); deeper levels list every referrer.  A digest met twice is expanded
    once, so a hostile cycle cannot loop.
    """
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    seen: set[str] = {subject.digest}

    async def expand(desc: Descriptor, level: int, only: str | None) -> list[ReferrerNode]:
        async with limiter:
            found = await target.referrers(repository, desc, only)
        if only is not None:
            found = [d for d in found if d.artifact_type == only]
        nodes: list[ReferrerNode] = []
        for ref in sorted(found, key=sort_key):
            if ref.digest in seen:
                continue
            seen.add(ref.digest)
            nodes.append(ReferrerNode(ref))
        if depth is None or level < depth:
            async with anyio.create_task_group() as tg:
                for node in nodes:
                    tg.start_soon(_fill, node, level + 1)
        return nodes

    async def _fill(node: ReferrerNode, level: int) -> None:
        node.children = await expand(node.descriptor, level, None)

    if depth is not None and depth < 1:
        return []
    return await expand(subject, 1, artifact_type)


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
