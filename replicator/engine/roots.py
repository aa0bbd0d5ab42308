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

from collections.abc import Sequence
from fnmatch import fnmatchcase

import anyio

from replicator.engine.context import NodeVisit, RunContext, mark_side
from replicator.engine.jobs import CopyJob, Endpoint
from replicator.engine.nodes import GraphVisitor
from replicator.engine.presence import Presence
from replicator.engine.report import JobResult
from replicator.engine.sources import SourceReader, descriptor_of, parse_source, source_node
from replicator.engine.state import DestNode, DestTag, SourceNode
from replicator.engine.tagging import Tagger
from replicator.errors import ReplicatorError, UsageError
from replicator.graph import rules
from replicator.graph.filters import GraphFilter, is_docker_attestation
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
        result.name = job.name
        root = await self._read_root(job, result)
        if root is None:
            return
        result.source_digest = root.digest
        key = source_node(job.source, root.digest)
        self._sources.seed(key, root)
        if job.require and not await self._gate(job, result, root):
            return
        selected = await self._apply_platforms(job, result, root)
        if selected is None:
            return
        root = selected
        result.digest = root.digest
        result.media_type = root.media_type
        if not self._digest_matches(job, result, root):
            return
        if key.digest != root.digest:  # a platform filter chose another root
            key = source_node(job.source, root.digest)
        await self._visit_root(job, result, root, key)
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

    async def _visit_root(
        self, job: CopyJob, result: JobResult, root: Manifest, key: SourceNode
    ) -> None:
        """Visit the root's graph; ``key`` is the root's node (one key shared by every table)."""
        src = job.source
        root_desc = descriptor_of(root)
        async with anyio.create_task_group() as tg:
            # The root's referrers are listed at the source while the destinations
            # are asked where their tags point and whether they hold the root.
            if self._visitor.referrers.follows(key, 0, self._filter(job)):
                tg.start_soon(self._sources.prefetch_referrers, src, root_desc, key)
            checked = await self._tagger.check_tags(job, result, root_desc)
            if checked.skipped:
                self._ctx.state.skipped_dests[key] = checked.skipped
            self._note_direct_tags(job, root)
            dests = [d.endpoint for d in job.destinations if d.endpoint.key not in checked.skipped]
            if dests:
                visit = NodeVisit(
                    src,
                    root_desc,
                    dests,
                    0,
                    implied=checked.implied,
                    flt=self._filter(job),
                    node=key,
                )
                await self._visitor.visit(visit)

    def _note_direct_tags(self, job: CopyJob, root: Manifest) -> None:
        """The tags a complete root may be pushed under directly (one request, not two).

        Not under ``overwrite: always`` (the tag is written on its own), not a
        kept tag, and not where a tag that points elsewhere must be backed up
        first.
        """
        state = self._ctx.state
        for d in job.destinations:
            ep = d.endpoint
            if not d.tags or d.overwrite == "always":
                continue
            wheres = [DestTag(ep.location, ep.repository, t) for t in d.tags]
            if d.backup and any(w in state.previous_tags for w in wheres):
                continue
            tags = tuple(w.tag for w in wheres if w not in state.kept_tags)
            if tags:
                state.root_tags.setdefault(DestNode(ep.location, ep.repository, root.digest), tags)

    def _filter(self, job: CopyJob) -> GraphFilter:
        """The job's selection: its own, else the run's."""
        return job.filter or self._ctx.options.filter

    async def _gate(self, job: CopyJob, result: JobResult, root: Manifest) -> bool:
        """The promotion gate: the root must have a genuine referrer of each required type.

        Checked on the source root (an index's signature is attached to the
        index, also when a platform filter copies less of it), before anything
        is written for the job.  A refused job is reported with the missing
        types; the other jobs of the run go on.
        """
        src = job.source
        root_desc = descriptor_of(root)
        try:
            listing = await self._sources.referrers(src, root_desc)
        except ReplicatorError as exc:
            mark_side(exc, "source")
            result.status = "failed"
            result.error = str(exc)
            self._ctx.fail(f"{job.display}: referrers for the promotion gate: {exc}", exc)
            return False
        found = await self._admitted_types(src, root, listing, job.require)
        missing = [p for p in job.require if not any(fnmatchcase(t, p) for t in found)]
        if not missing:
            return True
        result.status = "refused"
        result.refused = missing
        result.error = (
            f"{job.display}: refused by the promotion gate: no referrer of type "
            + ", ".join(missing)
        )
        self._ctx.refuse(result.error)
        return False

    async def _admitted_types(
        self, src: Endpoint, root: Manifest, listing: Sequence[Descriptor], wanted: tuple[str, ...]
    ) -> set[str]:
        """Artifact types of the root's genuine referrers that a required pattern may match.

        A listing entry counts only when the referrer's own manifest names the
        root as its subject — whether the listing came from a fallback index
        (anyone who can push a tag can forge one) or from the referrers API (a
        lying or broken API must not open the gate either).  One read per
        matching entry, shared with the walk that copies the referrers; an
        entry of a type already found is not read.
        """
        types: set[str] = set()
        for r in rules.referrer_candidates(root.digest, listing).kept:
            kind = r.artifact_type
            if kind is not None and (
                kind in types or not any(fnmatchcase(kind, p) for p in wanted)
            ):
                continue
            try:
                manifest = await self._sources.manifest(src, r)
            except ReplicatorError:
                continue  # an unreadable referrer does not count; the walk reports it
            if rules.names_subject(manifest, root.digest) and manifest.artifact_type:
                types.add(manifest.artifact_type)
        return types

    async def _apply_platforms(
        self, job: CopyJob, result: JobResult, root: Manifest
    ) -> Manifest | None:
        """Apply ``--platform`` to a root index (see the module doc)."""
        flt = self._filter(job)
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
