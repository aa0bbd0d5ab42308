"""What goes into a bundle: the roots selected by a sync config, or named on the command line.

A bundle names each repository by its **source repository path**
(``dev.example.com/team/api`` is ``team/api`` in the bundle; an ``ocidir://``
layout without a repository is named by its directory).  The config's
destinations are not used: ``bundle import DEST`` decides where repositories
land.  Two sources that would share a bundle repository are refused.

:func:`items_from_expansion` is the one place the config-driven selection is
made, from :func:`replicator.sync.expand.expand`'s result: a later ``--shard``
filters its list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from replicator.errors import ReplicatorError, UsageError
from replicator.graph.filters import GraphFilter
from replicator.oci.reference import (
    PATH_COMPONENT_RE,
    Reference,
    is_referrers_tag,
    parse_reference,
)
from replicator.sync.expand import Expansion
from replicator.sync.targets import TargetPool


@dataclass(frozen=True, slots=True)
class BundleItem:
    """One root to bundle: its source, the bundle repository, its tag (None: by digest).

    ``name``, ``require`` and ``filter`` come from the config job (gate and
    graph selection); empty for command-line references.
    """

    source: Reference
    repository: str
    tag: str | None
    name: str = ""
    require: tuple[str, ...] = ()
    filter: GraphFilter | None = None


def bundle_repository(ref: Reference) -> str:
    """The repository name a source reference gets in a bundle (see the module doc)."""
    if ref.repository:
        return ref.repository
    base = os.path.basename(os.path.normpath(ref.layout_path or ""))
    if PATH_COMPONENT_RE.fullmatch(base):
        return base
    raise UsageError(
        f"{ref}: a bundle names each repository, and the directory name {base!r} is not "
        "a valid repository name: copy it into a shared layout repository first"
    )


def items_from_expansion(expansion: Expansion) -> list[BundleItem]:
    """One item per root the config's jobs selected (jobs that failed to list are left out)."""
    out = []
    for job in expansion.reference_jobs:
        source = job.source
        out.append(
            BundleItem(
                source=source,
                repository=bundle_repository(source),
                tag=source.tag,
                name=job.name,
                require=job.require,
                filter=job.filter,
            )
        )
    return out


async def items_from_references(refs: Sequence[str], targets: TargetPool) -> list[BundleItem]:
    """Items for ``bundle create -o DIR SRC...``.

    ``host/repo:tag`` and ``host/repo@digest`` name one root; ``host/repo``
    without either names every tag of the repository (referrers fallback tags
    left out: their content travels as referrers).
    """
    out: list[BundleItem] = []
    for text in refs:
        ref = parse_reference(text) if _names_root(text) else _repository(text)
        repository = bundle_repository(ref)
        if ref.tag is not None or ref.digest is not None:
            out.append(BundleItem(ref, repository, ref.tag))
            continue
        target = targets.open(ref)
        tags = [t for t in await target.tags(ref.repository) if not is_referrers_tag(t)]
        if not tags:
            raise UsageError(f"{ref}: the repository has no tags to bundle")
        out.extend(BundleItem(ref.with_tag(t), repository, t) for t in tags)
    return out


def _names_root(text: str) -> bool:
    """True when ``text`` names a tag or digest (not a whole repository)."""
    if "@" in text:
        return True
    tail = text.rsplit("/", 1)[-1]
    return ":" in tail


def _repository(text: str) -> Reference:
    ref = parse_reference(text)
    return ref.without_tag_or_digest()


def check_repositories(items: Sequence[BundleItem]) -> None:
    """Refuse two different source repositories that would share a bundle repository."""
    seen: dict[str, str] = {}
    problems: list[str] = []
    for item in items:
        where = item.source.repository_display
        first = seen.setdefault(item.repository, where)
        if first != where:
            line = f"{first} and {where} would both be {item.repository!r} in the bundle"
            if line not in problems:
                problems.append(line)
    if problems:
        error: ReplicatorError = UsageError(
            problems[0] if len(problems) == 1 else f"{len(problems)} repository name clashes"
        )
        error.details = tuple(problems) if len(problems) > 1 else ()
        raise error
