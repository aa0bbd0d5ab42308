"""Which tags and which repositories a sync job selects: pure functions, with reasons.

Tags (:func:`select_tags`) go through the job's ``tags`` rules in this order:

1. tags that are never selected: referrers fallback tags (``sha256-<hex>``,
   :func:`~replicator.oci.reference.is_referrers_tag`; their content travels
   with its subject) and other digest-like tags (``sha256-<hex>.sig`` and the
   like: :func:`is_digest_like`);
2. ``allow``: regular expressions matched against the **whole** tag
   (``re.fullmatch``); a tag must match at least one when any is given;
3. ``deny``: whole-tag regular expressions; a tag matching any is dropped;
4. ``semver``: an npm-style range (``>=1.2.0 <2.0.0``, ``^1.2``, ``1.x || 2.x``);
   tags that parse as semantic versions (strict ``MAJOR.MINOR.PATCH[-PRE]``, one
   leading ``v`` allowed) must satisfy it; tags that do not parse are dropped.
   Pre-releases follow npm: ``2.0.0-rc.1`` satisfies a range only when one of
   its comparators names ``2.0.0`` with a pre-release;
5. ``latest: N``: the newest N of what is left, by semantic-version precedence
   (equal versions such as ``v1.2.3`` and ``1.2.3`` by tag, descending); tags
   that do not parse as semantic versions are not ranked and are dropped — use
   ``include`` to keep a named one;
6. ``include``: literal tags, always selected, appended after the filtered ones
   and never twice.

When none of ``allow``, ``deny``, ``semver`` and ``latest`` is given, the
filters select every tag, unless ``include`` is given: then exactly the
included tags are selected and the repository need not be listed at all
(:func:`needs_listing`).  Every listed tag gets a :class:`TagDecision` saying
why it was or was not selected, for the dry-run plan.

Repositories of a catalog source (:func:`select_repositories`) are chosen by
glob patterns applied in order, later patterns winning (as in ``.gitignore``):
a pattern selects what it matches, ``!pattern`` deselects it again.  Globs are
``wcmatch`` globs: ``*`` and ``?`` never cross ``/``; ``**`` as a whole path
element matches any number of elements (``team/**`` matches ``team/a/b`` but not
``team`` itself); ``[abc]`` and ``{a,b}`` work as in a shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import semantic_version  # type: ignore[import-untyped]
from wcmatch import fnmatch as wc_fnmatch
from wcmatch import glob as wc_glob

from replicator.oci.reference import is_referrers_tag
from replicator.sync.yamlsource import quoted


class TagRules(Protocol):
    """What the selection reads of a job's ``tags`` (``config_schema.TagRules`` has it)."""

    @property
    def allow(self) -> tuple[re.Pattern[str], ...]:
        """Regexes, anchored: a tag must match one of them (none: every tag)."""
        ...

    @property
    def deny(self) -> tuple[re.Pattern[str], ...]:
        """Regexes, anchored: a tag matching one is dropped."""
        ...

    @property
    def semver(self) -> Any:
        """A parsed npm-style range (``semantic_version.NpmSpec``), or None."""
        ...

    @property
    def latest(self) -> int | None:
        """Keep the newest N by semver precedence (None: all)."""
        ...

    @property
    def include(self) -> tuple[str, ...]:
        """Literal tags always selected."""
        ...

    @property
    def immutable(self) -> tuple[str, ...]:
        """Globs of tags never looked at again once at the destination."""
        ...


#: wcmatch flags for repository globs: ``**`` across elements, braces, '/'-separated always.
REPOSITORY_GLOB_FLAGS = wc_glob.GLOBSTAR | wc_glob.BRACE | wc_glob.FORCEUNIX
#: wcmatch flags for tag globs (``immutable``): braces; tags have no '/'.
TAG_GLOB_FLAGS = wc_fnmatch.BRACE | wc_fnmatch.FORCEUNIX

_DIGEST_LIKE_RE = re.compile(r"(?:sha256|sha384|sha512)-[0-9a-f]{64}")


# --------------------------------------------------------------------------- building blocks


def is_digest_like(tag: str) -> bool:
    """True for tags that stand for a digest: fallback referrers tags, ``sha256-<hex>...``.

    Covers the referrers tag schema and the tag-based signatures and
    attestations of older tools (``sha256-<hex>.sig``, ``.att``, ``.sbom``).
    """
    return is_referrers_tag(tag) or _DIGEST_LIKE_RE.match(tag) is not None


def compile_tag_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an ``allow``/``deny`` regular expression; ValueError naming pattern and fault."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise ValueError(
            f"invalid regular expression {quoted(pattern)}: {exc.msg}{where}"
        ) from None


def parse_semver_range(text: str) -> semantic_version.NpmSpec:
    """Parse an npm-style range (space = and, ``||`` = or); ValueError when malformed or empty."""
    if not text.strip():
        raise ValueError("empty semver range: write one such as '>=1.2.0 <2.0.0'")
    try:
        return semantic_version.NpmSpec(text)
    except ValueError:
        raise ValueError(
            f"invalid semver range {quoted(text)}: write npm ranges such as '>=1.2.0 <2.0.0', "
            "'^1.2', '~1.4.0' or '1.x || 2.x'"
        ) from None


def semver_of(tag: str) -> semantic_version.Version | None:
    """The semantic version a tag spells (one leading ``v`` allowed), or None."""
    text = tag[1:] if tag.startswith("v") else tag
    try:
        return semantic_version.Version(text)
    except ValueError:
        return None


def check_tag_glob(pattern: str) -> str:
    """Validate an ``immutable`` tag glob; ValueError when it cannot be compiled."""
    if not pattern:
        raise ValueError("empty glob")
    try:
        wc_fnmatch.translate(pattern, flags=TAG_GLOB_FLAGS)
    except (ValueError, re.error) as exc:
        raise ValueError(f"invalid glob {quoted(pattern)}: {exc}") from None
    return pattern


def check_repository_pattern(pattern: str) -> str:
    """Validate a catalog pattern (``team/*``, ``!team/legacy-*``); ValueError when bad."""
    body = pattern[1:] if pattern.startswith("!") else pattern
    if not body:
        raise ValueError(f"empty pattern {quoted(pattern)}")
    if body != body.lower():
        raise ValueError(
            f"{quoted(pattern)} has upper-case letters: repository names are lower-case"
        )
    if body.startswith("/") or body.endswith("/") or "//" in body:
        raise ValueError(
            f"{quoted(pattern)}: a repository path has no leading, trailing or double '/'"
        )
    try:
        wc_glob.translate(body, flags=REPOSITORY_GLOB_FLAGS)
    except (ValueError, re.error) as exc:
        raise ValueError(f"invalid glob {quoted(pattern)}: {exc}") from None
    return pattern


def is_immutable(rules: TagRules, tag: str) -> bool:
    """True when ``tag`` matches one of the job's ``immutable`` globs.

    An immutable tag already present at the destination is not looked at again.
    """
    return any(
        wc_fnmatch.fnmatch(tag, pattern, flags=TAG_GLOB_FLAGS) for pattern in rules.immutable
    )


# --------------------------------------------------------------------------- tags


@dataclass(frozen=True, slots=True)
class TagDecision:
    """Whether one tag was selected, and why (a phrase for the dry-run plan)."""

    tag: str
    selected: bool
    reason: str


@dataclass(frozen=True, slots=True)
class TagSelection:
    """The selected tags (filtered ones in listing order, then included ones) and every decision."""

    selected: tuple[str, ...]
    decisions: tuple[TagDecision, ...]

    def decision(self, tag: str) -> TagDecision | None:
        """The decision about ``tag``, or None if it was neither listed nor included."""
        for d in self.decisions:
            if d.tag == tag:
                return d
        return None


def has_filters(rules: TagRules) -> bool:
    """True when any of ``allow``, ``deny``, ``semver``, ``latest`` is given."""
    return bool(rules.allow or rules.deny or rules.semver is not None or rules.latest is not None)


def needs_listing(rules: TagRules) -> bool:
    """Whether the source repository's tags must be listed (False: ``include`` alone)."""
    return has_filters(rules) or not rules.include


def select_tags(rules: TagRules, listed: Iterable[str] | None) -> TagSelection:
    """Apply ``rules`` to the ``listed`` tags (see the module doc for the order).

    ``listed`` may be None only when :func:`needs_listing` is False.  Duplicates
    in ``listed`` are decided once.  Raises ValueError when a listing is needed
    and missing.
    """
    if listed is None and needs_listing(rules):
        raise ValueError("these tag rules need the repository's tag listing")
    decisions: dict[str, TagDecision] = {}
    survivors: list[str] = []
    notes: dict[str, list[str]] = {}
    order = list(dict.fromkeys(listed or ()))
    for tag in order:
        verdict = _filter_one(rules, tag)
        if isinstance(verdict, str):
            decisions[tag] = TagDecision(tag, False, verdict)
        else:
            survivors.append(tag)
            notes[tag] = verdict
    if rules.latest is not None:
        survivors = _keep_newest(rules.latest, survivors, notes, decisions)
    for tag in survivors:
        decisions[tag] = TagDecision(tag, True, "selected: " + "; ".join(notes[tag]))
    selected = list(survivors)
    for tag in rules.include:
        if tag in selected:
            continue
        previous = decisions.get(tag)
        if listed is not None and previous is None:
            reason = "selected: in include (not in the listing: its copy fails if it is missing)"
            order.append(tag)
        elif previous is not None and has_filters(rules):
            reason = f"selected: in include (otherwise: {previous.reason})"
        else:
            reason = "selected: in include"
            if previous is None:
                order.append(tag)
        decisions[tag] = TagDecision(tag, True, reason)
        selected.append(tag)
    return TagSelection(tuple(selected), tuple(decisions[t] for t in order))


def _filter_one(rules: TagRules, tag: str) -> str | list[str]:
    """A reason for dropping ``tag``, or the notes of the filters it passed."""
    if is_referrers_tag(tag):
        return "referrers fallback tag: its content travels with its subject"
    if is_digest_like(tag):
        return "digest-like tag: never selected"
    if not has_filters(rules):
        if rules.include:
            return "not in include"
        return ["no tag filters"]
    notes: list[str] = []
    if rules.allow:
        allowed_by = next((p for p in rules.allow if p.fullmatch(tag)), None)
        if allowed_by is None:
            shown = ", ".join(quoted(p.pattern) for p in rules.allow)
            return f"matches no allow pattern ({shown})"
        notes.append(f"allowed by {quoted(allowed_by.pattern)}")
    denied_by = next((p for p in rules.deny if p.fullmatch(tag)), None)
    if denied_by is not None:
        return f"denied by {quoted(denied_by.pattern)}"
    if rules.semver is not None:
        version = semver_of(tag)
        if version is None:
            return f"not a semantic version (semver: {quoted(rules.semver.expression)})"
        if not rules.semver.match(version):
            return f"outside {rules.semver.expression}"
        notes.append(f"within {rules.semver.expression}")
    if not notes:
        notes.append("not denied")
    return notes


def _keep_newest(
    count: int, tags: list[str], notes: dict[str, list[str]], decisions: dict[str, TagDecision]
) -> list[str]:
    """The newest ``count`` of ``tags`` (in their original order); decisions for the rest."""
    versions = {t: semver_of(t) for t in tags}
    ranked = sorted(
        (t for t in tags if versions[t] is not None),
        key=lambda t: (versions[t], t),
        reverse=True,
    )
    rank = {t: i + 1 for i, t in enumerate(ranked)}
    kept: list[str] = []
    for tag in tags:
        if versions[tag] is None:
            decisions[tag] = TagDecision(
                tag, False, f"not a semantic version (latest: {count} ranks versions only)"
            )
        elif rank[tag] > count:
            decisions[tag] = TagDecision(tag, False, f"not among the newest {count}")
        else:
            notes[tag].append(f"newest #{rank[tag]} of {count}")
            kept.append(tag)
    return kept


# --------------------------------------------------------------------------- repositories


@dataclass(frozen=True, slots=True)
class RepositoryDecision:
    """Whether one repository of the catalog was selected, and by which pattern."""

    repository: str
    selected: bool
    reason: str


@dataclass(frozen=True, slots=True)
class RepositorySelection:
    """The selected repositories (catalog order) and a decision for every listed one."""

    selected: tuple[str, ...]
    decisions: tuple[RepositoryDecision, ...]


def repository_matches(pattern: str, repository: str) -> bool:
    """True when the glob ``pattern`` (without ``!``) matches the whole ``repository``."""
    return bool(wc_glob.globmatch(repository, pattern, flags=REPOSITORY_GLOB_FLAGS))


def select_repositories(patterns: Sequence[str], catalog: Iterable[str]) -> RepositorySelection:
    """The repositories of ``catalog`` the ordered ``patterns`` select (last match wins)."""
    selected: list[str] = []
    decisions: list[RepositoryDecision] = []
    for repository in dict.fromkeys(catalog):
        last: str | None = None
        for pattern in patterns:
            body = pattern[1:] if pattern.startswith("!") else pattern
            if repository_matches(body, repository):
                last = pattern
        if last is None:
            decisions.append(RepositoryDecision(repository, False, "matches no pattern"))
        elif last.startswith("!"):
            decisions.append(RepositoryDecision(repository, False, f"excluded by {quoted(last)}"))
        else:
            decisions.append(RepositoryDecision(repository, True, f"selected by {quoted(last)}"))
            selected.append(repository)
    return RepositorySelection(tuple(selected), tuple(decisions))
