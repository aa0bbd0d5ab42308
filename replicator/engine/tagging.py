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

from functools import partial

import structlog

from replicator.engine.context import RunContext, mark_side, run_all
from replicator.engine.jobs import CopyJob, Destination
from replicator.engine.ledger import Confirmation
from replicator.engine.presence import Presence
from replicator.engine.report import JobResult
from replicator.engine.sources import descriptor_of
from replicator.engine.state import DestNode, DestRepo, DestTag, SourceNode, Visit
from replicator.errors import NotFoundError, ReplicatorError
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest

_log = structlog.get_logger("replicator.engine")


class Tagger:
    """Checks destination tags before a job and sets them after it (see the module doc)."""

    def __init__(self, ctx: RunContext, presence: Presence) -> None:
        self._ctx = ctx
        self._state = ctx.state
        self._presence = presence

    async def check_tags(self, job: CopyJob, root: Descriptor) -> frozenset[DestRepo]:
        """Ask each destination where its tags point; a tag on the root proves it present."""
        implied: set[DestRepo] = set()

        async def check(d: Destination) -> None:
            ep = d.endpoint
            for tag in d.tags:
                known = await self._ctx.ledger.tagged(ep.location, ep.repository, tag)
                if known is None and await self._presence.repository_new(ep):
                    continue  # a repository that does not exist has no tag
                if known is None:
                    try:
                        cur = await self._ctx.limited(
                            "meta", ep.location, partial(ep.target.resolve, ep.repository, tag)
                        )
                        known = cur.digest
                    except NotFoundError:
                        continue
                    except ReplicatorError as exc:
                        _log.debug("engine.tag_check_failed", destination=str(ep), error=str(exc))
                        continue
                if known == root.digest:
                    implied.add(ep.key)
                    self._state.current_tags[DestTag(ep.location, ep.repository, tag)] = known

        await run_all([partial(check, d) for d in job.destinations])
        return frozenset(implied)

    async def finish_job(
        self, job: CopyJob, result: JobResult, root: Manifest, *, final: bool
    ) -> bool:
        """Tag every destination whose graph is complete; False when still pending."""
        key = SourceNode(job.source.location, job.source.repository, root.digest)
        states = {d.endpoint.key: self.closure_state(key, d.endpoint.key) for d in job.destinations}
        if not final and any(s is None for s in states.values()):
            return False
        missing = 0
        for d in job.destinations:
            state = states[d.endpoint.key]
            if state is None or state > 0:
                missing += state or 1
                continue
            try:
                await self._set_tags(d, root)
                result.tags.extend(t for t in d.tags if t not in result.tags)
            except ReplicatorError as exc:
                mark_side(exc, "destination")
                missing += 1
                self._ctx.fail(f"tag {d.display}: {exc}", exc)
        result.missing = missing
        if missing:
            result.status = "failed"
            result.error = result.error or f"{missing} selected node(s) missing at a destination"
        else:
            result.status = "copied"
        return True

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

    async def _set_tags(self, d: Destination, root: Manifest) -> None:
        ep = d.endpoint
        desc = descriptor_of(root)
        for tag in d.tags:
            where = DestTag(ep.location, ep.repository, tag)
            if (
                where in self._state.pushed_tags
                and self._state.current_tags.get(where) == root.digest
            ):
                continue  # written with the root's own push
            if self._state.current_tags.get(where) == root.digest:
                self._ctx.report.tags_unchanged += 1
                continue
            await self._ctx.limited(
                "meta", ep.location, partial(ep.target.tag, ep.repository, desc, root.raw, tag)
            )
            await self._ctx.ledger.record(
                Confirmation("tag", "tagged", ep.location, ep.repository, root.digest, tag=tag)
            )
            self._ctx.report.tags_set += 1
