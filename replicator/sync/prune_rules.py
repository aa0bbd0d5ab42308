"""Which destination tags a job's pruning may remove: pure functions, with reasons.

A destination tag is **pruned** by a job (``prune: {enabled: true}``) only when
all of these hold:

1. it is a tag in the ordinary sense: not a referrers fallback tag
   (``sha256-<hex>``) nor any other digest-like tag (``sha256-<hex>.sig``...);
2. the job's name rules select it (:func:`selects_by_name`): it matches
   ``allow``, matches no ``deny``, is inside ``semver`` — and, when the job
   has ``latest: N``, it is a semantic version at all (``latest`` ranks
   versions only, so no other tag was ever selected by it).  ``latest``'s
   ranking itself plays no part: a tag that merely fell out of the newest N
   still exists at the source and is never pruned.  A job with ``include``
   and no filters selects exactly its included tags;
3. the source repository, listed in this run, no longer has a tag of that name;
4. it is not protected (:func:`protection`): tags in ``include`` (a literal tag
   is a promise: its copy fails while the source lacks it, and pruning never
   turns that mistake into a deletion), tags matching ``immutable`` (written
   once, kept for good), and tags that another job of the configuration would
   select at the same destination repository (:func:`writes_to`: the other
   job may still have it at its source);
5. it is not one of the job's own backup tags (``backup: '{tag}-previous'``
   makes ``v1-previous``: the job's output, never a source tag).

Tags that fail 1, 2 or 5 are outside the selection and never mentioned; tags
that fail 4 are *kept*, with the reason, so a plan says why they stay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from replicator.errors import ConfigError
from replicator.oci.reference import Reference
from replicator.sync.config_schema import SyncJob
from replicator.sync.mapping import (
    destination_key,
    is_shared_layout,
    map_destination,
    template_fields,
)
from replicator.sync.selection import (
    TagRules,
    has_filters,
    is_digest_like,
    is_immutable,
    semver_of,
)

#: A repository name no real source has, to turn a destination template into a pattern.
_SAMPLE_REPOSITORY = "zq0sample0repo/zq0sample0name"
_SAMPLE_NAME = "zq0sample0name"


def selects_by_name(rules: TagRules, tag: str) -> bool:
    """True when the job's rules select ``tag`` by its name alone (steps 1 and 2 of the module doc)."""
    if is_digest_like(tag):
        return False
    if not has_filters(rules):
        return not rules.include or tag in rules.include
    if rules.allow and not any(p.fullmatch(tag) for p in rules.allow):
        return False
    if any(p.fullmatch(tag) for p in rules.deny):
        return False
    if rules.semver is not None or rules.latest is not None:
        version = semver_of(tag)
        if version is None:
            return False
        if rules.semver is not None and not rules.semver.match(version):
            return False
    return True


def backup_pattern(template: str | None) -> re.Pattern[str] | None:
    """The tags a ``backup`` template makes (``{tag}-previous`` → ``.+-previous``)."""
    if template is None:
        return None
    literal, _, rest = template.partition("{tag}")
    return re.compile(re.escape(literal) + ".+" + re.escape(rest).replace(r"\{tag\}", ".+"))


def protection(job: SyncJob, tag: str) -> str | None:
    """Why the job itself keeps ``tag`` although its source lost it (None: it does not)."""
    if tag in job.tags.include:
        return (
            "in include: a literal tag is never pruned (its copy fails while the source lacks it)"
        )
    if is_immutable(job.tags, tag):
        return "immutable: kept once at the destination"
    return None


def _template_pattern(template: str) -> re.Pattern[str] | None:
    """The destination repositories a template with fields can name, as a pattern."""
    try:
        sample = map_destination(template, _SAMPLE_REPOSITORY)
    except ConfigError:
        return None
    text = re.escape(str(sample))
    text = text.replace(re.escape(_SAMPLE_REPOSITORY), ".+").replace(
        re.escape(_SAMPLE_NAME), "[^/]+"
    )
    return re.compile(text)


def writes_to(job: SyncJob, dest: Reference) -> bool:
    """Whether ``job`` may write to the destination repository ``dest`` (by its config alone).

    A one-repository job maps its repository; a catalog job may write
    wherever its templates can point (any repository of its registry, so this
    errs on the side of yes).
    """
    key = destination_key(dest)
    wanted = str(dest.without_tag_or_digest())
    for template in job.destinations:
        if is_shared_layout(template) and dest.scheme == "ocidir":
            try:
                if map_destination(template, dest.repository).location == dest.location:
                    return True
            except ConfigError:
                continue
            continue
        if job.is_catalog and template_fields(template, ("repository", "name")):
            pattern = _template_pattern(template)
            if pattern is not None and pattern.fullmatch(wanted):
                return True
            continue
        repository = "" if job.is_catalog else job.source_reference(None).repository
        try:
            if destination_key(map_destination(template, repository)) == key:
                return True
        except ConfigError:
            continue
    return False


@dataclass(frozen=True, slots=True)
class PruneChoice:
    """The destination tags a job prunes at one destination, and those it keeps (with why)."""

    prune: tuple[str, ...]
    kept: tuple[tuple[str, str], ...]


def choose(
    job: SyncJob,
    dest_tags: Iterable[str],
    source_tags: Iterable[str],
    neighbours: Sequence[SyncJob] = (),
) -> PruneChoice:
    """What ``job`` prunes among ``dest_tags`` given the source's ``source_tags``.

    ``neighbours``: the other jobs of the configuration that may write to the
    same destination repository (:func:`writes_to`); a tag one of them selects
    by name is kept.  See the module doc for the rules.
    """
    present = set(source_tags)
    backups = backup_pattern(job.backup)
    prune: list[str] = []
    kept: list[tuple[str, str]] = []
    for tag in sorted(set(dest_tags)):
        if tag in present or not selects_by_name(job.tags, tag):
            continue
        if backups is not None and backups.fullmatch(tag):
            continue
        reason = protection(job, tag)
        if reason is None:
            other = next((j for j in neighbours if _selects(j, tag)), None)
            if other is not None:
                reason = f"job {other.name} writes here too and selects this tag"
        if reason is None:
            prune.append(tag)
        else:
            kept.append((tag, reason))
    return PruneChoice(tuple(prune), tuple(kept))


def _selects(job: SyncJob, tag: str) -> bool:
    return tag in job.tags.include or selects_by_name(job.tags, tag)


__all__ = [
    "PruneChoice",
    "backup_pattern",
    "choose",
    "protection",
    "selects_by_name",
    "writes_to",
]
