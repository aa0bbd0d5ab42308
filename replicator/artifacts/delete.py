"""Delete a manifest together with its whole referrer graph, deepest first.

**What goes.**  The root and the referrers :func:`~replicator.graph.rules.admit_referrers`
admits below it, recursively: a manifest a listing names but whose own
``subject`` is another manifest is never deleted — it is *left in place* and
reported (anyone who can push a tag can forge a fallback index, so a listing
alone never decides what is deleted).  That holds for the referrers API too:
its listing is not trusted unread here (a read per referrer is cheap next to
its ``DELETE``, and a lying API must not cost data), so every listed referrer
is read and checked before it is planned.  The repository's tags on any deleted
manifest go with it (a registry removes a manifest's tags when it is deleted
by digest); :func:`plan_delete` names them before anything is deleted.

**Order, and what a listing may name.**  Referrers are deleted before their
subject, so no reachable referrer ever points at a deleted subject.  Each
subject's referrers index is settled once per run, after all of its
referrers are gone: a subject that is deleted too loses its fallback tag
(before the subject itself), and the root's own subject — which stays — has
the root removed from its index in one update (before the root is deleted:
should the delete then fail, the root is still there for a rerun to find).
So a subject's fallback index names a deleted referrer only between that
referrer's ``DELETE`` and its subject's one index update.  That moment is the
price of one index write per subject instead of one per referrer (a
read-modify-write of the whole index each time: quadratic in the number of
referrers), and it is safe to stop in: when the run fails, the referrers it
deleted are unlisted from their subjects' indexes (one update each) before the
error is reported; and a rerun treats a listed digest the registry no longer
has as already deleted.  The reverse order (unlist first) would, on failure,
leave referrers that no listing names and no rerun finds.

**Removing a fallback tag without deleting someone else's manifest.**  A
registry removes a tag only by deleting the manifest it points at, which
removes *every* tag on that manifest.  So the index a deleted subject's
fallback tag points at is deleted only when it is an image index without a
subject, no other tag of the repository points at it, and it lists nothing
but manifests this run deletes or found already gone.  Otherwise (a forged tag
pointing at another image's index, an index that lists a foreign manifest) the
tag is first moved onto a fresh, empty index of this run's own, and that one
is deleted: the tag goes, and the index it pointed at is left in place,
untagged, and reported.  A foreign entry is thus removed from the deleted
subject's listing together with the whole fallback tag; the foreign manifest
itself, and its own tags, stay.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import anyio
import structlog

from replicator.artifacts.discover import Discovery, ReferrerNode, discover_graph
from replicator.errors import InputError, NotFoundError, ReplicatorError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_index, parse_manifest
from replicator.oci.reference import is_referrers_tag, referrers_tag
from replicator.targets.base import ReferrersIndexKeeper, Target

log = structlog.get_logger("replicator.delete")

#: Requests in flight at once while planning and deleting.
DEFAULT_DELETE_CONCURRENCY = 8
#: How long a failed run may spend unlisting what it deleted before reporting the error.
_CLEANUP_SECONDS = 30.0
#: Annotation of the empty index a fallback tag is moved onto before it is removed.
_TAG_REMOVAL_ANNOTATION = "vnd.replicator.fallback-tag-removal"

Action = Literal["deleted", "tag_removed", "fallback_tag_removed", "left_in_place"]


@dataclass(frozen=True, slots=True)
class DeleteEvent:
    """Something a delete did: ``deleted`` a manifest, ``tag_removed`` (``tag``) with it,
    ``fallback_tag_removed`` (``tag``, pointing at ``descriptor``), or ``left_in_place``
    (``note`` says what and why)."""

    action: Action
    descriptor: Descriptor
    tag: str | None = None
    note: str | None = None


DeleteCallback = Callable[[DeleteEvent], None]


def left_in_place_note(referrer: str, subject: str) -> str:
    """What ``manifest delete`` says about a listed manifest it does not delete."""
    return (
        f"Left in place: {referrer} is listed as a referrer of {subject} but does not "
        "name it as its subject"
    )


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


@dataclass(slots=True)
class DeletePlan:
    """What :func:`execute_delete` will do, known before anything is deleted.

    ``order``: every manifest to delete, deepest first, root last;
    ``tags``: the repository's tags (fallback tags excepted) that point at one of
    them, by name; ``notes``: one line per listed manifest left in place;
    ``root_subject``: the manifest the root refers to (it stays), if any;
    ``resolved_tags``: every tag of the repository but the fallback tags, with
    its digest (a fallback index another tag points at is not deleted);
    ``fallback_subjects``: the manifests of ``order`` that have a fallback tag.
    """

    repository: str
    root: Descriptor
    root_subject: Descriptor | None
    discovery: Discovery
    order: list[Descriptor]
    tags: dict[str, str]
    resolved_tags: dict[str, str] = field(repr=False)
    fallback_subjects: frozenset[str] = frozenset()

    @property
    def referrers(self) -> int:
        """How many referrers go with the root."""
        return len(self.order) - 1

    @property
    def notes(self) -> list[str]:
        """The ``Left in place: ...`` line of every foreign listing entry."""
        return [left_in_place_note(e.descriptor.digest, e.subject) for e in self.discovery.foreign]

    def tags_by_digest(self) -> dict[str, list[str]]:
        """The planned tags grouped by the digest they point at, each list sorted."""
        out: dict[str, list[str]] = {}
        for tag, digest in sorted(self.tags.items()):
            out.setdefault(digest, []).append(tag)
        return out


async def plan_delete(
    target: Target,
    repository: str,
    root: Descriptor,
    *,
    concurrency: int = DEFAULT_DELETE_CONCURRENCY,
    tag_names: Sequence[str] | None = None,
    resolved_tags: Mapping[str, str] | None = None,
) -> DeletePlan:
    """Find what deleting ``root`` deletes: its admitted referrer graph and every tag on it.

    Reads the root (to learn its own subject), discovers the referrer graph
    with the shared admission rules (every listed referrer read and checked,
    whatever lists it), lists the repository's tags and resolves
    each one that is not a fallback tag.  A caller that plans several deletes
    in one repository may pass what it already knows instead: ``tag_names``
    (every tag, fallback tags included) and ``resolved_tags`` (``tag ->
    digest`` of every tag but the fallback tags).
    """
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    _, raw = await target.fetch_manifest(repository, root)
    try:
        root_subject = parse_manifest(raw, root.media_type).subject
    except InputError:
        root_subject = None
    discovery = await discover_graph(
        target, repository, root, concurrency=concurrency, trust_api=False
    )
    order = deletion_order(root, discovery.nodes)
    names = list(tag_names) if tag_names is not None else await _tag_names(target, repository)
    resolved = (
        dict(resolved_tags)
        if resolved_tags is not None
        else await _resolve_tags(
            target, repository, [n for n in names if not is_referrers_tag(n)], limiter
        )
    )
    digests = {d.digest for d in order}
    present = set(names)
    return DeletePlan(
        repository=repository,
        root=root,
        root_subject=root_subject,
        discovery=discovery,
        order=order,
        tags={t: d for t, d in sorted(resolved.items()) if d in digests},
        resolved_tags=resolved,
        fallback_subjects=frozenset(d for d in digests if referrers_tag(d) in present),
    )


async def _tag_names(target: Target, repository: str) -> list[str]:
    try:
        return await target.tags(repository)
    except NotFoundError:
        return []


async def _resolve_tags(
    target: Target, repository: str, names: Iterable[str], limiter: anyio.CapacityLimiter
) -> dict[str, str]:
    """``tag -> digest`` for each of ``names`` that still resolves."""
    found: dict[str, str] = {}

    pending = iter(names)

    async def worker() -> None:
        for name in pending:
            try:
                async with limiter:
                    found[name] = (await target.resolve(repository, name)).digest
            except NotFoundError:
                pass

    async with anyio.create_task_group() as tg:  # bounded workers, not a task per tag
        for _ in range(max(1, int(limiter.total_tokens))):
            tg.start_soon(worker)
    return found


async def execute_delete(
    target: Target,
    plan: DeletePlan,
    *,
    on_event: DeleteCallback | None = None,
    concurrency: int = DEFAULT_DELETE_CONCURRENCY,
) -> list[Descriptor]:
    """Carry out ``plan``; return what was deleted, deepest first (root last).

    Deletions of siblings run concurrently (``concurrency`` requests at once);
    events reach ``on_event`` in the plan's order all the same.  A manifest
    already gone counts as deleted.  On failure no new request starts, those
    in flight finish (so what was deleted is known), the referrers deleted so
    far are unlisted from the indexes of their subjects that remain, and the
    first error is raised.
    """
    run = _DeleteRun(target, plan, on_event, anyio.CapacityLimiter(max(1, concurrency)))
    try:
        await run.run()
    except BaseExceptionGroup as group:
        first = _first_error(group)
        if first is None:
            raise
        raise first from None
    return [d for d in plan.order if d.digest in run.deleted]


async def remove_tag(target: Target, repository: str, tag: str) -> None:
    """Remove ``tag`` alone, whatever it points at, which stays.

    A registry removes a tag only with the manifest it points at (and every
    other tag on it), so the tag is first moved onto a fresh empty index of
    this call's own (annotated :data:`_TAG_REMOVAL_ANNOTATION`, never shared),
    and that index is deleted.
    """
    raw = build_index([], annotations={_TAG_REMOVAL_ANNOTATION: secrets.token_hex(16)})
    fresh = descriptor_for(raw, mt.OCI_INDEX)
    await target.push_manifest(repository, fresh, raw, (tag,))
    await target.delete_manifest(repository, fresh, update_referrers=False)


async def delete_graph(
    target: Target,
    repository: str,
    root: Descriptor,
    *,
    on_event: DeleteCallback | None = None,
    concurrency: int = DEFAULT_DELETE_CONCURRENCY,
) -> list[Descriptor]:
    """Plan and carry out the deletion of ``root`` and its referrer graph (see the module doc)."""
    plan = await plan_delete(target, repository, root, concurrency=concurrency)
    for note in plan.notes:
        log.warning("delete.foreign_referrer_kept", repository=repository, note=note)
    return await execute_delete(target, plan, on_event=on_event, concurrency=concurrency)


def _first_error(group: BaseExceptionGroup[BaseException]) -> ReplicatorError | None:
    for inner in group.exceptions:
        if isinstance(inner, ReplicatorError):
            return inner
        if isinstance(inner, BaseExceptionGroup):
            found = _first_error(inner)
            if found is not None:
                return found
    return None


def _steps(root: Descriptor, nodes: list[ReferrerNode]) -> list[tuple[str, str]]:
    """The run's steps in the order their events are reported (post-order, root last)."""
    out: list[tuple[str, str]] = []

    def visit(desc: Descriptor, children: list[ReferrerNode]) -> None:
        for child in children:
            visit(child.descriptor, child.children)
            out.append(("delete", child.descriptor.digest))
        out.append(("listing", desc.digest))

    visit(root, nodes)
    out.append(("unlist", root.digest))
    out.append(("delete", root.digest))
    return out


class _InOrder:
    """Hands events on in the order of the plan's steps, whatever order they finish in."""

    def __init__(self, steps: list[tuple[str, str]], sink: DeleteCallback | None) -> None:
        self._index = {step: i for i, step in enumerate(steps)}
        self._slots: list[list[DeleteEvent] | None] = [None] * len(steps)
        self._next = 0
        self._sink = sink

    def done(self, step: tuple[str, str], events: list[DeleteEvent]) -> None:
        """Step ``step`` finished with ``events``: report every step now in order."""
        self._slots[self._index[step]] = events
        while self._next < len(self._slots) and (ready := self._slots[self._next]) is not None:
            self._emit(ready)
            self._next += 1

    def flush(self) -> None:
        """Report the finished steps still waiting for an earlier one (after a failure)."""
        for events in self._slots[self._next :]:
            if events is not None:
                self._emit(events)
        self._next = len(self._slots)

    def _emit(self, events: list[DeleteEvent]) -> None:
        if self._sink is not None:
            for event in events:
                self._sink(event)


class _DeleteRun:
    """One execution of a :class:`DeletePlan` (see :func:`execute_delete`)."""

    def __init__(
        self,
        target: Target,
        plan: DeletePlan,
        on_event: DeleteCallback | None,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        self.target = target
        self.plan = plan
        self.repo = plan.repository
        self.limiter = limiter
        self.keeper = target if isinstance(target, ReferrersIndexKeeper) else None
        self.deleted: set[str] = set()
        # what a fallback index may list and still be deleted with its tag
        self.planned = {d.digest for d in plan.order}
        self.planned.update(e.descriptor.digest for e in plan.discovery.missing)
        self.events = _InOrder(_steps(plan.root, plan.discovery.nodes), on_event)
        self.by_digest = {d.digest: d for d in plan.order}
        self.tags = plan.tags_by_digest()
        # subject digest -> its referrers deleted by this run and still listed there
        self.unsettled: dict[str, list[str]] = {}

    async def run(self) -> None:
        """Delete the graph; on failure unlist what went, report what was done, re-raise."""
        root = self.plan.root
        try:
            await self._referrers_of(root, self.plan.discovery.nodes)
            await self._unlist_root()
            await self._delete(root, None)
        except BaseException:
            with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
                await self._unlist_unsettled()
            self.events.flush()
            raise

    async def _referrers_of(self, subject: Descriptor, children: list[ReferrerNode]) -> None:
        """Delete the referrers of ``subject`` (each with its own, first), then its listing."""
        if children:
            # A bounded number of workers take the children in turn: thousands of
            # referrers of one subject cost that many tasks in flight, not one each.
            pending = iter(children)

            async def worker() -> None:
                for child in pending:
                    await self._node(child, subject.digest)

            async with anyio.create_task_group() as tg:
                for _ in range(min(len(children), int(self.limiter.total_tokens))):
                    tg.start_soon(worker)
        events = []
        if subject.digest in self.plan.fallback_subjects:
            events = await self._remove_fallback_tag(subject.digest)
        self.unsettled.pop(subject.digest, None)
        self.events.done(("listing", subject.digest), events)

    async def _node(self, node: ReferrerNode, subject: str) -> None:
        await self._referrers_of(node.descriptor, node.children)
        await self._delete(node.descriptor, subject)

    async def _delete(self, desc: Descriptor, subject: str | None) -> None:
        """``DELETE`` one manifest by digest (its fallback-index entry is settled per subject)."""
        async with self.limiter:
            # Shielded: once sent, a DELETE is seen through (a failing sibling
            # cancels the rest), so the run knows for sure what it deleted.
            with anyio.CancelScope(shield=True):
                try:
                    await self.target.delete_manifest(self.repo, desc, update_referrers=False)
                except NotFoundError:
                    log.debug(
                        "delete.manifest_already_gone", repository=self.repo, digest=desc.digest
                    )
        self.deleted.add(desc.digest)
        if subject is not None:
            self.unsettled.setdefault(subject, []).append(desc.digest)
        events = [DeleteEvent("deleted", desc)]
        events += [DeleteEvent("tag_removed", desc, tag=t) for t in self.tags.get(desc.digest, [])]
        self.events.done(("delete", desc.digest), events)

    async def _unlist_root(self) -> None:
        """Remove the root from its own subject's index (that subject stays): one update."""
        subject = self.plan.root_subject
        if subject is not None and self.keeper is not None:
            async with self.limiter:
                removed = await self.keeper.unlist_referrers(
                    self.repo, subject, [self.plan.root.digest]
                )
            log.debug(
                "delete.root_unlisted",
                repository=self.repo,
                subject=subject.digest,
                removed=removed,
            )
        self.events.done(("unlist", self.plan.root.digest), [])

    async def _remove_fallback_tag(self, subject: str) -> list[DeleteEvent]:
        """Remove the fallback tag of a subject this run deletes (see the module doc)."""
        tag = referrers_tag(subject)
        try:
            async with self.limiter:
                index, raw = await self.target.fetch_manifest(self.repo, tag)
        except NotFoundError:
            return []
        reason = self._keep_index_because(index, raw)
        removed = DeleteEvent("fallback_tag_removed", index, tag=tag)
        if reason is None:
            try:
                async with self.limiter:
                    await self.target.delete_manifest(self.repo, index, update_referrers=False)
            except NotFoundError:
                pass
            log.debug("delete.fallback_tag_removed", repository=self.repo, tag=tag)
            return [removed]
        await self._untag(tag)
        note = f"Left in place: {index.digest}, which {tag} pointed at: {reason}"
        log.warning("delete.fallback_index_kept", repository=self.repo, tag=tag, reason=reason)
        return [removed, DeleteEvent("left_in_place", index, tag=tag, note=note)]

    def _keep_index_because(self, index: Descriptor, raw: bytes) -> str | None:
        """Why the manifest a fallback tag points at must not be deleted (None: it may)."""
        if not mt.is_index(index.media_type):
            return "it is not an image index"
        try:
            manifest = parse_manifest(raw, index.media_type)
        except InputError:
            return "it is not a valid image index"
        if manifest.subject is not None:
            return "it has a subject of its own"
        others = sorted(t for t, d in self.plan.resolved_tags.items() if d == index.digest)
        if others:
            return f"tag {', '.join(others)} points at it too"
        kept = [c for c in manifest.children() if c.digest not in self.planned]
        if kept:
            return f"it lists {len(kept)} manifest(s) this run does not delete"
        return None

    async def _untag(self, tag: str) -> None:
        """Remove ``tag`` alone: point it at a fresh empty index, then delete that index."""
        async with self.limiter:
            await remove_tag(self.target, self.repo, tag)

    async def _unlist_unsettled(self) -> None:
        """After a failure: unlist the deleted referrers of each subject still listing them."""
        if self.keeper is None:
            return
        for subject, digests in list(self.unsettled.items()):
            desc = self.by_digest.get(subject)
            if desc is None or not digests:
                continue
            try:
                await self.keeper.unlist_referrers(self.repo, desc, digests)
            except ReplicatorError as exc:
                log.warning(
                    "delete.unlist_failed", repository=self.repo, subject=subject, error=str(exc)
                )
            else:
                del self.unsettled[subject]
