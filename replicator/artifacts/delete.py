"""Delete a manifest together with its whole referrer graph, deepest first.

Order matters: a referrer is deleted before its subject, so at no moment does
a reachable referrer point at a deleted subject, and a store that maintains a
fallback referrers index (``sha256-<hex>`` tag) sees each entry removed while
its subject still exists.  At the end no fallback tag of a deleted subject may
remain: the target removes them as entries go, and this module checks and
removes any left over.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from replicator.artifacts.discover import ReferrerNode, discover_referrers
from replicator.errors import NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import referrers_tag
from replicator.targets.base import Target

log = structlog.get_logger(__name__)

#: ``(action, descriptor)``: "Deleted", "Removed fallback tag".
DeleteCallback = Callable[[str, Descriptor], None]


def deletion_order(root: Descriptor, nodes: list[ReferrerNode]) -> list[Descriptor]:
    """Every descriptor of the graph, children (referrers) before their subject, root last."""
    order: list[Descriptor] = []

    def visit(node: ReferrerNode) -> None:
        for child in node.children:
            visit(child)
        order.append(node.descriptor)

    for node in nodes:
        visit(node)
    order.append(root)
    return order


async def delete_graph(
    target: Target,
    repository: str,
    root: Descriptor,
    *,
    on_event: DeleteCallback | None = None,
) -> list[Descriptor]:
    """Delete ``root`` and every referrer below it; return what was deleted, in order.

    A manifest already gone counts as deleted.  Afterwards the fallback tag of
    every deleted manifest is checked and deleted when still present.
    """
    nodes = await discover_referrers(target, repository, root)
    order = deletion_order(root, nodes)
    for desc in order:
        try:
            await target.delete_manifest(repository, desc)
        except NotFoundError:
            log.debug("manifest already gone", repository=repository, digest=desc.digest)
        if on_event:
            on_event("Deleted", desc)
    await remove_leftover_fallback_tags(target, repository, order, on_event=on_event)
    log.debug("graph deleted", repository=repository, root=root.digest, manifests=len(order))
    return order


async def remove_leftover_fallback_tags(
    target: Target,
    repository: str,
    subjects: list[Descriptor],
    *,
    on_event: DeleteCallback | None = None,
) -> list[str]:
    """Delete the ``sha256-<hex>`` tag of each subject that still has one; return those tags."""
    try:
        tags = set(await target.tags(repository))
    except NotFoundError:
        return []
    removed: list[str] = []
    for subject in subjects:
        tag = referrers_tag(subject.digest)
        if tag not in tags:
            continue
        try:
            index = await target.resolve(repository, tag)
            await target.delete_manifest(repository, index)
        except NotFoundError:
            continue
        removed.append(tag)
        log.debug("fallback referrers tag removed", repository=repository, tag=tag)
        if on_event:
            on_event("Removed fallback tag", index)
    return removed
