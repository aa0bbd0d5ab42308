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
  ``subject`` fields itself, so its candidates are admitted without a read
  (:func:`listing_is_trusted`) — but that trust only saves reads: whenever a
  listed manifest's bytes are read anyway (to copy it, to learn its artifact
  type), :func:`check_listed_referrer` judges it like any other listing's
  entry, so a lying API can make a tool skip a read, never act on a manifest
  that says it refers to something else.  Where acting on a lie would destroy
  data (``manifest delete``) nothing is trusted unread.
  :func:`admit_referrers` applies all of this to one listing: the walker,
  ``discover`` and ``manifest delete`` call it; the copy engine, which reads
  what it copies, calls :func:`check_listed_referrer` on what it read.
* **Selection** by artifact type and referrer depth is
  :class:`~replicator.graph.filters.GraphFilter`'s (globs, one rule for
  ``copy`` and ``discover``).
* **Cycles** cannot form through successors (content addressing makes them a
  DAG) but can through listings (A lists B, B lists A): :class:`CycleGuard`
  expands each digest once.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field, replace

import anyio

from replicator.errors import InputError, NotFoundError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest, parse_manifest
from replicator.targets.base import ReferrersApiProbe, Target


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


def missing_referrer_warning(referrer: str, subject: str) -> str:
    """The warning for a listed referrer the store does not have (any more)."""
    return f"{referrer} is listed as a referrer of {subject} but is not there: skipped"


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


def check_listed_referrer(subject: str, referrer: str, manifest: Manifest) -> str | None:
    """Judge a listed referrer of ``subject`` by its own manifest: None when genuine.

    ``manifest`` is what the listing's entry ``referrer`` (a digest) turned out
    to be when read.  It is a referrer of ``subject`` only when it is not the
    subject itself and its own ``subject`` field names ``subject``; otherwise
    the warning to give (the same words :func:`admit_referrers` uses), and the
    entry must be neither followed, copied, listed nor deleted as a referrer of
    ``subject`` — whoever produced the listing, the referrers API included.
    """
    if referrer == subject:
        return self_reference_warning(subject)
    if not names_subject(manifest, subject):
        return foreign_subject_warning(referrer, subject)
    return None


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


# ------------------------------------------------------------------ admission


async def listing_is_trusted(target: Target, repository: str) -> bool:
    """True when ``target`` lists the referrers of ``repository`` through the referrers API.

    Such a listing is derived by the store from each manifest's own ``subject``,
    so its entries are admitted without reading them.  Ask after a first
    :meth:`~replicator.targets.base.Target.referrers` call: a registry has learned
    the answer by then and asks nothing more.
    """
    return isinstance(target, ReferrersApiProbe) and await target.referrers_api_supported(
        repository
    )


#: Listed manifests read at once while a listing is admitted.
READ_WORKERS = 16


@dataclass(frozen=True, slots=True)
class Admitted:
    """A listed referrer that passed admission.

    ``descriptor`` is the listing's entry (artifact type and annotations as
    listed; media type, size and, when the entry had none, the artifact type
    taken from the manifest when it was read).  ``raw`` holds the manifest's
    verified bytes when they were read to admit it (``None`` for a trusted
    listing).
    """

    descriptor: Descriptor
    raw: bytes | None = None


@dataclass(slots=True)
class Admission:
    """One referrer listing after :func:`admit_referrers`.

    * ``admitted``: genuine referrers that passed the filter, in listing order;
    * ``foreign``: listed manifests whose own ``subject`` is not the node (or
      that are not manifests at all): never to be followed, deleted or copied
      as its referrers;
    * ``missing``: listed digests the store does not have;
    * ``filtered``: how many candidates the artifact-type filter left out;
    * ``warnings``: one line per skipped entry (self-reference, foreign, missing).
    """

    admitted: list[Admitted] = field(default_factory=list)
    foreign: list[Descriptor] = field(default_factory=list)
    missing: list[Descriptor] = field(default_factory=list)
    filtered: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Read:
    """One candidate being admitted: what its read found (the manifest itself is not kept)."""

    desc: Descriptor
    raw: bytes | None = None
    read: bool = False
    parsed: bool = False
    genuine: bool = False
    missing: bool = False


async def admit_referrers(
    target: Target,
    repository: str,
    subject: str,
    listed: Iterable[Descriptor],
    *,
    trusted: bool,
    accept: Callable[[Descriptor], bool] | None = None,
    skip: Container[str] = (),
    limiter: anyio.CapacityLimiter | None = None,
    keep_raw: bool = True,
) -> Admission:
    """Which entries of a referrer listing of ``subject`` are its referrers.

    :func:`referrer_candidates` first; digests in ``skip`` (already handled by
    the caller) are then left out unread.  ``accept`` (an artifact-type filter,
    e.g. :meth:`GraphFilter.accepts_referrer`) is applied before any read; an
    entry listed without an artifact type is judged by its manifest's, read
    for that.  Unless the listing is ``trusted`` (see :func:`listing_is_trusted`)
    every remaining candidate is read — concurrently, under ``limiter`` when
    given — and admitted only when :func:`names_subject` holds.  A candidate of
    a trusted listing that is read all the same (for its artifact type) is
    judged by what was read, like any other.  A candidate the
    store does not have is reported as missing, one that does not parse as a
    manifest as foreign; other read errors propagate.  ``keep_raw`` False drops
    each read manifest's bytes once judged (a caller that will not need them:
    a listing of thousands of referrers would otherwise be held whole).  Reads
    run in a bounded number of workers, not one task each.
    """
    out = Admission()
    candidates = referrer_candidates(subject, listed)
    out.warnings.extend(candidates.warnings)
    todo: list[_Read] = []
    for desc in candidates.kept:
        if desc.digest in skip:
            continue
        if accept is not None and desc.artifact_type is not None and not accept(desc):
            out.filtered += 1
            continue
        todo.append(_Read(desc))
    reads = [
        r for r in todo if not trusted or (accept is not None and r.desc.artifact_type is None)
    ]
    if reads:
        pending = iter(reads)

        async def worker() -> None:
            for r in pending:
                await _read_candidate(target, repository, r, limiter, subject, keep_raw)

        async with anyio.create_task_group() as tg:
            for _ in range(min(len(reads), READ_WORKERS)):
                tg.start_soon(worker)
    for r in todo:
        _judge(out, r, subject, trusted=trusted, accept=accept)
    return out


async def _read_candidate(
    target: Target,
    repository: str,
    r: _Read,
    limiter: anyio.CapacityLimiter | None,
    subject: str,
    keep_raw: bool,
) -> None:
    """Read one listed manifest by digest (a listing's size or media type may be wrong)."""
    try:
        if limiter is None:
            got, raw = await target.fetch_manifest(repository, r.desc.digest)
        else:
            async with limiter:
                got, raw = await target.fetch_manifest(repository, r.desc.digest)
    except NotFoundError:
        r.missing = True
        return
    r.read = True
    r.raw = raw if keep_raw else None
    r.desc = replace(r.desc, media_type=got.media_type, size=got.size)
    try:
        manifest = parse_manifest(raw, got.media_type)
    except InputError:
        return
    r.parsed = True
    r.genuine = names_subject(manifest, subject)
    if r.desc.artifact_type is None and manifest.artifact_type is not None:
        r.desc = replace(r.desc, artifact_type=manifest.artifact_type)


def _judge(
    out: Admission,
    r: _Read,
    subject: str,
    *,
    trusted: bool,
    accept: Callable[[Descriptor], bool] | None,
) -> None:
    """File one candidate under admitted, foreign, missing or filtered."""
    if r.missing:
        out.missing.append(r.desc)
        out.warnings.append(missing_referrer_warning(r.desc.digest, subject))
        return
    if (r.read or not trusted) and not (r.parsed and r.genuine):
        out.foreign.append(r.desc)
        out.warnings.append(foreign_subject_warning(r.desc.digest, subject))
        return
    if accept is not None and not accept(r.desc):
        out.filtered += 1
        return
    out.admitted.append(Admitted(r.desc, r.raw))
