"""Referrer walks: list a node's referrers, admit the genuine ones, copy, index once.

For each node whose referrers are followed (``GraphFilter.follows_referrers_at``),
:meth:`ReferrerWalker.walk` lists the referrers at the source (once per run),
keeps the candidates the graph rules allow (:func:`replicator.graph.rules.referrer_candidates`:
no self-reference, manifests only, each digest once), applies the artifact-type
filter, and visits each selected referrer like any node, one referrer level
deeper.

A listing is a claim: a referrer is *admitted* only when its own manifest
names the node as its ``subject`` (:func:`replicator.graph.rules.names_subject`)
— checked before the referrer is claimed, so a bogus listing never blocks the
genuine one.  The check reads the referrer's manifest, so it is made only when
the referrer will be copied: one that every destination already holds is
walked unread (a re-run reads no referrer manifest), and a second listing of it
under another subject is checked.  A source serving the referrers API derives
its listing from the ``subject`` fields itself, so its listing saves the reads
the copy would not make anyway — and nothing more: a referrer the copy reads
(to push it, or read already for any other reason) is checked the same way
whatever listed it, so a lying API costs no extra request and writes nothing
foreign (:func:`replicator.graph.rules.check_listed_referrer`).  A referrer
that is not admitted is never entered in its subject's index, even when it is
at the destination for another reason; one admitted unread is read and
checked before it is entered there (only when the index lacks it: a repair).

When the walk of a subject's referrers ends at a destination with a client-kept
referrers index (:class:`~replicator.targets.base.ReferrersIndexKeeper`), the
referrers this run pushed there, and those found there already, are listed in
one index update (:meth:`ReferrerWalker.relist`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from replicator.engine.commit import record_indexed
from replicator.engine.context import (
    NodeVisit,
    RunContext,
    VisitNode,
    mark_side,
    run_all,
    run_bounded,
)
from replicator.engine.jobs import Endpoint
from replicator.engine.presence import Presence
from replicator.engine.sources import SourceReader
from replicator.engine.state import DestNode, DestRepo, SourceNode, Visit
from replicator.errors import ReplicatorError
from replicator.graph import rules
from replicator.graph.filters import GraphFilter
from replicator.oci.descriptor import Descriptor


class ReferrerWalker:
    """Walks, admits and indexes referrers (see the module doc)."""

    def __init__(
        self, ctx: RunContext, sources: SourceReader, presence: Presence, visit: VisitNode
    ) -> None:
        self._ctx = ctx
        self._state = ctx.state
        self._sources = sources
        self._presence = presence
        self._visit = visit

    def follows(self, key: SourceNode, depth: int, flt: GraphFilter) -> bool:
        """Whether the referrers of the node ``key`` at referrer level ``depth`` are walked."""
        return flt.follows_referrers_at(depth) and key not in self._state.synthetic

    async def walk(self, v: NodeVisit, dests: list[Endpoint], fresh: frozenset[DestRepo]) -> None:
        """Copy the selected referrers of ``v.desc`` (and theirs, recursively) to ``dests``.

        ``fresh``: destinations where ``v.desc`` was just pushed (nothing is listed there yet).
        """
        src, desc, key, depth, flt = v.src, v.desc, v.key, v.depth, v.flt
        try:
            found = await self._sources.referrers(src, desc, key)
        except ReplicatorError as exc:
            mark_side(exc, "source")
            for d in dests:
                self._state.walks[Visit(key, d.key)].set(error=exc)
            self._ctx.fail(f"referrers of {desc.digest}: {exc}", exc)
            return
        candidates = rules.referrer_candidates(desc.digest, found)
        for warning in candidates.warnings:
            self._ctx.warn(warning)
        walked = candidates.kept
        self._ctx.report.referrers_found += len(walked)
        listed: dict[DestRepo, frozenset[str]] = {}
        if walked and not self._ctx.options.deep_check:
            listed = await self._presence.listed_at(dests, desc, fresh)
        selected: list[Descriptor] = []
        child = partial(self._maybe_walk_one, src, dests, depth, desc, key, fresh, selected, flt)
        await run_bounded(
            (
                partial(child, r, frozenset(k for k, ds in listed.items() if r.digest in ds))
                for r in walked
            ),
            self._ctx.fanout,
        )
        rejected = self._state.not_admitted
        selected = [r for r in selected if (key, r.digest) not in rejected]
        if selected:
            await run_all(
                [
                    partial(self.relist, d, v.src, desc, key, selected, listed.get(d.key))
                    for d in dests
                ]
            )
        if depth == 0:  # only a root's direct push waits on it (commit.complete_below)
            self._state.referrers_walked.update(Visit(key, d.key) for d in dests)

    async def _maybe_walk_one(
        self,
        src: Endpoint,
        dests: list[Endpoint],
        depth: int,
        subject: Descriptor,
        subject_key: SourceNode,
        fresh: frozenset[DestRepo],
        selected: list[Descriptor],
        flt: GraphFilter,
        r: Descriptor,
        listed_at: frozenset[DestRepo],
    ) -> None:
        """Apply the artifact-type filter, then visit the referrer (noted in ``selected``).

        A listing entry without ``artifactType`` (written by a tool that left it
        out) is judged by the manifest's own artifact type, read for that.
        """
        if r.artifact_type is None and flt.filters_types:
            try:
                kind = (await self._sources.manifest(src, r)).artifact_type
            except ReplicatorError:
                kind = None  # the visit reports the read failure if the entry is selected
            r = replace(r, artifact_type=kind)
        if not flt.accepts_referrer(r):
            self._ctx.report.referrers_filtered += 1
            return
        selected.append(r)
        await self._visit(
            NodeVisit(src, r, dests, depth + 1, subject, subject_key, listed_at, fresh, flt)
        )

    async def admit(self, v: NodeVisit) -> dict[DestRepo, bool] | None:
        """Whether a listed referrer is walked: None to skip it, else presence learned.

        A referrer not admitted is remembered (``RunState.not_admitted``) so that
        its subject's index never lists it.
        """
        known = await self._admission(v)
        if known is None:
            assert v.parent is not None and v.subject is not None
            self._state.not_admitted.add((v.parent, v.desc.digest))
        return known

    async def _admission(self, v: NodeVisit) -> dict[DestRepo, bool] | None:
        """:meth:`admit`'s decision (see the module doc)."""
        assert v.subject is not None
        subject = v.subject
        key = v.key
        if self._sources.is_read(key):
            # Already read (type filter, another visit): the check costs nothing.
            return {} if await self._genuine(v) else None
        pending = list(
            {d.key: d for d in v.dests if Visit(key, d.key) not in self._state.walks}.values()
        )
        accepted = self._state.admitted_unread.get(key)
        known: dict[DestRepo, bool] = {}
        if pending and accepted in (None, subject.digest):
            known = await self._presence.presence(v.desc, pending, v.implied, v.fresh)
            if len(known) == len(pending) and all(known.values()):
                self._state.admitted_unread[key] = subject.digest
                return known
        elif not pending and accepted == subject.digest:
            return known
        elif not pending and await self._sources.has_referrers_api(v.src):
            # Nothing left to claim or push here: the API's word saves the read
            # (:meth:`relist` checks it before an index lists it).
            return known
        return known if await self._genuine(v) else None

    async def _genuine(self, v: NodeVisit) -> bool:
        """True when the listed referrer's manifest names its subject (see the module doc).

        A referrer that cannot be read is a failure recorded against its
        subject's graph.
        """
        assert v.subject is not None
        try:
            manifest = await self._sources.manifest(v.src, v.desc, v.key)
        except ReplicatorError as exc:
            mark_side(exc, "source")
            if v.parent is not None:
                self._state.referrer_errors.setdefault(v.parent, exc)
            self._ctx.fail(f"referrer {v.desc.digest} of {v.subject.digest}: {exc}", exc)
            return False
        warning = rules.check_listed_referrer(v.subject.digest, v.desc.digest, manifest)
        if warning is not None:
            self._ctx.warn(warning)
            return False
        return True

    async def relist(
        self,
        d: Endpoint,
        src: Endpoint,
        subject: Descriptor,
        key: SourceNode,
        selected: list[Descriptor],
        listed: frozenset[str] | None,
    ) -> None:
        """List the referrers of ``subject`` at ``d`` once they are all there: one write.

        The referrers this run pushed there with their index update deferred
        are added to the subject's referrers index in one update — one
        fallback-index write per subject instead of one per referrer, and no
        superseded index to delete.  A referrer found already present (asked,
        or from the journal) is checked too: an earlier run can have stored it
        and then failed to update the index, and another tool can have
        rewritten the index.  A failure keeps the tags above this subject
        unset, like any failed node; a rerun finds the referrers present and
        lists them then.  When this run pushed none and the index read before
        the walk (``listed``) names every referrer found, nothing is asked.
        Whatever the index is to gain is first checked against its own
        manifest (:meth:`_unlisted_genuine`).
        """
        keeper = self._ctx.abilities(d.target).referrers_index
        if keeper is None:
            return
        found, pushed = self._present_referrers(d, selected)
        if not found and not pushed:
            return
        if not pushed and listed is not None and all(r.digest in listed for r in found):
            return
        found, pushed = await self._only_genuine(d, src, subject, key, found, pushed, listed)
        if not found and not pushed:
            return
        if self._ctx.options.plan:
            await self._plan_relist(d, subject, [*pushed, *found], listed)
            return
        try:
            added = await self._ctx.limited(
                "meta",
                d.location,
                partial(keeper.ensure_referrers_listed, d.repository, subject, [*pushed, *found]),
            )
        except ReplicatorError as exc:
            mark_side(exc, "destination")
            self._state.referrer_errors.setdefault(key, exc)
            self._ctx.fail(f"referrers index of {subject.digest} at {d}: {exc}", exc)
            return
        if added:
            self._ctx.report.referrer_indexes_updated += 1
        for r in pushed:
            self._state.unindexed.discard(DestNode(d.location, d.repository, r.digest))
            await record_indexed(self._ctx, d, r.digest, subject.digest)
        stray = [r.digest for r in found if r.digest in added]
        if stray:
            self._ctx.warn(
                f"{d}: {len(stray)} referrer(s) of {subject.digest[:19]} were there but not "
                "listed in its referrers index; added"
            )

    @staticmethod
    def _key(src: Endpoint, r: Descriptor) -> SourceNode:
        return SourceNode(src.location, src.repository, r.digest)

    async def _only_genuine(
        self,
        d: Endpoint,
        src: Endpoint,
        subject: Descriptor,
        key: SourceNode,
        found: list[Descriptor],
        pushed: list[Descriptor],
        listed: frozenset[str] | None,
    ) -> tuple[list[Descriptor], list[Descriptor]]:
        """``found`` and ``pushed`` without what ``d``'s index must not gain.

        Nothing to check where ``d`` serves the referrers API (its index update
        writes nothing).  Where the index read before the walk is missing (a
        deep check) and a referrer was not read, the index is read first, so
        that only what it lacks is judged.
        """
        if await self._lists_by_itself(d):
            return found, pushed
        if listed is None and any(not self._sources.is_read(self._key(src, r)) for r in found):
            listed = await self._listed_now(d, subject)
        keep = await self._unlisted_genuine(src, subject, key, [*pushed, *found], listed)
        return [r for r in found if r.digest in keep], [r for r in pushed if r.digest in keep]

    async def _lists_by_itself(self, d: Endpoint) -> bool:
        """True when ``d`` serves the referrers API: its index update writes nothing."""
        probe = self._ctx.abilities(d.target).referrers_api_probe
        if probe is None:
            return False
        try:
            return bool(await probe.referrers_api_supported(d.repository))
        except ReplicatorError:
            return False

    async def _listed_now(self, d: Endpoint, subject: Descriptor) -> frozenset[str] | None:
        """What ``d`` lists for ``subject`` now (None when it cannot say)."""
        lister = self._ctx.abilities(d.target).referrers_listing
        if lister is None:
            return None
        try:
            return await self._ctx.limited(
                "meta", d.location, partial(lister.listed_referrers, d.repository, subject)
            )
        except ReplicatorError:
            return None

    async def _unlisted_genuine(
        self,
        src: Endpoint,
        subject: Descriptor,
        key: SourceNode,
        wanted: list[Descriptor],
        listed: frozenset[str] | None,
    ) -> set[str]:
        """The digests of ``wanted`` that may be listed: already listed, or checked genuine.

        One that ``listed`` lacks is judged by its source manifest with
        :func:`replicator.graph.rules.check_listed_referrer` before the index
        names it: read already when this run pushed it (no request), read now
        when it was admitted unread (present everywhere) — only a repair reads.
        """
        keep: set[str] = set()

        async def check(r: Descriptor) -> None:
            if listed is not None and r.digest in listed:
                keep.add(r.digest)
                return
            try:
                manifest = await self._sources.manifest(src, r, self._key(src, r))
            except ReplicatorError as exc:
                mark_side(exc, "source")
                self._state.referrer_errors.setdefault(key, exc)
                self._ctx.fail(f"referrer {r.digest} of {subject.digest}: {exc}", exc)
                return
            warning = rules.check_listed_referrer(subject.digest, r.digest, manifest)
            if warning is None:
                keep.add(r.digest)
            elif (key, r.digest) not in self._state.not_admitted:
                self._state.not_admitted.add((key, r.digest))
                self._ctx.warn(warning)

        await run_bounded((partial(check, r) for r in wanted), self._ctx.fanout)
        return keep

    async def _plan_relist(
        self,
        d: Endpoint,
        subject: Descriptor,
        wanted: list[Descriptor],
        listed: frozenset[str] | None,
    ) -> None:
        """A dry run: plan the index update only for the referrers the index lacks.

        Reads the destination's listing when the walk did not (``--deep-check``).
        """
        lister = self._ctx.abilities(d.target).referrers_listing
        if listed is None and lister is not None:
            try:
                listed = await self._ctx.limited(
                    "meta", d.location, partial(lister.listed_referrers, d.repository, subject)
                )
            except ReplicatorError:
                listed = None
        lacking = [r.digest for r in wanted if listed is None or r.digest not in listed]
        if lacking:
            self._ctx.planned("index", str(d), subject.digest, detail=",".join(lacking))
            self._ctx.report.referrer_indexes_updated += 1

    def _present_referrers(
        self, d: Endpoint, selected: list[Descriptor]
    ) -> tuple[list[Descriptor], list[Descriptor]]:
        """Of ``selected``: those found at ``d``, and those pushed there with the index deferred."""
        found: list[Descriptor] = []
        pushed: list[Descriptor] = []
        for r in selected:
            node = DestNode(d.location, d.repository, r.digest)
            once = self._state.committed.get(node)
            if once is None or not once.ok:
                continue
            if once.value == "exists":
                found.append(r)
            elif node in self._state.unindexed:
                pushed.append(r)
        return found, pushed
