"""Manifest commits: a manifest is pushed only once everything it names is there.

:meth:`ManifestCommitter.commit` waits for the manifest's blobs and index
children (and, for a referrer, its subject) to be confirmed at the destination,
then pushes the manifest's exact bytes and records the confirmation.  A
referrer's entry in its subject's client-kept referrers index (a registry's
fallback tag) is deferred: the referrer walk writes one update per subject once
all its referrers are there (:mod:`replicator.engine.referrers`).

A job's root whose whole graph below is already confirmed at the destination
is pushed directly under the job's first tag (one request instead of a push by
digest plus a tag); the tag still only ever names a complete graph.

Repair: a durable ledger can remember blobs the destination has since lost
(garbage collection, a wiped registry).  When a push fails with
``MANIFEST_BLOB_UNKNOWN``, each blob of the manifest is checked, the missing
ones are forgotten by the ledger and sent again, and the push is retried once.
"""

from __future__ import annotations

from functools import partial

from replicator.engine.blobs import BlobMover
from replicator.engine.context import RunContext, mark_side
from replicator.engine.jobs import DependencyFailed, Endpoint
from replicator.engine.ledger import Confirmation
from replicator.engine.once import Once
from replicator.engine.state import DestNode, DestRepo, DestTag, SourceNode, Visit, cell, settle
from replicator.errors import RegistryError, ReplicatorError
from replicator.graph.filters import GraphFilter
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import Manifest
from replicator.targets.base import PushResult


class ManifestCommitter:
    """Pushes manifests children-first, referrers after their subject (see the module doc)."""

    def __init__(self, ctx: RunContext, blobs: BlobMover) -> None:
        self._ctx = ctx
        self._state = ctx.state
        self._blobs = blobs

    def cell(self, d: Endpoint, digest: str) -> Once:
        """The outcome cell of manifest ``digest`` at ``d`` ("exists" or "pushed")."""
        return cell(self._state.committed, DestNode(d.location, d.repository, digest))

    async def commit(
        self,
        src: Endpoint,
        desc: Descriptor,
        manifest: Manifest,
        d: Endpoint,
        subject: Descriptor | None,
        root: bool = False,
        flt: GraphFilter | None = None,
        child: bool = False,
    ) -> None:
        """Push ``manifest`` to ``d`` once its blobs, children (and subject) are there.

        ``root``: the node may carry a job's tag in its push (a job root is also
        reached as an index child when another job copies its index); ``child``:
        it was reached as an index child, which names it in plans and reports.
        """
        once = self.cell(d, desc.digest)
        try:
            await self._wait_dependencies(manifest, d, subject, desc)
            selection = flt or self._ctx.options.filter
            tags = await self._direct_tags(src, desc, manifest, d, selection) if root else ()
            # Stores with a client-kept referrers index get it written once per
            # subject by the referrer walk; others ignore the request.
            defer = (
                subject is not None and self._ctx.abilities(d.target).referrers_index is not None
            )
            place = "referrer" if subject is not None else "child" if child or not root else "root"
            result = await self._push(src, desc, manifest, d, tags, defer, place)
            await self._record_push(desc, manifest, d, tags, defer, result)
            settle(
                self._state.committed,
                DestNode(d.location, d.repository, desc.digest),
                once,
                "pushed",
            )
        except ReplicatorError as exc:
            mark_side(exc, "destination")
            once.set(error=exc)
            self._ctx.fail(f"manifest {desc.digest} to {d}: {exc}", exc)
        except BaseException as exc:
            once.set(error=exc)
            raise

    async def _wait_dependencies(
        self, manifest: Manifest, d: Endpoint, subject: Descriptor | None, desc: Descriptor
    ) -> None:
        waits = [self._blobs.cell(d, b.digest) for b in manifest.blobs()]
        waits += [self.cell(d, c.digest) for c in manifest.children()]
        if subject is not None:
            waits.append(self.cell(d, subject.digest))
        for w in waits:
            if await w.wait() is not None:
                raise DependencyFailed(f"{desc.digest}: a dependency failed at {d}")

    async def _direct_tags(
        self, src: Endpoint, desc: Descriptor, manifest: Manifest, d: Endpoint, flt: GraphFilter
    ) -> tuple[str, ...]:
        """The job tag a root may be pushed under right away, if its graph below is complete.

        Asked once per root and destination (its push is claimed once), so the
        entry is taken out of the table: a run does not keep one per job.
        """
        key = SourceNode(src.location, src.repository, desc.digest)
        job_tags = self._state.root_tags.pop(DestNode(d.location, d.repository, desc.digest), ())
        if not job_tags:
            return ()
        if not flt.follows_referrers_at(0):
            # No referrer is walked in this run: a child's walk covers only
            # its own subtree (a DAG below the root), so waiting for it
            # cannot deadlock; it ends right after its confirmed push.
            for c in manifest.children():
                child = SourceNode(src.location, src.repository, c.digest)
                walk = self._state.walks.get(Visit(child, d.key))
                if walk is not None:
                    await walk.wait()
        if self.complete_below(key, manifest, d.key, flt):
            return job_tags[:1]
        return ()

    async def _push(
        self,
        src: Endpoint,
        desc: Descriptor,
        manifest: Manifest,
        d: Endpoint,
        tags: tuple[str, ...],
        defer: bool,
        place: str,
    ) -> PushResult:
        push_desc = Descriptor(manifest.media_type, desc.digest, len(manifest.raw))
        if self._ctx.options.plan:
            self._ctx.planned("push", str(d), desc.digest, len(manifest.raw), detail=place)
            for tag in tags:
                previous = self._state.previous_tags.get(DestTag(d.location, d.repository, tag))
                self._ctx.planned("tag", str(d), desc.digest, tag=tag, detail=previous)
            return PushResult(push_desc, referrers_updated=False)

        async def push() -> PushResult:
            return await self._ctx.limited(
                "meta",
                d.location,
                lambda: d.target.push_manifest(
                    d.repository, push_desc, manifest.raw, tags, defer_referrers=defer
                ),
            )

        try:
            return await push()
        except RegistryError as exc:
            if exc.code != "MANIFEST_BLOB_UNKNOWN" or not await self.repair(src, manifest, d):
                raise
            return await push()

    async def _record_push(
        self,
        desc: Descriptor,
        manifest: Manifest,
        d: Endpoint,
        tags: tuple[str, ...],
        defer: bool,
        result: PushResult,
    ) -> None:
        ledger = self._ctx.ledger
        report = self._ctx.report
        await ledger.record(
            Confirmation(
                "manifest",
                "pushed",
                d.location,
                d.repository,
                desc.digest,
                len(manifest.raw),
                media_type=manifest.media_type,
            )
        )
        for tag in tags:
            await ledger.record(
                Confirmation("tag", "tagged", d.location, d.repository, desc.digest, tag=tag)
            )
            where = DestTag(d.location, d.repository, tag)
            self._state.current_tags[where] = desc.digest
            self._state.pushed_tags.add(where)
            report.tags_set += 1
        if defer and not result.referrers_updated:
            self._state.unindexed.add(DestNode(d.location, d.repository, desc.digest))
        elif result.referrers_updated and manifest.subject is not None:
            report.referrer_indexes_updated += 1
            await record_indexed(self._ctx, d, desc.digest, manifest.subject.digest)
        report.manifests_pushed += 1
        self._ctx.observer.manifest_finished(desc, "pushed", str(d))

    def complete_below(
        self, root: SourceNode, manifest: Manifest, dest: DestRepo, flt: GraphFilter
    ) -> bool:
        """True when everything under ``root`` (not itself) is confirmed at ``dest`` now.

        Never waits: a root's push must not depend on its descendants' referrer
        walks (a referrer may contain the root).  Its own referrers must have
        been walked completely (when they are followed); any referrer found is
        then an edge of the root, checked like the children.
        """
        state = self._state
        if root in state.referrer_errors:
            return False
        follows = flt.follows_referrers_at(0) and root not in state.synthetic
        if follows and Visit(root, dest) not in state.referrers_walked:
            return False
        children = {
            SourceNode(root.location, root.repository, c.digest) for c in manifest.children()
        }
        seen = {root}
        stack: list[SourceNode] = []
        for nxt in children | state.edges.get(root, set()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
        while stack:
            key = stack.pop()
            if key in state.referrer_errors:
                return False
            walk = state.walks.get(Visit(key, dest))
            if walk is None:
                if key in children:
                    return False  # not visited yet for this destination
                continue  # under a node present there (as in the tagging closure)
            commit = state.committed.get(DestNode(dest.location, dest.repository, key.digest))
            for once in (commit, walk):
                if once is None or not once.ok:
                    return False
            for nxt in state.edges.get(key, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return True

    async def repair(self, src: Endpoint, manifest: Manifest, d: Endpoint) -> bool:
        """After MANIFEST_BLOB_UNKNOWN: re-send blobs a stale ledger claimed were there.

        Returns True when something was repaired (the push is worth retrying).
        """
        repaired = False
        ledger = self._ctx.ledger
        for blob in manifest.blobs():
            exists = await self._ctx.limited(
                "meta", d.location, partial(d.target.blob_exists, d.repository, blob)
            )
            if exists:
                continue
            self._ctx.warn(f"{d} lost blob {blob.digest}; sending it again")
            await ledger.forget(d.location, d.repository, blob.digest)
            if await self._blobs.resend(src, blob, d):
                repaired = True
        return repaired


async def record_indexed(ctx: RunContext, d: Endpoint, referrer: str, subject: str) -> None:
    """Confirm that ``d``'s referrers index of ``subject`` lists ``referrer``."""
    await ctx.ledger.record(
        Confirmation("referrers", "updated", d.location, d.repository, referrer, subject=subject)
    )
