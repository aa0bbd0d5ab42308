"""A job from its root: read the root, apply the platform filter, visit, tag.

:meth:`JobRunner.run` reads the job's root at the source (while asking each
destination repository whether it exists), applies ``--platform`` to an index
root, checks that a destination named by digest gets exactly that digest,
records the job's tags for a direct push of a complete root, and visits the
root's graph — the root's referrers listed at the source while the
destinations are asked where their tags point.  Tags are set by
:class:`~replicator.engine.tagging.Tagger` once the graph is complete.

Platform subsets (``--platform`` on an index root): with one platform
selected, that platform's manifest itself becomes the destination root (its
digest is preserved, the index is not copied); with several, a new index
listing only the selected manifests (and the Docker attestation manifests
describing them) is written — its digest differs from the source index.  Such
a built root has no referrers of its own.
"""

from __future__ import annotations

import anyio

from replicator.engine.context import NodeVisit, RunContext, mark_side
from replicator.engine.jobs import CopyJob
from replicator.engine.nodes import GraphVisitor
from replicator.engine.presence import Presence
from replicator.engine.report import JobResult
from replicator.engine.sources import SourceReader, descriptor_of, parse_source, source_node
from replicator.engine.state import DestNode
from replicator.engine.tagging import Tagger
from replicator.errors import ReplicatorError, UsageError
from replicator.graph.filters import is_docker_attestation
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest, build_index, parse_manifest

#: A job whose tags wait for work another job claimed, with its result and root.
Deferred = tuple[CopyJob, JobResult, Manifest]


class JobRunner:
    """Runs one job from its root to its tags (see the module doc)."""

    def __init__(
        self,
        ctx: RunContext,
        sources: SourceReader,
        presence: Presence,
        visitor: GraphVisitor,
        tagger: Tagger,
    ) -> None:
        self._ctx = ctx
        self._sources = sources
        self._presence = presence
        self._visitor = visitor
        self._tagger = tagger
        #: The first error met reading a job's root, if any.
        self.root_error: ReplicatorError | None = None

    async def run(self, job: CopyJob, result: JobResult, deferred: list[Deferred]) -> None:
        """Copy ``job``'s graph; tag now, or append to ``deferred`` to tag at the end."""
        root = await self._read_root(job, result)
        if root is None:
            return
        result.source_digest = root.digest
        self._sources.seed(source_node(job.source, root.digest), root)
        selected = await self._apply_platforms(job, result, root)
        if selected is None:
            return
        root = selected
        result.digest = root.digest
        result.media_type = root.media_type
        if not self._digest_matches(job, result, root):
            return
        await self._visit_root(job, root)
        if not await self._tagger.finish_job(job, result, root, final=False):
            deferred.append((job, result, root))

    async def _read_root(self, job: CopyJob, result: JobResult) -> Manifest | None:
        """The job's root manifest, or None (the failure recorded in ``result``)."""
        src = job.source
        root: Manifest | None = None
        async with anyio.create_task_group() as tg:
            # Whether each destination repository is new is asked while the
            # source root is read: the tag checks need the answer.
            for d in job.destinations:
                if not self._presence.repository_asked(d.endpoint):
                    tg.start_soon(self._presence.repository_new, d.endpoint)
            try:
                desc, raw = await self._ctx.limited(
                    "meta",
                    src.location,
                    lambda: src.target.fetch_manifest(src.repository, job.reference),
                )
                root = parse_source(raw, desc.media_type, src)
            except ReplicatorError as exc:
                mark_side(exc, "source")
                result.status = "failed"
                result.error = str(exc)
                if self.root_error is None:
                    self.root_error = exc
                self._ctx.fail(f"{job.display}: {exc}", exc)
        return root

    def _digest_matches(self, job: CopyJob, result: JobResult, root: Manifest) -> bool:
        for d in job.destinations:
            if d.digest is not None and d.digest != root.digest:
                result.status = "failed"
                result.error = f"{d.display}: names {d.digest} but the source is {root.digest}"
                self._ctx.fail(result.error)
                return False
        return True

    async def _visit_root(self, job: CopyJob, root: Manifest) -> None:
        src = job.source
        root_desc = descriptor_of(root)
        key = source_node(src, root.digest)
        for d in job.destinations:
            if d.tags:
                ep = d.endpoint
                self._ctx.state.root_tags.setdefault(
                    DestNode(ep.location, ep.repository, root.digest), d.tags
                )
        dests = [d.endpoint for d in job.destinations]
        async with anyio.create_task_group() as tg:
            # The root's referrers are listed at the source while the destinations
            # are asked where their tags point and whether they hold the root.
            if self._visitor.referrers.follows(key, 0):
                tg.start_soon(self._sources.prefetch_referrers, src, root_desc)
            implied = await self._tagger.check_tags(job, root_desc)
            await self._visitor.visit(NodeVisit(src, root_desc, dests, 0, implied=implied))

    async def _apply_platforms(
        self, job: CopyJob, result: JobResult, root: Manifest
    ) -> Manifest | None:
        """Apply ``--platform`` to a root index (see the module doc)."""
        flt = self._ctx.options.filter
        if not flt.platforms:
            return root
        if not root.is_index:
            self._ctx.warn(f"{job.display} is not an index: the platform filter does not apply")
            return root
        children = root.children()
        kept = flt.select_platforms(children)
        platforms = ", ".join(str(p) for p in flt.platforms)
        if not kept:
            result.status = "failed"
            available = ", ".join(
                sorted({str(c.platform) for c in children if c.platform is not None})
            )
            result.error = (
                f"{job.display}: no manifest for platform {platforms} "
                f"(the index has: {available or 'no platform entries'})"
            )
            self._ctx.fail(result.error, UsageError(result.error))
            return None
        if len(kept) == len(children):
            return root
        if flt.referrers:
            self._ctx.warn(
                f"referrers of index {root.digest[:19]} are not copied: "
                "the platform filter copies a different root"
            )
        images = [c for c in kept if not is_docker_attestation(c)]
        if len(images) == 1:
            return await self._single_platform(job, result, root, images[0], platforms)
        raw = build_index(
            kept,
            annotations=dict(root.annotations) or None,
            artifact_type=root.artifact_type if root.media_type == mt.OCI_INDEX else None,
        )
        new = parse_manifest(raw, mt.OCI_INDEX)
        key = source_node(job.source, new.digest)
        self._sources.seed(key, new)
        self._ctx.state.synthetic.add(key)
        result.note = (
            f"platform {platforms}: wrote new index {new.digest} listing {len(kept)} of "
            f"{len(children)} manifests of {root.digest}"
        )
        self._ctx.warn(result.note)
        return new

    async def _single_platform(
        self, job: CopyJob, result: JobResult, root: Manifest, child: Descriptor, platforms: str
    ) -> Manifest | None:
        """The one selected platform's manifest becomes the root (its digest kept)."""
        try:
            m = await self._sources.manifest(job.source, child)
        except ReplicatorError as exc:
            mark_side(exc, "source")
            result.status = "failed"
            result.error = str(exc)
            self._ctx.fail(f"{job.display}: {exc}", exc)
            return None
        result.note = f"platform {platforms}: copied manifest {child.digest} of index {root.digest}"
        return m
