"""The graph copy engine: discovery, planning, transfer and commit, pipelined.

One :class:`CopyEngine` run copies any number of :class:`CopyJob` (a source root
and its destinations) with shared limits, a shared ledger and shared
deduplication.  For every manifest node the engine

1. decides per destination whether it is already there (ledger, implied by a
   present parent, a tag already pointing at it, absent from a repository the
   registry does not know yet, else ``manifest_exists``);
2. reads the source manifest only when some destination lacks it (or when its
   children must be visited to find their referrers);
3. starts the blobs and children right away (discovery never waits for
   transfers), each blob once per destination however many manifests name it:
   ledger → mount (from a repository of the same location known to hold it, or
   from the source repository on the same registry) → ``blob_exists`` probe (only
   for large blobs or local stores) → streamed upload, one source read teed to
   every destination that needs it.  Per registry one repository leads a blob;
   the other repositories there wait for it and mount, so no registry receives
   the same bytes twice in a run;
4. pushes the manifest once its blobs and children are confirmed at that
   destination, and a referrer only after its subject;
5. lists referrers (API or fallback tag, through the Target) and walks them the
   same way, filtered by artifact type and depth.

Tags are written last: a job tags a destination only when every node selected
under its root (children, blobs, referrers, recursively) is confirmed there.  A
failure therefore never leaves a destination tag pointing at an incomplete graph.
A root that is absent and whose graph below is already all confirmed when it is
pushed (no referrers selected, or its referrer walk finished with none left to
copy) is pushed directly under its first tag, in one request; the other tags follow.

Deadlock freedom: a node only ever waits for nodes whose digest its own bytes
contain (children, blobs, its ``subject``), which is a DAG by construction of
content addressing; a blob follower waits for its lead, and a lead never waits
for anything but its own transfer.  A referrer listed under a subject its
manifest does not name (a hostile or stale fallback index, a self-reference) is
skipped with a warning — checked before the node is claimed, and skipped when
the source serves the referrers API — so referrer cycles terminate and a bogus
listing never hides a genuine one.  The check reads the referrer's manifest, so
it is made only when the referrer will be copied: one that every destination
already holds is walked unread (a re-run reads no referrer manifest), and a
second listing of it under another subject is checked.

A node's referrers are listed at the source while the destinations are asked
whether they hold the node (the two are independent), so referrer work starts
as early as possible and overlaps the uploads of the node's own blobs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import anyio
import structlog

from replicator.engine.events import CopyObserver, NullObserver
from replicator.engine.ledger import Confirmation, Ledger, MemoryLedger
from replicator.engine.limits import Kind, Limits, Signal
from replicator.engine.once import Once
from replicator.engine.report import CopyReport, JobResult
from replicator.engine.transfer import BlobTee, reading_opener
from replicator.errors import (
    IncompleteCopyError,
    InputError,
    NotFoundError,
    ProtocolError,
    RegistryError,
    ReplicatorError,
)
from replicator.graph.filters import GraphFilter, is_docker_attestation
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import Manifest, build_index, parse_manifest
from replicator.targets.base import BlobOpener, PushResult, Target, UploadProgress

_log = structlog.get_logger("replicator.engine")
_Call = Callable[[], Coroutine[Any, Any, Any]]
T = TypeVar("T")

#: Blobs up to this size may go in one request (the registry target's monolithic
#: limit); a larger one is always uploaded in chunks.
_UNCHUNKED_MAX = 32 * 1024 * 1024

NodeKey = tuple[str, str, str]  # (location, repository, digest) at the source
DestKey = tuple[str, str]  # (location, repository) of a destination


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A repository inside a target: where content is read from or written to."""

    target: Target
    location: str
    repository: str

    @property
    def key(self) -> DestKey:
        """``(location, repository)``."""
        return (self.location, self.repository)

    def __str__(self) -> str:
        if self.location.startswith("ocidir://"):
            return f"{self.location}{':' + self.repository if self.repository else ''}"
        return f"{self.location}/{self.repository}"


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a job writes: an endpoint and the tags to set there once complete.

    ``digest`` is set when the user named the destination by digest: the copy
    then fails unless the root copied has that digest.
    """

    endpoint: Endpoint
    tags: tuple[str, ...] = ()
    digest: str | None = None
    display: str = ""


@dataclass(frozen=True, slots=True)
class CopyJob:
    """Copy the graph of ``reference`` (tag or digest) in ``source`` to every destination."""

    source: Endpoint
    reference: str
    destinations: tuple[Destination, ...]
    display: str = ""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How a run copies.

    ``probe_threshold``: blobs at least this large get a ``blob_exists`` probe at
    a registry destination before being uploaded (one request to possibly save
    many bytes); smaller ones are uploaded straight away when their manifest is
    absent there — a POST+PUT costs one request less than HEAD+POST+PUT.  Local
    stores (OCI layouts) are always probed: it costs no request.

    ``deep_check``: ask each destination about every manifest of the graph.
    By default presence is inferred where the destination already vouches for
    it: a present index for its children, a subject's referrers listing for
    the referrers it names (the registry stored that index only with all of
    them present).  A manifest deleted out of band from under such an index
    is then not noticed; a deep check finds and copies it again, at one
    request per manifest.
    """

    filter: GraphFilter = field(default_factory=GraphFilter)
    keep_going: bool = False
    chunk_size: int | None = None
    probe_threshold: int = 1024 * 1024
    fanout_buffer: int = 4
    deep_check: bool = False


class DependencyFailed(ReplicatorError):
    """A node was not committed because something it depends on failed."""

    exit_code = IncompleteCopyError.exit_code


async def _all(calls: Sequence[_Call]) -> None:
    """Run ``calls`` concurrently and wait for them all.

    A single call is simply awaited: a task group costs a cancel scope, and
    each task spawned in it another scope and an event — on a re-run, where
    most nodes have one thing to do, that was a tenth of the client's CPU.
    """
    if len(calls) == 1:
        await calls[0]()
    elif calls:
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(call)


def _is_local(location: str) -> bool:
    return location.startswith("ocidir://")


class CopyEngine:
    """Runs copy jobs with shared limits, ledger and deduplication (see module doc)."""

    def __init__(
        self,
        options: CopyOptions | None = None,
        *,
        ledger: Ledger | None = None,
        limits: Limits | None = None,
        observer: CopyObserver | None = None,
    ) -> None:
        self.options = options or CopyOptions()
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.limits = limits or Limits()
        self.observer: CopyObserver = observer or NullObserver()
        self.report = CopyReport()
        self._manifests: dict[NodeKey, Once] = {}
        self._referrer_lists: dict[NodeKey, Once] = {}
        self._committed: dict[tuple[str, str, str], Once] = {}
        self._blobs: dict[tuple[str, str, str], Once] = {}
        self._walks: dict[tuple[NodeKey, DestKey], Once] = {}
        # Per destination repository: did the registry say it does not exist yet?
        self._new_repos: dict[DestKey, Once] = {}
        self._edges: dict[NodeKey, set[NodeKey]] = {}
        self._referrer_errors: dict[NodeKey, ReplicatorError] = {}
        self._admitted_unread: dict[NodeKey, str] = {}
        self._synthetic: set[NodeKey] = set()
        self._location_leads: dict[tuple[str, str], Once] = {}
        self._targets: dict[int, Target] = {}
        self._signals: dict[str, Signal] = {}
        self._stats_before: dict[int, dict[str, int]] = {}
        self._cancel: anyio.CancelScope | None = None
        self._current_tags: dict[tuple[str, str, str], str] = {}
        # Tags a root may be pushed under directly, per (location, repository, digest),
        # and the tags so written (then skipped by :meth:`_set_tags`).
        self._root_tags: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self._pushed_tags: set[tuple[str, str, str]] = set()
        # (node, destination) whose referrer walk finished without error.
        self._referrers_walked: set[tuple[NodeKey, DestKey]] = set()
        # Referrers pushed with their index update deferred to _relist.
        self._unindexed: set[tuple[str, str, str]] = set()
        self._first_root_error: ReplicatorError | None = None
        self._stopping = False
        self._active_pushes = 0
        self._quiet: anyio.Event | None = None

    # ------------------------------------------------------------------ stopping

    @property
    def stopping(self) -> bool:
        """True once :meth:`request_stop` was called."""
        return self._stopping

    def request_stop(self) -> None:
        """Stop taking new work (SIGTERM/SIGINT): a graceful stop, step one.

        No new blob upload starts, and every chunked upload in flight pauses at
        its next acknowledged chunk (its progress already recorded in the
        ledger), so a rerun resumes it without sending any byte twice.  Wait
        for :meth:`wait_quiet`, then cancel the run (:meth:`cancel`).
        """
        self._stopping = True
        if self._quiet is None:
            self._quiet = anyio.Event()
        if self._active_pushes == 0:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        """Return once no upload is between two acknowledged chunks (after :meth:`request_stop`)."""
        if self._quiet is None:
            self._quiet = anyio.Event()
        await self._quiet.wait()

    def cancel(self) -> None:
        """Cancel the running :meth:`run` (it returns its partial report)."""
        if self._cancel is not None:
            self._cancel.cancel()

    def _leave_push(self) -> None:
        self._active_pushes -= 1
        if self._stopping and self._active_pushes == 0 and self._quiet is not None:
            self._quiet.set()

    @property
    def root_error(self) -> ReplicatorError | None:
        """The first error met reading a job's root, if any."""
        return self._first_root_error

    # ------------------------------------------------------------------ run

    async def run(self, jobs: Sequence[CopyJob]) -> CopyReport:
        """Copy every job; return the report (never raises for copy failures).

        An engine runs once: its deduplication tables and report belong to that run.

        Without ``keep_going`` the first failure stops the run; either way the
        report says which jobs completed.  Use :func:`raise_for_report` to turn an
        incomplete run into the documented error.
        """
        started = time.monotonic()
        results = [
            JobResult(source=j.display, destinations=[d.display for d in j.destinations])
            for j in jobs
        ]
        self.report.jobs = results
        for j in jobs:
            for e in (j.source, *(d.endpoint for d in j.destinations)):
                self._targets[id(e.target)] = e.target
                signal = _retry_signal(e.target)
                if signal is not None:
                    self._signals[e.location] = signal
        self._stats_before = {
            key: _stats_dict(getattr(t, "stats", None)) for key, t in self._targets.items()
        }
        deferred: list[tuple[CopyJob, JobResult, Manifest]] = []
        async with anyio.create_task_group() as tg:
            self._cancel = tg.cancel_scope
            for job, result in zip(jobs, results, strict=True):
                tg.start_soon(self._run_job, job, result, deferred)
        for job, result, root in deferred:
            await self._finish_job(job, result, root, final=True)
        flush = getattr(self.ledger, "flush", None)
        if flush is not None:
            # The run's confirmations are committed before it returns: whoever
            # reads the journal next (leftover upload sessions) sees them all.
            with contextlib.suppress(ReplicatorError):
                await flush()
        for result in results:
            if result.status == "pending":
                result.status = "failed"
                result.error = result.error or "stopped before completion"
        self.report.wall_time = round(time.monotonic() - started, 3)
        self.report.limits = self.limits.snapshot()
        self._collect_stats()
        return self.report

    def _collect_stats(self) -> None:
        """Requests each target made during this run (its counters' increase)."""
        retries = 0
        for key, target in self._targets.items():
            before = self._stats_before.get(key, {})
            counts = {
                k: v - before.get(k, 0)
                for k, v in _stats_dict(getattr(target, "stats", None)).items()
            }
            if counts:
                self.report.requests[target.display] = counts
                retries += counts.get("retries", 0)
        self.report.retries = retries

    def _fail(self, message: str, error: BaseException | None = None) -> None:
        if isinstance(error, DependencyFailed):
            return
        self.report.failures.append(message)
        _log.error("copy_failed", reason=message)
        if not self.options.keep_going and self._cancel is not None:
            self._cancel.cancel()

    def _warn(self, message: str) -> None:
        if message not in self.report.warnings:
            self.report.warnings.append(message)
            self.observer.warning(message)

    async def _limited(self, kind: Kind, location: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await self.limits.call(kind, location, fn, self._signals.get(location))

    # ------------------------------------------------------------------ jobs

    async def _run_job(
        self,
        job: CopyJob,
        result: JobResult,
        deferred: list[tuple[CopyJob, JobResult, Manifest]],
    ) -> None:
        src = job.source
        async with anyio.create_task_group() as tg:
            # Whether each destination repository is new is asked while the
            # source root is read: the tag checks below need the answer.
            for d in job.destinations:
                if d.endpoint.key not in self._new_repos:
                    tg.start_soon(self._repository_new, d.endpoint)
            try:
                desc, raw = await self._limited(
                    "meta",
                    src.location,
                    lambda: src.target.fetch_manifest(src.repository, job.reference),
                )
                root = _parse(raw, desc.media_type, src)
            except ReplicatorError as exc:
                exc.side = exc.side or "source"
                result.status = "failed"
                result.error = str(exc)
                if self._first_root_error is None:
                    self._first_root_error = exc
                self._fail(f"{job.display}: {exc}", exc)
                return
        result.source_digest = root.digest
        root_key: NodeKey = (src.location, src.repository, root.digest)
        self._seed_manifest(root_key, root)
        selected = await self._apply_platforms(job, result, root)
        if selected is None:
            return
        root = selected
        result.digest = root.digest
        result.media_type = root.media_type
        root_desc = _descriptor_of(root)
        for d in job.destinations:
            if d.digest is not None and d.digest != root.digest:
                result.status = "failed"
                result.error = f"{d.display}: names {d.digest} but the source is {root.digest}"
                self._fail(result.error)
                return
        dests = [d.endpoint for d in job.destinations]
        node_key: NodeKey = (src.location, src.repository, root.digest)
        for d in job.destinations:
            if d.tags:
                ep = d.endpoint
                self._root_tags.setdefault((ep.location, ep.repository, root.digest), d.tags)
        async with anyio.create_task_group() as tg:
            # The root's referrers are listed at the source while the destinations
            # are asked where their tags point and whether they hold the root.
            if self._follows(node_key, 0):
                tg.start_soon(self._prefetch_referrers, src, root_desc, node_key)
            implied = await self._check_tags(job, root_desc)
            await self._node(src, root_desc, dests, 0, None, None, implied, frozenset())
        if not await self._finish_job(job, result, root, final=False):
            deferred.append((job, result, root))

    async def _apply_platforms(
        self, job: CopyJob, result: JobResult, root: Manifest
    ) -> Manifest | None:
        """Apply ``--platform`` to a root index (see README: platform subsets)."""
        flt = self.options.filter
        if not flt.platforms:
            return root
        if not root.is_index:
            self._warn(f"{job.display} is not an index: the platform filter does not apply")
            return root
        src = job.source
        children = root.children()
        kept = flt.select_platforms(children)
        platforms = ", ".join(str(p) for p in flt.platforms)
        if not kept:
            result.status = "failed"
            result.error = f"{job.display}: no manifest for platform {platforms}"
            self._fail(result.error, NotFoundError(result.error))
            return None
        if len(kept) == len(children):
            return root
        if flt.referrers:
            self._warn(
                f"referrers of index {root.digest[:19]} are not copied: "
                "the platform filter copies a different root"
            )
        images = [c for c in kept if not is_docker_attestation(c)]
        if len(images) == 1:
            child = images[0]
            try:
                m = await self._manifest(src, child)
            except ReplicatorError as exc:
                exc.side = exc.side or "source"
                result.status = "failed"
                result.error = str(exc)
                self._fail(f"{job.display}: {exc}", exc)
                return None
            result.note = (
                f"platform {platforms}: copied manifest {child.digest} of index {root.digest}"
            )
            return m
        raw = build_index(
            kept,
            annotations=dict(root.annotations) or None,
            artifact_type=root.artifact_type if root.media_type == mt.OCI_INDEX else None,
        )
        new = parse_manifest(raw, mt.OCI_INDEX)
        key: NodeKey = (src.location, src.repository, new.digest)
        self._seed_manifest(key, new)
        self._synthetic.add(key)
        result.note = (
            f"platform {platforms}: wrote new index {new.digest} listing {len(kept)} of "
            f"{len(children)} manifests of {root.digest}"
        )
        self._warn(result.note)
        return new

    async def _check_tags(self, job: CopyJob, root: Descriptor) -> frozenset[DestKey]:
        """Ask each destination where its tags point; a tag on the root proves it present."""
        implied: set[DestKey] = set()

        async def check(d: Destination) -> None:
            ep = d.endpoint
            for tag in d.tags:
                known = await self.ledger.tagged(ep.location, ep.repository, tag)
                if known is None and await self._repository_new(ep):
                    continue  # a repository that does not exist has no tag
                if known is None:
                    try:
                        cur = await self._limited(
                            "meta", ep.location, partial(ep.target.resolve, ep.repository, tag)
                        )
                        known = cur.digest
                    except NotFoundError:
                        continue
                    except ReplicatorError as exc:
                        _log.debug("tag_check_failed", destination=str(ep), error=str(exc))
                        continue
                if known == root.digest:
                    implied.add(ep.key)
                    self._current_tags[(ep.location, ep.repository, tag)] = known

        await _all([partial(check, d) for d in job.destinations])
        return frozenset(implied)

    async def _finish_job(
        self, job: CopyJob, result: JobResult, root: Manifest, *, final: bool
    ) -> bool:
        """Tag every destination whose graph is complete; False when still pending."""
        key: NodeKey = (job.source.location, job.source.repository, root.digest)
        states = {
            d.endpoint.key: self._closure_state(key, d.endpoint.key) for d in job.destinations
        }
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
                exc.side = exc.side or "destination"
                missing += 1
                self._fail(f"tag {d.display}: {exc}", exc)
        result.missing = missing
        if missing:
            result.status = "failed"
            result.error = result.error or f"{missing} selected node(s) missing at a destination"
        else:
            result.status = "copied"
        return True

    def _closure_state(self, root: NodeKey, dest: DestKey) -> int | None:
        """Nodes under ``root`` not confirmed at ``dest`` (None while some are pending)."""
        seen = {root}
        stack = [root]
        bad = 0
        pending = False
        while stack:
            key = stack.pop()
            commit = self._committed.get((dest[0], dest[1], key[2]))
            walk = self._walks.get((key, dest))
            if key in self._referrer_errors:
                bad += 1
            if walk is None and key != root:
                # A node is claimed in the same step its edge is added, so no walk
                # means it was never visited for this destination: a child of a node
                # already present there (implied present, referrers not followed).
                continue
            for cell in (commit, walk):
                if cell is None or not cell.done:
                    pending = True
                elif cell.error is not None:
                    bad += 1
            for nxt in self._edges.get(key, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        if pending and not bad:
            return None
        return bad + (1 if pending else 0)

    async def _set_tags(self, d: Destination, root: Manifest) -> None:
        ep = d.endpoint
        desc = _descriptor_of(root)
        for tag in d.tags:
            if (ep.location, ep.repository, tag) in self._pushed_tags and self._current_tags.get(
                (ep.location, ep.repository, tag)
            ) == root.digest:
                continue  # written with the root's own push
            if self._current_tags.get((ep.location, ep.repository, tag)) == root.digest:
                self.report.tags_unchanged += 1
                continue
            await self._limited(
                "meta", ep.location, partial(ep.target.tag, ep.repository, desc, root.raw, tag)
            )
            await self.ledger.record(
                Confirmation("tag", "tagged", ep.location, ep.repository, root.digest, tag=tag)
            )
            self.report.tags_set += 1

    # ------------------------------------------------------------------ manifests

    def _seed_manifest(self, key: NodeKey, m: Manifest) -> None:
        cell = self._manifests.get(key)
        if cell is None:
            cell = self._manifests[key] = Once()
        cell.set(m)

    async def _manifest(self, src: Endpoint, desc: Descriptor) -> Manifest:
        """The source manifest, fetched at most once per run."""
        key: NodeKey = (src.location, src.repository, desc.digest)
        cell = self._manifests.get(key)
        if cell is None:
            cell = self._manifests[key] = Once()
            try:
                got, raw = await self._limited(
                    "meta", src.location, lambda: src.target.fetch_manifest(src.repository, desc)
                )
                cell.set(_parse(raw, got.media_type or desc.media_type, src))
            except BaseException as exc:
                cell.set(error=exc)
                raise
        error = await cell.wait()
        if error is not None:
            raise error
        value: Manifest = cell.value
        return value

    def _commit_cell(self, dest: Endpoint, digest: str) -> Once:
        key = (dest.location, dest.repository, digest)
        cell = self._committed.get(key)
        if cell is None:
            cell = self._committed[key] = Once()
        return cell

    async def _node(
        self,
        src: Endpoint,
        desc: Descriptor,
        dests: Sequence[Endpoint],
        depth: int,
        subject: Descriptor | None,
        parent: NodeKey | None,
        implied: frozenset[DestKey],
        fresh: frozenset[DestKey],
    ) -> None:
        """Make ``desc`` and everything selected under it present at ``dests``.

        ``implied``: destinations where a parent is present (so this node is),
        or, for a referrer, whose listing of its subject's referrers names it;
        ``fresh``: destinations where this referrer's subject was just pushed by
        this run (so the referrer cannot be there yet: no existence probe).
        """
        key: NodeKey = (src.location, src.repository, desc.digest)

        async def visit() -> None:
            known: dict[DestKey, bool] = {}
            if subject is not None:
                admitted = await self._admit_referrer(
                    src, desc, key, subject, parent, dests, implied, fresh
                )
                if admitted is None:
                    return
                known = admitted
            await self._node_visit(
                src, desc, key, dests, depth, subject, parent, implied, fresh, known
            )

        # Its referrers are listed at the source while the destinations are asked
        # about the node itself: the two do not depend on each other.  Not worth a
        # task where no destination is asked (the node is implied present at each)
        # nor for a root (its job started that listing already).
        overlap = (
            (subject is not None or parent is not None)
            and key not in self._referrer_lists
            and self._follows(key, depth)
            and any(d.key not in implied and (key, d.key) not in self._walks for d in dests)
        )
        if overlap:
            await _all([partial(self._prefetch_referrers, src, desc, key), visit])
        else:
            await visit()

    async def _node_visit(
        self,
        src: Endpoint,
        desc: Descriptor,
        key: NodeKey,
        dests: Sequence[Endpoint],
        depth: int,
        subject: Descriptor | None,
        parent: NodeKey | None,
        implied: frozenset[DestKey],
        fresh: frozenset[DestKey],
        known: dict[DestKey, bool],
    ) -> None:
        # The edge first: whatever happens below, the closure check of every
        # root above sees this node (and its failure, if it fails).
        if parent is not None:
            self._edges.setdefault(parent, set()).add(key)
        self._edges.setdefault(key, set())
        claimed = list({d.key: d for d in dests if (key, d.key) not in self._walks}.values())
        if not claimed:
            return
        walks = {d.key: self._walks.setdefault((key, d.key), Once()) for d in claimed}
        try:
            await self._node_claimed(
                src, desc, key, claimed, depth, subject, parent, implied, fresh, known
            )
        except BaseException as exc:
            for cell in walks.values():
                cell.set(error=exc)
            if not isinstance(exc, ReplicatorError):
                raise
            self._fail(f"{desc.digest}: {exc}", exc)
        finally:
            for cell in walks.values():
                cell.set()

    async def _node_claimed(
        self,
        src: Endpoint,
        desc: Descriptor,
        key: NodeKey,
        claimed: list[Endpoint],
        depth: int,
        subject: Descriptor | None,
        parent: NodeKey | None,
        implied: frozenset[DestKey],
        fresh: frozenset[DestKey],
        known: dict[DestKey, bool],
    ) -> None:
        """Visit a claimed node; ``known``: presence already learned (by the referrer check)."""
        responsible: list[Endpoint] = []
        mine: list[tuple[Endpoint, Once]] = []
        for d in claimed:
            cell = self._commit_cell(d, desc.digest)
            if not cell.claimed:
                cell.claimed = True
                mine.append((d, cell))
        found: dict[DestKey, bool | ReplicatorError] = {}

        async def check(d: Endpoint) -> None:
            if d.key in known:
                found[d.key] = known[d.key]
                return
            try:
                found[d.key] = await self._present(d, desc, implied, fresh)
            except ReplicatorError as exc:
                exc.side = exc.side or "destination"
                found[d.key] = exc

        follow = self._follows(key, depth)
        # An index's children are visited even where it is present when they may
        # have referrers of their own, or when the deep check asks about each.
        visit_children = mt.is_index(desc.media_type) and (follow or self.options.deep_check)

        async def prefetch() -> None:
            # An index whose children are visited is read whatever the destinations
            # say: read it while they are asked (an error is kept for the real read).
            with contextlib.suppress(ReplicatorError):
                await self._manifest(src, desc)

        calls: list[_Call] = [partial(check, d) for d, _ in mine]
        if visit_children and key not in self._manifests:
            calls.append(prefetch)
        try:
            await _all(calls)
        except BaseException as exc:
            for _, cell in mine:
                cell.set(error=exc)
            raise
        failed = {k: e for k, e in found.items() if isinstance(e, ReplicatorError)}
        if failed:
            # A destination that cannot be asked fails alone; the others go on.
            for d, cell in mine:
                error = failed.get(d.key)
                if error is not None:
                    cell.set(error=error)
                    self._walks[(key, d.key)].set(error=error)
                    self._fail(f"{desc.digest} at {d}: {error}", error)
            mine = [(d, cell) for d, cell in mine if d.key not in failed]
            claimed = [d for d in claimed if d.key not in failed]
        for d, cell in mine:
            if found[d.key] is True:
                cell.set("exists")
                self.report.manifests_skipped += 1
                self.observer.manifest_finished(desc, "exists", str(d))
            else:
                responsible.append(d)
        need = bool(responsible) or visit_children
        manifest: Manifest | None = None
        if need:
            try:
                manifest = await self._manifest(src, desc)
            except BaseException as exc:
                for d in responsible:
                    self._commit_cell(d, desc.digest).set(error=exc)
                raise
        present_here = frozenset(
            d.key for d, cell in mine if cell.value == "exists" and not self.options.deep_check
        )
        work: list[_Call] = []
        if follow:
            pushed = frozenset(d.key for d in responsible)
            work.append(partial(self._walk_referrers, src, desc, key, claimed, depth, pushed))
        if manifest is not None:
            for child in manifest.children():
                work.append(
                    partial(
                        self._node, src, child, claimed, depth, None, key, present_here, frozenset()
                    )
                )
            if responsible:
                for blob in manifest.blobs():
                    work.append(partial(self._blob, src, blob, responsible))
                root = depth == 0 and subject is None
                for d in responsible:
                    work.append(partial(self._commit, src, desc, manifest, d, subject, root))
        await _all(work)

    def _follows(self, key: NodeKey, depth: int) -> bool:
        """Whether the referrers of the node ``key`` at ``depth`` are walked."""
        return self.options.filter.follows_referrers_at(depth) and key not in self._synthetic

    async def _prefetch_referrers(self, src: Endpoint, desc: Descriptor, key: NodeKey) -> None:
        """List the referrers early (cached); an error is kept for the walk to report."""
        with contextlib.suppress(ReplicatorError):
            await self._referrers(src, desc, key)

    async def _admit_referrer(
        self,
        src: Endpoint,
        desc: Descriptor,
        key: NodeKey,
        subject: Descriptor,
        parent: NodeKey | None,
        dests: Sequence[Endpoint],
        implied: frozenset[DestKey],
        fresh: frozenset[DestKey],
    ) -> dict[DestKey, bool] | None:
        """Whether a listed referrer is walked: None to skip it, else presence learned.

        Its manifest is read to check its ``subject`` (:meth:`_genuine_referrer`)
        only when it will be copied: a referrer every destination of this visit
        already holds is walked without reading it (a re-run reads no referrer
        manifest).  Such an unread admission is remembered with its subject; a
        listing of the same digest under another subject is then checked.
        """
        if await self._source_has_referrers_api(src):
            return {}
        cell = self._manifests.get(key)
        if cell is not None and cell.done and cell.error is None:
            # Already read (type filter, another visit): the check costs nothing.
            return {} if await self._genuine_referrer(src, desc, subject, parent) else None
        pending = list({d.key: d for d in dests if (key, d.key) not in self._walks}.values())
        accepted = self._admitted_unread.get(key)
        known: dict[DestKey, bool] = {}
        if pending and accepted in (None, subject.digest):
            known = await self._presence(desc, pending, implied, fresh)
            if len(known) == len(pending) and all(known.values()):
                self._admitted_unread[key] = subject.digest
                return known
        elif not pending and accepted == subject.digest:
            return known
        return known if await self._genuine_referrer(src, desc, subject, parent) else None

    async def _presence(
        self,
        desc: Descriptor,
        dests: list[Endpoint],
        implied: frozenset[DestKey],
        fresh: frozenset[DestKey],
    ) -> dict[DestKey, bool]:
        """Presence of ``desc`` at each destination that could be asked (errors: left out)."""
        known: dict[DestKey, bool] = {}

        async def ask(d: Endpoint) -> None:
            cell = self._committed.get((d.location, d.repository, desc.digest))
            if cell is not None and cell.claimed:
                if cell.done and cell.error is None:
                    known[d.key] = True
                return  # being decided by another visit: unknown here
            try:
                known[d.key] = await self._present(d, desc, implied, fresh)
            except ReplicatorError as exc:
                _log.debug("presence_check_failed", destination=str(d), error=str(exc))

        await _all([partial(ask, d) for d in dests])
        return known

    async def _source_has_referrers_api(self, src: Endpoint) -> bool:
        probe = getattr(src.target, "referrers_api_supported", None)
        if probe is None:
            return False
        try:
            return bool(await probe(src.repository))
        except ReplicatorError:
            return False

    async def _genuine_referrer(
        self, src: Endpoint, desc: Descriptor, subject: Descriptor, parent: NodeKey | None
    ) -> bool:
        """True when the listed referrer's manifest names ``subject`` as its subject.

        A fallback tag can list anything (stale, hostile, a cycle); the manifest's
        own ``subject`` field is the truth.  Checked before the node is claimed, so
        a bogus listing never blocks the genuine one.  A referrer that cannot be
        read is a failure recorded against its subject's graph.  Skipped (no
        request) when the source serves the referrers API: the registry then
        derives the listing from the manifests' own ``subject`` fields.
        """
        if await self._source_has_referrers_api(src):
            return True
        try:
            manifest = await self._manifest(src, desc)
        except ReplicatorError as exc:
            exc.side = exc.side or "source"
            if parent is not None:
                self._referrer_errors.setdefault(parent, exc)
            self._fail(f"referrer {desc.digest} of {subject.digest}: {exc}", exc)
            return False
        if manifest.subject is None or manifest.subject.digest != subject.digest:
            self._warn(
                f"{desc.digest} is listed as a referrer of {subject.digest} but does not "
                "name it as its subject: skipped"
            )
            return False
        return True

    async def _present(
        self,
        d: Endpoint,
        desc: Descriptor,
        implied: frozenset[DestKey],
        fresh: frozenset[DestKey],
    ) -> bool:
        if d.key in implied:
            return True
        if await self.ledger.lookup(d.location, d.repository, desc.digest) is not None:
            return True
        if d.key in fresh:
            return False
        if await self._repository_new(d):
            return False
        exists = await self._limited(
            "meta", d.location, lambda: d.target.manifest_exists(d.repository, desc)
        )
        if exists:
            await self.ledger.record(
                Confirmation(
                    "manifest",
                    "exists",
                    d.location,
                    d.repository,
                    desc.digest,
                    desc.size,
                    media_type=desc.media_type,
                )
            )
        return exists

    async def _repository_new(self, d: Endpoint) -> bool:
        """Whether the registry said ``d``'s repository did not exist (asked once per run).

        In a repository the registry does not know (no tag listed: ``404
        NAME_UNKNOWN``), no manifest is asked about before it is pushed: that
        saves a ``HEAD`` per manifest and per tag in a cold copy.  The answer is
        taken when the run first needs it; what this run pushes there since is
        in the ledger, which is asked first.  Only untagged manifests an earlier
        run left there without recording them (a ``--no-journal`` run that
        failed before its tags) are pushed again — the same bytes, so the
        result is the same.  Targets without the question (OCI layouts, where a
        lookup costs no request) and any failure to answer mean "not new".
        """
        probe = getattr(d.target, "repository_is_new", None)
        if probe is None:
            return False
        cell = self._new_repos.get(d.key)
        if cell is not None:
            await cell.wait()
            return bool(cell.value)
        cell = self._new_repos[d.key] = Once()
        new = False
        try:
            new = bool(await self._limited("meta", d.location, partial(probe, d.repository)))
        except ReplicatorError as exc:
            _log.debug("repository_probe_failed", destination=str(d), error=str(exc))
        finally:
            cell.set(new)
        return new

    async def _commit(
        self,
        src: Endpoint,
        desc: Descriptor,
        manifest: Manifest,
        d: Endpoint,
        subject: Descriptor | None,
        root: bool = False,
    ) -> None:
        """Push ``manifest`` to ``d`` once its blobs, children (and subject) are there.

        A job's ``root`` whose whole graph below is already confirmed at ``d``
        (children, blobs, and referrers: none selected, or the walk of its own
        referrers finished having copied none that waits for it) is pushed
        directly under its job's first tag: one request instead of a push by
        digest and a tag, and the tag still only ever names a complete graph.
        Otherwise it is pushed by digest and the job tags it last.
        """
        cell = self._commit_cell(d, desc.digest)
        try:
            waits = [self._blob_cell(d, b.digest) for b in manifest.blobs()]
            waits += [self._commit_cell(d, c.digest) for c in manifest.children()]
            if subject is not None:
                waits.append(self._commit_cell(d, subject.digest))
            for w in waits:
                if await w.wait() is not None:
                    raise DependencyFailed(f"{desc.digest}: a dependency failed at {d}")
            push_desc = Descriptor(manifest.media_type, desc.digest, len(manifest.raw))
            key: NodeKey = (src.location, src.repository, desc.digest)
            tags: tuple[str, ...] = ()
            if root:
                job_tags = self._root_tags.get((d.location, d.repository, desc.digest), ())
                if job_tags and not self.options.filter.follows_referrers_at(0):
                    # No referrer is walked in this run: a child's walk covers only
                    # its own subtree (a DAG below the root), so waiting for it
                    # cannot deadlock; it ends right after its confirmed push.
                    for c in manifest.children():
                        walk = self._walks.get(((src.location, src.repository, c.digest), d.key))
                        if walk is not None:
                            await walk.wait()
                if job_tags and self._complete_below(key, manifest, d.key):
                    tags = job_tags[:1]

            # A referrer's entry in its subject's referrers index is written by
            # _relist, once for all the subject's referrers (stores without such
            # an index ignore the request).
            defer = subject is not None and hasattr(d.target, "ensure_referrers_listed")

            async def push() -> PushResult:
                return await self._limited(
                    "meta",
                    d.location,
                    lambda: d.target.push_manifest(
                        d.repository, push_desc, manifest.raw, tags, defer_referrers=defer
                    ),
                )

            try:
                result = await push()
            except RegistryError as exc:
                if exc.code != "MANIFEST_BLOB_UNKNOWN" or not await self._repair(src, manifest, d):
                    raise
                result = await push()
            await self.ledger.record(
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
                await self.ledger.record(
                    Confirmation("tag", "tagged", d.location, d.repository, desc.digest, tag=tag)
                )
                self._current_tags[(d.location, d.repository, tag)] = desc.digest
                self._pushed_tags.add((d.location, d.repository, tag))
                self.report.tags_set += 1
            if defer and not result.referrers_updated:
                self._unindexed.add((d.location, d.repository, desc.digest))
            elif result.referrers_updated and manifest.subject is not None:
                self.report.referrer_indexes_updated += 1
                await self._record_indexed(d, desc.digest, manifest.subject.digest)
            self.report.manifests_pushed += 1
            self.observer.manifest_finished(desc, "pushed", str(d))
            cell.set("pushed")
        except ReplicatorError as exc:
            exc.side = exc.side or "destination"
            cell.set(error=exc)
            self._fail(f"manifest {desc.digest} to {d}: {exc}", exc)
        except BaseException as exc:
            cell.set(error=exc)
            raise

    def _complete_below(self, root: NodeKey, manifest: Manifest, dest: DestKey) -> bool:
        """True when everything under ``root`` (not itself) is confirmed at ``dest`` now.

        Never waits: a root's push must not depend on its descendants' referrer
        walks (a referrer may contain the root).  Its own referrers must have
        been walked completely (when they are followed); any referrer found is
        then an edge of the root, checked like the children.
        """
        if root in self._referrer_errors:
            return False
        if self._follows(root, 0) and (root, dest) not in self._referrers_walked:
            return False
        children = {(root[0], root[1], c.digest) for c in manifest.children()}
        seen = {root}
        stack: list[NodeKey] = []
        for nxt in children | self._edges.get(root, set()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
        while stack:
            key = stack.pop()
            if key in self._referrer_errors:
                return False
            walk = self._walks.get((key, dest))
            if walk is None:
                if key in children:
                    return False  # not visited yet for this destination
                continue  # under a node present there (as in _closure_state)
            commit = self._committed.get((dest[0], dest[1], key[2]))
            for cell in (commit, walk):
                if cell is None or not cell.done or cell.error is not None:
                    return False
            for nxt in self._edges.get(key, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return True

    async def _repair(self, src: Endpoint, manifest: Manifest, d: Endpoint) -> bool:
        """After MANIFEST_BLOB_UNKNOWN: re-send blobs a stale ledger claimed were there.

        A durable ledger can remember blobs the destination has since lost
        (garbage collection, a wiped registry).  Each blob of the manifest is
        checked; missing ones are forgotten by the ledger and uploaded again.
        Returns True when something was repaired (the push is worth retrying).
        """
        repaired = False
        forget = getattr(self.ledger, "forget", None)
        for blob in manifest.blobs():
            exists = await self._limited(
                "meta", d.location, partial(d.target.blob_exists, d.repository, blob)
            )
            if exists:
                continue
            self._warn(f"{d} lost blob {blob.digest}; sending it again")
            if forget is not None:
                await forget(d.location, d.repository, blob.digest)
            async with self.limits.slot("blob", src.location, d.location):
                if await self._push_one(d, blob, self._counting_opener(src, blob)):
                    repaired = True
        return repaired

    # ------------------------------------------------------------------ referrers

    async def _referrers(self, src: Endpoint, desc: Descriptor, key: NodeKey) -> list[Descriptor]:
        cell = self._referrer_lists.get(key)
        if cell is None:
            cell = self._referrer_lists[key] = Once()
            try:
                found = await self._limited(
                    "meta",
                    src.location,
                    # No artifactType hint: a store filtering for us would drop the
                    # fallback entries that lack artifactType; we filter ourselves.
                    lambda: src.target.referrers(src.repository, desc),
                )
                cell.set(found)
            except BaseException as exc:
                cell.set(error=exc)
                raise
        error = await cell.wait()
        if error is not None:
            raise error
        value: list[Descriptor] = cell.value
        return value

    async def _walk_referrers(
        self,
        src: Endpoint,
        desc: Descriptor,
        key: NodeKey,
        dests: list[Endpoint],
        depth: int,
        fresh: frozenset[DestKey],
    ) -> None:
        try:
            found = await self._referrers(src, desc, key)
        except ReplicatorError as exc:
            exc.side = exc.side or "source"
            for d in dests:
                self._walks[(key, d.key)].set(error=exc)
            self._fail(f"referrers of {desc.digest}: {exc}", exc)
            return
        seen: set[str] = set()
        walked: list[Descriptor] = []
        for r in found:
            if r.digest == desc.digest:
                self._warn(f"{desc.digest} lists itself as its own referrer: skipped")
                continue
            if r.digest in seen or not mt.is_manifest(r.media_type):
                continue
            seen.add(r.digest)
            self.report.referrers_found += 1
            walked.append(r)
        listed: dict[DestKey, frozenset[str]] = {}
        if walked and not self.options.deep_check:
            listed = await self._listed_at(dests, desc, fresh)
        selected: list[Descriptor] = []
        await _all(
            [
                partial(
                    self._maybe_referrer,
                    src,
                    r,
                    dests,
                    depth,
                    desc,
                    key,
                    frozenset(k for k, digests in listed.items() if r.digest in digests),
                    fresh,
                    selected,
                )
                for r in walked
            ]
        )
        if selected:
            await _all(
                [partial(self._relist, d, desc, key, selected, listed.get(d.key)) for d in dests]
            )
        self._referrers_walked.update((key, d.key) for d in dests)

    async def _listed_at(
        self, dests: list[Endpoint], subject: Descriptor, fresh: frozenset[DestKey]
    ) -> dict[DestKey, frozenset[str]]:
        """The referrers each destination already lists for ``subject`` (where it can tell).

        A referrer listed there is taken as present, as an index's children
        are once the index is: the registry stored that index (or answered
        the referrers API) only with every manifest it names present.  One
        read per subject replaces one presence request per referrer — on a
        re-run, nearly half of a ``-r`` run's destination requests.  Not asked
        where ``subject`` was just pushed (nothing can be listed yet), nor of
        targets without the question (OCI layouts: their lookups cost no
        request); a failed read only means asking referrer by referrer.
        """
        out: dict[DestKey, frozenset[str]] = {}

        async def read(d: Endpoint) -> None:
            lister = getattr(d.target, "listed_referrers", None)
            if lister is None or d.key in fresh:
                return
            try:
                out[d.key] = await self._limited(
                    "meta", d.location, partial(lister, d.repository, subject)
                )
            except ReplicatorError as exc:
                _log.debug("referrers_listing_failed", destination=str(d), error=str(exc))

        await _all([partial(read, d) for d in dests])
        return out

    async def _record_indexed(self, d: Endpoint, referrer: str, subject: str) -> None:
        """Confirm that ``d``'s referrers index of ``subject`` lists ``referrer``."""
        await self.ledger.record(
            Confirmation(
                "referrers", "updated", d.location, d.repository, referrer, subject=subject
            )
        )

    async def _relist(
        self,
        d: Endpoint,
        subject: Descriptor,
        key: NodeKey,
        selected: list[Descriptor],
        listed: frozenset[str] | None,
    ) -> None:
        """List the referrers of ``subject`` at ``d`` once they are all there: one write.

        Runs when the walk of ``subject``'s referrers is over at ``d``.  The
        referrers this run pushed there with their index update deferred
        (:meth:`_commit`) are added to the subject's referrers index in one
        update — one fallback-index write per subject instead of one per
        referrer, and no superseded index to delete.  A referrer found already
        present (asked, or from the journal) is checked too: an earlier run can
        have stored it and then failed to update the index, and another tool can
        have rewritten the index.  Nothing happens on a registry with the
        referrers API (it lists by ``subject`` itself).  A failure keeps the tags
        above this subject unset, like any failed node; a rerun finds the
        referrers present and lists them then.  When this run pushed none and
        the index read before the walk (``listed``) names every referrer found,
        there is nothing to add and nothing is asked.
        """
        ensure = getattr(d.target, "ensure_referrers_listed", None)
        if ensure is None:
            return
        found: list[Descriptor] = []
        pushed: list[Descriptor] = []
        for r in selected:
            node = (d.location, d.repository, r.digest)
            cell = self._committed.get(node)
            if cell is None or not cell.ok:
                continue
            if cell.value == "exists":
                found.append(r)
            elif node in self._unindexed:
                pushed.append(r)
        if not found and not pushed:
            return
        if not pushed and listed is not None and all(r.digest in listed for r in found):
            return
        try:
            added = await self._limited(
                "meta", d.location, partial(ensure, d.repository, subject, [*pushed, *found])
            )
        except ReplicatorError as exc:
            exc.side = exc.side or "destination"
            self._referrer_errors.setdefault(key, exc)
            self._fail(f"referrers index of {subject.digest} at {d}: {exc}", exc)
            return
        if added:
            self.report.referrer_indexes_updated += 1
        for r in pushed:
            self._unindexed.discard((d.location, d.repository, r.digest))
            await self._record_indexed(d, r.digest, subject.digest)
        stray = [r.digest for r in found if r.digest in added]
        if stray:
            self._warn(
                f"{d}: {len(stray)} referrer(s) of {subject.digest[:19]} were there but not "
                "listed in its referrers index; added"
            )

    async def _maybe_referrer(
        self,
        src: Endpoint,
        r: Descriptor,
        dests: list[Endpoint],
        depth: int,
        subject: Descriptor,
        subject_key: NodeKey,
        listed_at: frozenset[DestKey],
        fresh: frozenset[DestKey],
        selected: list[Descriptor],
    ) -> None:
        """Apply the artifact-type filter, then walk the referrer (noted in ``selected``).

        A listing entry without ``artifactType`` (written by a tool that left it
        out) is judged by the manifest's own artifact type, read for that.
        """
        flt = self.options.filter
        if r.artifact_type is None and flt.filters_types:
            try:
                kind = (await self._manifest(src, r)).artifact_type
            except ReplicatorError:
                kind = None  # _node reports the read failure if the entry is selected
            r = replace(r, artifact_type=kind)
        if not flt.accepts_referrer(r):
            self.report.referrers_filtered += 1
            return
        selected.append(r)
        await self._node(src, r, dests, depth + 1, subject, subject_key, listed_at, fresh)

    # ------------------------------------------------------------------ blobs

    def _blob_cell(self, d: Endpoint, digest: str) -> Once:
        key = (d.location, d.repository, digest)
        cell = self._blobs.get(key)
        if cell is None:
            cell = self._blobs[key] = Once()
        return cell

    async def _blob(self, src: Endpoint, blob: Descriptor, dests: list[Endpoint]) -> None:
        """Make ``blob`` present at each destination, once per run, by the cheapest way.

        Per destination location, the first claimant of ``(location, digest)``
        leads: it makes the blob present in its repository (known, mounted from
        the source repository on the same registry, found by a probe, or
        uploaded — one source read for all the leaders of this call).  Every
        other repository of that location follows: it waits for the lead, then
        mounts from it, and uploads itself only if that fails.  Leads are taken
        before the first await, so two tasks never upload the same bytes to one
        registry.
        """
        mine: list[Endpoint] = []
        for d in dests:
            cell = self._blob_cell(d, blob.digest)
            if not cell.claimed:
                cell.claimed = True
                mine.append(d)
        if not mine:
            return
        leaders: list[Endpoint] = []
        leads: list[Once] = []
        followers: list[tuple[Endpoint, Once]] = []
        for d in mine:
            lead = self._location_leads.get((d.location, blob.digest))
            if lead is None:
                lead = self._location_leads[(d.location, blob.digest)] = Once()
                leads.append(lead)
                leaders.append(d)
            else:
                followers.append((d, lead))
        try:
            uploads: list[Endpoint] = []
            for d in leaders:
                if not await self._known_or_cheap(src, blob, d):
                    uploads.append(d)
            if uploads:
                await self._upload(src, blob, uploads)
            for lead in leads:
                lead.set()
            if followers:
                async with anyio.create_task_group() as tg:
                    for d, lead in followers:
                        tg.start_soon(self._follow, src, blob, d, lead)
        except ReplicatorError as exc:
            for d in mine:
                self._blob_cell(d, blob.digest).set(error=exc)
            self._fail(f"blob {blob.digest}: {exc}", exc)
        except BaseException as exc:
            for d in mine:
                self._blob_cell(d, blob.digest).set(error=exc)
            raise
        finally:
            for lead in leads:
                lead.set()
            for d in mine:
                cell = self._blob_cell(d, blob.digest)
                if not cell.done:
                    cell.set(error=DependencyFailed(f"blob {blob.digest} did not reach {d}"))

    async def _known_or_cheap(self, src: Endpoint, blob: Descriptor, d: Endpoint) -> bool:
        """True when the blob is now at ``d`` without sending it: ledger, mount or probe."""
        if await self.ledger.lookup(d.location, d.repository, blob.digest) is not None:
            self._blob_done(d, blob, "exists")
            return True
        if await self._try_mount(src, blob, d):
            return True
        return await self._probe(blob, d)

    async def _follow(self, src: Endpoint, blob: Descriptor, d: Endpoint, lead: Once) -> None:
        """Another repository of ``d``'s location leads this blob: wait, then mount from it."""
        try:
            if await self.ledger.lookup(d.location, d.repository, blob.digest) is not None:
                self._blob_done(d, blob, "exists")
                return
            await lead.wait()
            if not await self._known_or_cheap(src, blob, d):
                await self._upload(src, blob, [d])
        except ReplicatorError as exc:
            self._blob_done(d, blob, "", error=exc)
            self._fail(f"blob {blob.digest} to {d}: {exc}", exc)

    def _blob_done(
        self, d: Endpoint, blob: Descriptor, how: str, error: BaseException | None = None
    ) -> None:
        cell = self._blob_cell(d, blob.digest)
        if error is not None:
            cell.set(error=error)
            return
        cell.set(how)
        if how == "exists":
            self.report.blobs_skipped += 1
        elif how == "mounted":
            self.report.blobs_mounted += 1
        else:
            self.report.blobs_uploaded += 1
        self.observer.blob_finished(blob, how, str(d))

    async def _confirm_blob(self, d: Endpoint, blob: Descriptor, how: str) -> None:
        await self.ledger.record(
            Confirmation("blob", how, d.location, d.repository, blob.digest, blob.size)  # type: ignore[arg-type]
        )
        self._blob_done(d, blob, how)

    async def _try_mount(self, src: Endpoint, blob: Descriptor, d: Endpoint) -> bool:
        """Mount from a repository of the same location that holds the blob."""
        candidates = [
            r for r in await self.ledger.locate(d.location, blob.digest) if r != d.repository
        ]
        if src.location == d.location and src.repository != d.repository:
            candidates.append(src.repository)
        for repo in dict.fromkeys(candidates):
            try:
                mounted = await self._limited(
                    "meta", d.location, partial(d.target.mount_blob, d.repository, blob, repo)
                )
            except ReplicatorError as exc:
                _log.debug("mount_failed", destination=str(d), source=repo, error=str(exc))
                continue
            if mounted:
                await self._confirm_blob(d, blob, "mounted")
                return True
        return False

    async def _probe(self, blob: Descriptor, d: Endpoint) -> bool:
        """HEAD the blob when it is cheap (local) or worth it (large)."""
        if not (_is_local(d.location) or blob.size >= self.options.probe_threshold):
            return False
        exists = await self._limited(
            "meta", d.location, lambda: d.target.blob_exists(d.repository, blob)
        )
        if exists:
            await self._confirm_blob(d, blob, "exists")
        return exists

    async def _upload(self, src: Endpoint, blob: Descriptor, dests: list[Endpoint]) -> None:
        """Stream the blob from the source to every destination, reading it once."""
        self.observer.blob_started(blob, len(dests))
        locations = [src.location, *(d.location for d in dests)]
        signals = {loc: self._signals[loc] for loc in locations if loc in self._signals}
        async with self.limits.slot("blob", *locations, signals=signals):
            if len(dests) == 1:
                await self._push_one(dests[0], blob, self._counting_opener(src, blob))
            else:
                await self._fan_out(src, blob, dests)

    def _counting_opener(self, src: Endpoint, blob: Descriptor) -> BlobOpener:
        return reading_opener(src.target, src.repository, blob, self._bytes_reader(blob))

    def _bytes_reader(self, blob: Descriptor) -> Callable[[int], None]:
        def on_bytes(n: int) -> None:
            self.report.bytes_read += n
            self.observer.blob_advanced(blob, n)

        return on_bytes

    async def _push_one(self, d: Endpoint, blob: Descriptor, opener: BlobOpener) -> bool:
        if self._stopping:
            await anyio.sleep_forever()  # no new uploads once a stop was requested
        resume = await self.ledger.upload_progress(d.location, d.repository, blob.digest)
        chunk = self.options.chunk_size
        parked = False

        chunked = bool(chunk and blob.size > chunk) or blob.size > _UNCHUNKED_MAX
        flush = getattr(self.ledger, "flush", None)

        async def progress(p: UploadProgress) -> None:
            nonlocal parked
            # A blob sent in one request has nothing to resume: its session is
            # recorded (so a rerun can cancel one a kill left open) without
            # holding up the upload for a commit.
            await self.ledger.record_progress(d.location, p, durable=chunked)
            if p.offset == 0 and chunked and flush is not None:
                # A session that will carry many bytes is made durable before the
                # first one is sent: a killed run knows it (to resume or cancel it).
                await flush()
            if self._stopping and p.offset > 0 and not parked:
                # A chunk was just acknowledged and recorded: pause here for the stop.
                parked = True
                self._leave_push()
                await anyio.sleep_forever()

        self._active_pushes += 1
        try:
            res = await d.target.push_blob(
                d.repository,
                blob,
                opener,
                resume=resume,
                on_progress=progress,
                chunk_size=chunk if chunk and blob.size > chunk else None,
                # The opener streams a fetch_blob read (itself or teed), which
                # verifies the digest before its last chunk: no second hashing.
                verify=False,
            )
        except ReplicatorError as exc:
            if exc.side is None:
                exc.side = "destination"
            self._blob_done(d, blob, "", error=exc)
            self._fail(f"blob {blob.digest} to {d}: {exc}", exc)
            return False
        finally:
            if not parked:
                self._leave_push()
        self.report.bytes_sent += res.bytes_sent
        how = res.how if res.how in ("exists", "mounted", "uploaded") else "uploaded"
        await self._confirm_blob(d, blob, how)
        return True

    async def _fan_out(self, src: Endpoint, blob: Descriptor, dests: list[Endpoint]) -> None:
        tee = BlobTee(
            src.target,
            src.repository,
            blob,
            len(dests),
            buffer=self.options.fanout_buffer,
            on_bytes=self._bytes_reader(blob),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(tee.pump)
            for i, d in enumerate(dests):
                tg.start_soon(self._push_teed, tee, i, d, blob)

    async def _push_teed(self, tee: BlobTee, i: int, d: Endpoint, blob: Descriptor) -> None:
        try:
            await self._push_one(d, blob, tee.opener(i))
        finally:
            tee.detach(i)


# ---------------------------------------------------------------------- helpers


def _parse(raw: bytes, media_type: str | None, src: Endpoint) -> Manifest:
    try:
        return parse_manifest(raw, media_type)
    except InputError as exc:
        raise ProtocolError(f"{src}: {exc}", side="source") from exc


def _descriptor_of(m: Manifest) -> Descriptor:
    return descriptor_for(m.raw, m.media_type)


def _retry_signal(target: Target) -> Signal | None:
    """A counter of the target's retried requests (429/503/5xx/network), if it keeps one."""
    stats = getattr(target, "stats", None)
    if stats is None or not isinstance(getattr(stats, "retries", None), int):
        return None

    def signal() -> int:
        value: int = stats.retries
        return value

    return signal


def _stats_dict(stats: Any) -> dict[str, int]:
    if stats is None:
        return {}
    if hasattr(stats, "as_dict"):
        raw = stats.as_dict()
    elif hasattr(stats, "__dataclass_fields__"):
        raw = {k: getattr(stats, k) for k in stats.__dataclass_fields__}
    elif isinstance(stats, dict):
        raw = stats
    else:
        raw = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    out: dict[str, int] = {}
    for k, v in dict(raw).items():
        if isinstance(v, int) and not isinstance(v, bool):
            out[str(k)] = v
        elif isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, int):
                    out[f"{k}.{k2}"] = v2
    return out


def raise_for_report(report: CopyReport, root_error: ReplicatorError | None = None) -> None:
    """Raise the documented error unless every job completed.

    A run whose only failures are roots that could not be read re-raises that
    error (exit 3 for an unknown source, 4 for auth...); anything else is an
    :class:`IncompleteCopyError` (exit 9) naming the first failure.
    """
    if report.ok:
        return
    failed = [j for j in report.jobs if j.status != "copied"]
    if root_error is not None and all(j.source_digest is None for j in failed):
        raise root_error
    first = report.failures[0] if report.failures else (failed[0].error if failed else "unknown")
    raise IncompleteCopyError(
        f"copy incomplete: {len(failed)} of {len(report.jobs)} job(s) did not complete; "
        f"first failure: {first}"
    )


def first_root_error(engine: CopyEngine) -> ReplicatorError | None:
    """The first error met reading a job's root (for :func:`raise_for_report`)."""
    return engine.root_error
