"""Tags last: a destination is tagged only when the whole selected graph is there.

Before a job's graph is visited, :meth:`Tagger.check_tags` asks each
destination where its tags point: a tag already on the root proves the root
present there (and everything under it, as an index vouches for its
children), and an unchanged tag is not written again.

When a job's visit ends, :meth:`Tagger.finish_job` computes, per destination,
the closure of the discovered graph under the root (children and admitted
referrers, recursively) and tags the destination only when every node of it is
confirmed there — a failure anywhere below leaves the tag where it was.  A
closure still waiting on work shared with another job (a referrer walk that
job claimed first) is deferred to the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import structlog

from replicator.engine.context import RunContext, mark_side, run_all
from replicator.engine.jobs import CopyJob, Destination, Endpoint
from replicator.engine.ledger import Confirmation
from replicator.engine.presence import Presence
from replicator.engine.report import JobResult
from replicator.engine.sources import descriptor_of
from replicator.engine.state import DestNode, DestRepo, DestTag, SourceNode, Visit
from replicator.errors import NotFoundError, ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest

_log = structlog.get_logger("replicator.engine")


@dataclass(frozen=True, slots=True)
class TagCheck:
    """What the destinations' tags said before a job's visit.

    ``implied``: destinations where a tag already points at the root (its graph
    is there); ``skipped``: destinations where every tag is kept pointing
    elsewhere (``overwrite: never``) — nothing is copied there.
    """

    implied: frozenset[DestRepo]
    skipped: frozenset[DestRepo]


class Tagger:
    """Checks destination tags before a job and sets them after it (see the module doc)."""

    def __init__(self, ctx: RunContext, presence: Presence) -> None:
        self._ctx = ctx
        self._state = ctx.state
        self._presence = presence

    async def check_tags(self, job: CopyJob, result: JobResult, root: Descriptor) -> TagCheck:
        """Ask each destination where its tags point; a tag on the root proves it present.

        A tag pointing elsewhere is remembered (for ``backup``) and, under
        ``overwrite: never``, kept: reported in ``result.kept`` and not moved.
        """
        implied: set[DestRepo] = set()
        skipped: set[DestRepo] = set()

        async def check(d: Destination) -> None:
            ep = d.endpoint
            kept = 0
            for tag in d.tags:
                known = await self._current(ep, tag)
                if known is None:
                    continue
                where = DestTag(ep.location, ep.repository, tag)
                if known == root.digest:
                    if d.overwrite != "always":
                        implied.add(ep.key)
                        self._state.current_tags[where] = known
                    continue
                self._state.previous_tags[where] = known
                if d.overwrite == "never":
                    kept += 1
                    self._state.kept_tags.add(where)
                    result.kept.append(f"{ep}:{tag} -> {known}")
            if d.tags and kept == len(d.tags):
                skipped.add(ep.key)

        await run_all([partial(check, d) for d in job.destinations])
        return TagCheck(frozenset(implied), frozenset(skipped))

    async def _current(self, ep: Endpoint, tag: str) -> str | None:
        """Where ``tag`` points at ``ep`` (ledger, else asked), None when absent or unknown."""
        known = await self._ctx.ledger.tagged(ep.location, ep.repository, tag)
        if known is not None:
            return known
        if await self._presence.repository_new(ep):
            return None  # a repository that does not exist has no tag
        try:
            cur = await self._ctx.limited(
                "meta", ep.location, partial(ep.target.resolve, ep.repository, tag)
            )
        except NotFoundError:
            return None
        except ReplicatorError as exc:
            _log.debug("engine.tag_check_failed", destination=str(ep), error=str(exc))
            return None
        return cur.digest

    async def finish_job(
        self, job: CopyJob, result: JobResult, root: Manifest, *, final: bool
    ) -> bool:
        """Tag every destination whose graph is complete; False when still pending."""
        key = SourceNode(job.source.location, job.source.repository, root.digest)
        dests = [d for d in job.destinations if d.endpoint.key not in self._state.skipped(key)]
        states = {d.endpoint.key: self.closure_state(key, d.endpoint.key) for d in dests}
        if not final and any(s is None for s in states.values()):
            return False
        missing = 0
        for d in dests:
            state = states[d.endpoint.key]
            if state is None or state > 0:
                missing += state or 1
                continue
            self._count_changes(key, root, d.endpoint.key, result)
            try:
                await self._set_tags(d, root, result)
                result.tags.extend(
                    t for t in d.tags if t not in result.tags and not self._is_kept(d, t)
                )
            except ReplicatorError as exc:
                mark_side(exc, "destination")
                missing += 1
                self._ctx.fail(f"tag {d.display}: {exc}", exc)
        result.missing = missing
        if missing:
            result.status = "failed"
            result.error = result.error or f"{missing} selected node(s) missing at a destination"
        elif not dests:
            result.status = "kept"
        else:
            result.status = "copied"
        return True

    def _is_kept(self, d: Destination, tag: str) -> bool:
        ep = d.endpoint
        return DestTag(ep.location, ep.repository, tag) in self._state.kept_tags

    def _count_changes(
        self, root: SourceNode, manifest: Manifest, dest: DestRepo, result: JobResult
    ) -> None:
        """Add to ``result`` the manifests of the job's graph this run pushed at ``dest``."""
        state = self._state
        children = {c.digest for c in manifest.children()}
        seen = {root}
        stack = [root]
        while stack:
            key = stack.pop()
            commit = state.committed.get(DestNode(dest.location, dest.repository, key.digest))
            if commit is not None and commit.ok and commit.value == "pushed":
                result.new_manifests += 1
                if key == root:
                    result.root_new = True
                elif key.digest not in children:
                    result.new_referrers += 1
            for nxt in state.edges.get(key, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)

    def closure_state(self, root: SourceNode, dest: DestRepo) -> int | None:
        """Nodes under ``root`` not confirmed at ``dest`` (None while some are pending)."""
        state = self._state
        seen = {root}
        stack = [root]
        bad = 0
        pending = False
        while stack:
            key = stack.pop()
            commit = state.committed.get(DestNode(dest.location, dest.repository, key.digest))
            walk = state.walks.get(Visit(key, dest))
            if key in state.referrer_errors:
                bad += 1
            if walk is None and key != root:
                # A node is claimed in the same step its edge is added, so no walk
                # means it was never visited for this destination: a child of a node
                # already present there (implied present, referrers not followed).
                continue
            for once in (commit, walk):
                if once is None or not once.done:
                    pending = True
                elif once.error is not None:
                    bad += 1
            for nxt in state.edges.get(key, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        if pending and not bad:
            return None
        return bad + (1 if pending else 0)

    async def _set_tags(self, d: Destination, root: Manifest, result: JobResult) -> None:
        ep = d.endpoint
        desc = descriptor_of(root)
        for tag in d.tags:
            where = DestTag(ep.location, ep.repository, tag)
            if where in self._state.kept_tags:
                continue  # overwrite: never
            current = self._state.current_tags.get(where)
            if where in self._state.pushed_tags and current == root.digest:
                result.tags_moved.append(tag)  # written with the root's own push
                continue
            if current == root.digest:
                self._ctx.report.tags_unchanged += 1
                continue
            previous = self._state.previous_tags.get(where)
            if d.backup and previous is not None and previous != root.digest:
                await self._backup(d, tag, previous, result)
            if self._ctx.options.plan:
                self._ctx.planned("tag", str(ep), root.digest, tag=tag, detail=previous)
            else:
                await self._ctx.limited(
                    "meta",
                    ep.location,
                    partial(ep.target.tag, ep.repository, desc, root.raw, tag),
                )
            await self._ctx.ledger.record(
                Confirmation("tag", "tagged", ep.location, ep.repository, root.digest, tag=tag)
            )
            self._ctx.report.tags_set += 1
            result.tags_moved.append(tag)

    async def _backup(self, d: Destination, tag: str, previous: str, result: JobResult) -> None:
        """Keep the manifest ``tag`` pointed at under the backup tag, before it moves."""
        assert d.backup is not None
        ep = d.endpoint
        name = d.backup.replace("{tag}", tag)
        if self._ctx.options.plan:
            self._ctx.planned("backup", str(ep), previous, tag=name)
        else:
            old, raw = await self._ctx.limited(
                "meta", ep.location, partial(ep.target.fetch_manifest, ep.repository, previous)
            )
            await self._ctx.limited(
                "meta", ep.location, partial(ep.target.tag, ep.repository, old, raw, name)
            )
        result.backups.append(f"{name} -> {previous}")
