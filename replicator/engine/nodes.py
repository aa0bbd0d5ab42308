"""The graph visitor: one manifest node at a time, pipelined, for every destination.

:meth:`GraphVisitor.visit` makes a node and everything selected under it present
at its destinations.  For each destination it has not visited the node for yet
(the visit is *claimed* per destination: a node reached twice is visited once),
it

1. decides whether the node is already there (:mod:`replicator.engine.presence`),
   while the node's referrers are listed at the source — the two are
   independent, so referrer work starts as early as possible;
2. reads the source manifest only when some destination lacks it, or when its
   index children must be visited to find their referrers;
3. starts right away, concurrently, the index children (visited the same way),
   the blobs (:mod:`replicator.engine.blobs`), the manifest's commit
   (:mod:`replicator.engine.commit`, which waits for them) and the referrer walk
   (:mod:`replicator.engine.referrers`).

Every node reached is an edge of the discovered graph (children and admitted
referrers), recorded before anything can fail, so the tagging closure of every
root above sees it.  A destination that cannot be asked about a node fails
alone; the others go on.

Deadlock freedom: a node only ever waits for nodes whose digest its own bytes
contain (children, blobs, its ``subject``), which is a DAG by construction of
content addressing; a blob follower waits for its lead, and a lead never waits
for anything but its own transfer.
"""

from __future__ import annotations

from functools import partial

from replicator.engine.blobs import BlobMover
from replicator.engine.commit import ManifestCommitter
from replicator.engine.context import Call, NodeVisit, RunContext, mark_side, run_all
from replicator.engine.jobs import Endpoint
from replicator.engine.once import Once
from replicator.engine.presence import Presence
from replicator.engine.referrers import ReferrerWalker
from replicator.engine.sources import SourceReader
from replicator.engine.state import DestRepo, Visit, cell, dest_node, settle
from replicator.errors import ReplicatorError
from replicator.oci import mediatype as mt
from replicator.oci.manifest import Manifest


class GraphVisitor:
    """Visits manifest nodes for their destinations (see the module doc)."""

    def __init__(self, ctx: RunContext, sources: SourceReader, presence: Presence) -> None:
        self._ctx = ctx
        self._state = ctx.state
        self._sources = sources
        self._presence = presence
        self.blobs = BlobMover(ctx)
        self.commits = ManifestCommitter(ctx, self.blobs)
        self.referrers = ReferrerWalker(ctx, sources, presence, self.visit)

    async def visit(self, v: NodeVisit) -> None:
        """Make ``v.desc`` and everything selected under it present at ``v.dests``."""
        key = v.key

        async def visit_admitted() -> None:
            known: dict[DestRepo, bool] = {}
            if v.subject is not None:
                admitted = await self.referrers.admit(v)
                if admitted is None:
                    return
                known = admitted
            await self._visit_claimed(v, known)

        # Its referrers are listed at the source while the destinations are asked
        # about the node itself: the two do not depend on each other.  Not worth a
        # task where no destination is asked (the node is implied present at each)
        # nor for a root (its job started that listing already).
        overlap = (
            (v.subject is not None or v.parent is not None)
            and not self._sources.referrers_asked(key)
            and self.referrers.follows(key, v.depth, v.flt)
            and any(
                d.key not in v.implied and Visit(key, d.key) not in self._state.walks
                for d in v.dests
            )
        )
        if overlap:
            await run_all(
                [partial(self._sources.prefetch_referrers, v.src, v.desc, key), visit_admitted]
            )
        else:
            await visit_admitted()

    async def _visit_claimed(self, v: NodeVisit, known: dict[DestRepo, bool]) -> None:
        """Claim the node's walk for each destination not visited yet, and walk it."""
        # The edge first: whatever happens below, the closure check of every
        # root above sees this node (and its failure, if it fails).
        key = v.key
        self._state.edge(v.parent, key)
        claimed = list(
            {d.key: d for d in v.dests if Visit(key, d.key) not in self._state.walks}.values()
        )
        if not claimed:
            return
        walks = {d.key: cell(self._state.walks, Visit(key, d.key)) for d in claimed}
        try:
            await self._walk(v, claimed, known)
        except BaseException as exc:
            for once in walks.values():
                once.set(error=exc)
            if not isinstance(exc, ReplicatorError):
                raise
            self._ctx.fail(f"{v.desc.digest}: {exc}", exc)
        finally:
            for dest, once in walks.items():
                settle(self._state.walks, Visit(key, dest), once)

    async def _walk(
        self, v: NodeVisit, claimed: list[Endpoint], known: dict[DestRepo, bool]
    ) -> None:
        """Visit a claimed node; ``known``: presence already learned (by the referrer check)."""
        follow = self.referrers.follows(v.key, v.depth, v.flt)
        # An index's children are visited even where it is present when they may
        # have referrers of their own, or when the deep check asks about each.
        visit_children = mt.is_index(v.desc.media_type) and (follow or self._ctx.options.deep_check)
        mine = self._claim_commits(v, claimed)
        found = await self._decide_presence(v, mine, known, visit_children)
        mine, claimed = self._drop_unanswered(v, mine, claimed, found)
        responsible: list[Endpoint] = []
        for d, once in mine:
            if found[d.key] is True:
                settle(self._state.committed, dest_node(d.key, v.desc.digest), once, "exists")
                self._ctx.report.manifests_skipped += 1
                self._ctx.observer.manifest_finished(v.desc, "exists", str(d))
            else:
                responsible.append(d)
        present = [d for d, once in mine if once.value == "exists"]
        check = self._ctx.options.check_blobs and bool(present)
        manifest: Manifest | None = None
        if responsible or visit_children or check:
            try:
                manifest = await self._sources.manifest(v.src, v.desc, v.key)
            except BaseException as exc:
                for d in responsible:
                    self.commits.cell(d, v.desc.digest).set(error=exc)
                raise
        present_here = frozenset(
            d.key for d, once in mine if once.value == "exists" and not self._ctx.options.deep_check
        )
        work = self._work(v, claimed, responsible, manifest, follow, present_here)
        if check and manifest is not None:
            # check_blobs: a destination that holds the manifest is asked about its blobs.
            work += [
                partial(self.blobs.copy, v.src, b, present, lost=True) for b in manifest.blobs()
            ]
        await run_all(work)

    def _claim_commits(self, v: NodeVisit, claimed: list[Endpoint]) -> list[tuple[Endpoint, Once]]:
        """The destinations whose commit of this node this visit decides."""
        mine: list[tuple[Endpoint, Once]] = []
        for d in claimed:
            once = self.commits.cell(d, v.desc.digest)
            if not once.claimed:
                once.claimed = True
                mine.append((d, once))
        return mine

    async def _decide_presence(
        self,
        v: NodeVisit,
        mine: list[tuple[Endpoint, Once]],
        known: dict[DestRepo, bool],
        visit_children: bool,
    ) -> dict[DestRepo, bool | ReplicatorError]:
        """Presence at each destination this visit decides (an error where it could not tell)."""
        found: dict[DestRepo, bool | ReplicatorError] = {}

        async def check(d: Endpoint) -> None:
            if d.key in known:
                found[d.key] = known[d.key]
                return
            try:
                found[d.key] = await self._presence.present(
                    d, v.desc, v.implied, v.fresh, root=v.depth == 0 and v.parent is None
                )
            except ReplicatorError as exc:
                found[d.key] = mark_side(exc, "destination")

        calls: list[Call] = [partial(check, d) for d, _ in mine]
        if visit_children and not self._sources.is_asked(v.key):
            # An index whose children are visited is read whatever the destinations
            # say: read it while they are asked (an error is kept for the real read).
            calls.append(partial(self._sources.prefetch_manifest, v.src, v.desc, v.key))
        try:
            await run_all(calls)
        except BaseException as exc:
            for _, once in mine:
                once.set(error=exc)
            raise
        return found

    def _drop_unanswered(
        self,
        v: NodeVisit,
        mine: list[tuple[Endpoint, Once]],
        claimed: list[Endpoint],
        found: dict[DestRepo, bool | ReplicatorError],
    ) -> tuple[list[tuple[Endpoint, Once]], list[Endpoint]]:
        """A destination that cannot be asked fails alone; the others go on."""
        failed = {k: e for k, e in found.items() if isinstance(e, ReplicatorError)}
        if not failed:
            return mine, claimed
        for d, once in mine:
            error = failed.get(d.key)
            if error is not None:
                once.set(error=error)
                self._state.walks[Visit(v.key, d.key)].set(error=error)
                self._ctx.fail(f"{v.desc.digest} at {d}: {error}", error)
        return (
            [(d, once) for d, once in mine if d.key not in failed],
            [d for d in claimed if d.key not in failed],
        )

    def _work(
        self,
        v: NodeVisit,
        claimed: list[Endpoint],
        responsible: list[Endpoint],
        manifest: Manifest | None,
        follow: bool,
        present_here: frozenset[DestRepo],
    ) -> list[Call]:
        """Everything under the node, to run concurrently: referrers, children, blobs, commits."""
        work: list[Call] = []
        if follow:
            pushed = frozenset(d.key for d in responsible)
            walk = partial(self.referrers.walk, v, claimed, pushed)
            work.append(walk)
        if manifest is None:
            return work
        for child in manifest.children():
            visit = NodeVisit(v.src, child, claimed, v.depth, None, v.key, present_here, flt=v.flt)
            work.append(partial(self.visit, visit))
        if responsible:
            for blob in manifest.blobs():
                work.append(partial(self.blobs.copy, v.src, blob, responsible))
            root = v.depth == 0 and v.subject is None
            for d in responsible:
                commit = self.commits.commit
                work.append(
                    partial(
                        commit,
                        v.src,
                        v.desc,
                        manifest,
                        d,
                        v.subject,
                        root,
                        v.flt,
                        child=v.parent is not None,
                    )
                )
        return work
