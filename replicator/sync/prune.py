"""Deletion propagation ("pruning") of sync jobs: what left the source leaves the destination.

A job with ``prune: {enabled: true, max: N}`` runs, after its copy in the same
sync, in three steps:

1. **Survey** (reads only): every destination repository of every source
   repository the job listed is listed too, and :func:`~.prune_rules.choose`
   picks the destination tags to prune — tags inside the job's selection whose
   source tag is gone (:mod:`replicator.sync.prune_rules` has the rules and
   what is kept and why).  A source repository whose copy failed in this run
   (a renamed tag might not be at the destination yet), or that was not
   listed (``include`` alone), prunes nothing; an interrupted run prunes
   nothing at all.
2. **Refusal**: more tags to prune than ``max`` in the whole job, and the job
   prunes nothing, says so (exit code 10) and lists what it would have pruned.
3. **Plan, then delete**, per destination repository: every tag is resolved
   (``HEAD``); a manifest a pruned tag pointed at is deleted only when no
   remaining tag needs it, directly or as the child of a remaining index (a
   pruned index's children go too, unless something else needs them,
   index before children, so no index ever names a deleted child).  Each
   manifest goes with its referrer graph through the rules ``manifest delete``
   uses (:func:`~replicator.artifacts.delete.plan_delete` /
   :func:`~replicator.artifacts.delete.execute_delete`: referrers admitted by
   ``subject`` only, deepest first, one fallback-index update per subject);
   one whose graph carries a tag this prune does not remove (a tag on one of
   its referrers, say) is kept, with that reason.  A pruned tag whose manifest
   stays is removed alone (:func:`~replicator.artifacts.delete.remove_tag`).
   A dry run stops after planning and reports what would go.

Every figure is in the :class:`JobPrune` of each job: tags pruned, manifests
deleted, what was kept and why, a refusal, skipped repositories, an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from replicator.artifacts.delete import (
    DeleteEvent,
    DeletePlan,
    execute_delete,
    plan_delete,
    remove_tag,
)
from replicator.errors import EXIT_REFUSED, NotFoundError, ReplicatorError
from replicator.observe.logging import get_logger
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import parse_manifest
from replicator.oci.reference import Reference, is_referrers_tag
from replicator.sync.config import SyncConfig, SyncJob
from replicator.sync.expand import Expansion, JobPlan, RepositoryPlan
from replicator.sync.mapping import describe_destination
from replicator.sync.outcome import RunOutcome
from replicator.sync.prune_rules import PruneChoice, choose, writes_to
from replicator.sync.targets import TargetPool
from replicator.targets.base import Target

log = get_logger(__name__)

#: Requests in flight at once while a prune surveys and plans.
PRUNE_CONCURRENCY = 8


@dataclass(slots=True)
class DestinationPrune:
    """What pruning did (or, in a dry run, would do) at one destination repository.

    ``tags``: ``(tag, digest)`` pruned; ``manifests``: digests deleted, in the
    order they went (referrers before their subject, an index before its
    children); ``untagged``: ``(tag, why)`` for pruned tags removed alone,
    their manifest still needed; ``kept``: ``(tag or digest, why)`` for what
    the rules kept; ``notes``: listed manifests left in place (as ``manifest
    delete`` says them).
    """

    destination: str
    source: str
    tags: list[tuple[str, str]] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    untagged: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """This destination's part of the JSON report."""
        return {
            "destination": self.destination,
            "source": self.source,
            "tags": [{"tag": t, "digest": d} for t, d in self.tags],
            "manifests": list(self.manifests),
            "untagged": [{"tag": t, "reason": r} for t, r in self.untagged],
            "kept": [{"what": w, "reason": r} for w, r in self.kept],
            "notes": list(self.notes),
        }


@dataclass(slots=True)
class JobPrune:
    """The pruning of one config job: per destination, or why nothing was pruned.

    ``refused``: the job had more tags to prune than ``max`` and pruned none
    (``destinations`` then lists the tags it would have pruned, unresolved:
    their digests are empty);
    ``skipped``: one line per source repository left alone (its copy failed);
    ``error``: the failure that stopped the job's pruning (what went before it
    is in ``destinations``); ``exit_code``: 10 when refused, the error's code
    when one stopped it, else 0.
    """

    name: str
    max: int
    dry_run: bool
    destinations: list[DestinationPrune] = field(default_factory=list)
    refused: str | None = None
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0

    @property
    def tags_pruned(self) -> int:
        """Tags pruned (or that would be) at every destination."""
        return 0 if self.refused else sum(len(d.tags) for d in self.destinations)

    @property
    def manifests_deleted(self) -> int:
        """Manifests deleted (or that would be), referrers included."""
        return 0 if self.refused else sum(len(d.manifests) for d in self.destinations)

    def to_json(self) -> dict[str, Any]:
        """The job's ``prune`` section of the JSON report."""
        return {
            "max": self.max,
            "dry_run": self.dry_run,
            "tags_pruned": self.tags_pruned,
            "manifests_deleted": self.manifests_deleted,
            "refused": self.refused,
            "skipped": list(self.skipped),
            "error": self.error,
            "destinations": [d.to_json() for d in self.destinations],
        }


@dataclass(slots=True)
class _Scope:
    """One destination repository of one source repository, surveyed."""

    job: SyncJob
    repo: RepositoryPlan
    dest: Reference
    target: Target
    source: Target
    names: list[str]
    choice: PruneChoice
    #: Dry run: tags the copy would set here, with their digest.
    planned: dict[str, str] = field(default_factory=dict)

    def report(self) -> DestinationPrune:
        return DestinationPrune(
            describe_destination(self.dest), str(self.repo.source), kept=list(self.choice.kept)
        )


async def prune_jobs(
    config: SyncConfig,
    expansion: Expansion,
    run: RunOutcome | None,
    targets: TargetPool,
    *,
    dry_run: bool = False,
) -> list[JobPrune]:
    """Prune every expanded job that has ``prune.enabled`` (see the module doc), in config order."""
    out: list[JobPrune] = []
    for plan in expansion.jobs:
        job = config.job(plan.name)
        if not job.prune.enabled or plan.error is not None:
            continue
        result = JobPrune(job.name, job.prune.max, dry_run)
        out.append(result)
        if run is not None and run.status == "interrupted":
            result.skipped.append("the run was interrupted: nothing pruned")
            continue
        await _prune_job(config, job, plan, run, targets, result)
    return out


async def _prune_job(
    config: SyncConfig,
    job: SyncJob,
    plan: JobPlan,
    run: RunOutcome | None,
    targets: TargetPool,
    result: JobPrune,
) -> None:
    try:
        scopes = await _survey(config, job, plan, run, targets, result)
        count = sum(len(s.choice.prune) for s in scopes)
        if count > job.prune.max:
            result.destinations = [_refused_report(s) for s in scopes if s.choice.prune]
            result.refused = (
                f"{count} tags to prune, more than prune.max {job.prune.max}: nothing pruned "
                "(raise prune.max, or check the source)"
            )
            result.exit_code = EXIT_REFUSED
            log.warning("prune.refused", job=job.name, tags=count, max=job.prune.max)
            return
        for scope in scopes:
            if scope.choice.prune or scope.choice.kept:
                report = scope.report()
                result.destinations.append(report)
                if scope.choice.prune:
                    await _Destination(scope, report, result.dry_run).run()
    except ReplicatorError as exc:
        result.error = str(exc)
        result.exit_code = exc.exit_code
        log.warning("prune.failed", job=job.name, error=str(exc))


def _refused_report(scope: _Scope) -> DestinationPrune:
    report = scope.report()
    report.tags = [(t, "") for t in scope.choice.prune]
    return report


async def _survey(
    config: SyncConfig,
    job: SyncJob,
    plan: JobPlan,
    run: RunOutcome | None,
    targets: TargetPool,
    result: JobPrune,
) -> list[_Scope]:
    """List every destination repository of the job and choose what to prune there."""
    states = _copy_states(job.name, run)
    scopes: list[_Scope] = []
    limiter = anyio.CapacityLimiter(PRUNE_CONCURRENCY)
    work: list[tuple[RepositoryPlan, Reference, dict[str, str]]] = []
    for repo in plan.repositories:
        if repo.listed is None:
            continue
        failed = [t for t in repo.selected if states.get(str(repo.source.with_tag(t))) == "failed"]
        if failed:
            result.skipped.append(
                f"{repo.source}: the copy of {', '.join(failed)} failed: nothing pruned there"
            )
            continue
        planned = _planned_tags(job.name, repo, run) if result.dry_run else {}
        work.extend((repo, dest, planned) for dest in repo.destinations)

    async def one(repo: RepositoryPlan, dest: Reference, planned: dict[str, str]) -> None:
        target = targets.open(dest, create=True)
        source = targets.open(repo.source)
        try:
            async with limiter:
                names = await target.tags(dest.repository)
        except NotFoundError:
            names = []
        neighbours = [j for j in config.jobs if j.name != job.name and writes_to(j, dest)]
        choice = choose(job, names, repo.listed or (), neighbours)
        scopes.append(_Scope(job, repo, dest, target, source, names, choice, planned))

    async with anyio.create_task_group() as tg:
        for repo, dest, planned in work:
            tg.start_soon(one, repo, dest, planned)
    order = {(id(r), str(d)): i for i, (r, d, _) in enumerate(work)}
    scopes.sort(key=lambda s: order[(id(s.repo), str(s.dest))])
    return scopes


def _copy_states(name: str, run: RunOutcome | None) -> dict[str, str]:
    """``source reference -> state`` of the run's copies that belong to job ``name``."""
    if run is None:
        return {}
    return {r.source: run.job_state(i) for i, r in enumerate(run.report.jobs) if r.name == name}


def _planned_tags(name: str, repo: RepositoryPlan, run: RunOutcome | None) -> dict[str, str]:
    """In a dry run: the tags the copy would set (``tag -> digest``), at every destination."""
    if run is None:
        return {}
    wanted = {str(repo.source.with_tag(t)): t for t in repo.selected}
    out: dict[str, str] = {}
    for i, r in enumerate(run.report.jobs):
        tag = wanted.get(r.source)
        if r.name != name or tag is None or r.digest is None:
            continue
        if run.job_state(i) in ("copied", "up-to-date"):
            out[tag] = r.digest
    return out


class _Destination:
    """Plan and carry out the pruning of one destination repository (step 3 of the module doc)."""

    def __init__(self, scope: _Scope, report: DestinationPrune, dry_run: bool) -> None:
        self.scope = scope
        self.report = report
        self.dry_run = dry_run
        self.target = scope.target
        self.repo = scope.dest.repository
        self.limiter = anyio.CapacityLimiter(PRUNE_CONCURRENCY)
        #: digest -> descriptor, and digest -> child digests, of every manifest met.
        self.known: dict[str, Descriptor] = {}
        self.children: dict[str, list[str]] = {}

    async def run(self) -> None:
        """Resolve, decide, then delete (or, in a dry run, only report)."""
        resolved = await self._resolve([n for n in self.scope.names if not is_referrers_tag(n)])
        pruned = {t: resolved[t] for t in self.scope.choice.prune if t in resolved}
        self.report.tags = [(t, d.digest) for t, d in sorted(pruned.items())]
        remaining = {t: d for t, d in resolved.items() if t not in pruned}
        for tag, digest in self.scope.planned.items():
            if tag not in remaining or remaining[tag].digest != digest:
                remaining[tag] = await self._at_source(digest)
        needed = await self._closure([(d, f"tag {t}") for t, d in sorted(remaining.items())])
        plans = await self._deletions(pruned, needed, resolved)
        gone = {d.digest for p in plans for d in p.order}
        alone = sorted(t for t, d in pruned.items() if d.digest not in gone)
        for tag in alone:
            why = needed.get(pruned[tag].digest, "another tag or an index")
            self.report.untagged.append((tag, f"its manifest is still needed by {why}"))
        if self.dry_run:
            self.report.manifests = [d.digest for p in plans for d in p.order]
            return
        for tag in alone:
            async with self.limiter:
                await remove_tag(self.target, self.repo, tag)
            log.info("prune.tag_removed", destination=self.report.destination, tag=tag)
        for plan in plans:
            await self._execute(plan)

    async def _resolve(self, names: list[str]) -> dict[str, Descriptor]:
        """``tag -> descriptor`` of each of ``names`` that still resolves (``HEAD`` each)."""
        found: dict[str, Descriptor] = {}

        async def one(name: str) -> None:
            try:
                async with self.limiter:
                    found[name] = await self.target.resolve(self.repo, name)
            except NotFoundError:
                pass

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)
        return found

    async def _at_source(self, digest: str) -> Descriptor:
        """A dry run's manifest the copy would bring: its descriptor, read at the source."""
        async with self.limiter:
            return await self.scope.source.resolve(self.scope.repo.source.repository, digest)

    async def _read_children(self, desc: Descriptor) -> list[Descriptor]:
        """The child manifests of an index (none for anything else)."""
        if not mt.is_index(desc.media_type):
            return []
        try:
            async with self.limiter:
                _, raw = await self.target.fetch_manifest(self.repo, desc)
        except NotFoundError:
            if not self.dry_run:
                raise
            async with self.limiter:
                source = self.scope.repo.source.repository
                _, raw = await self.scope.source.fetch_manifest(source, desc)
        manifest = parse_manifest(raw, desc.media_type)
        return [c for c in manifest.children() if mt.is_manifest(c.media_type)]

    async def _closure(self, roots: list[tuple[Descriptor, str]]) -> dict[str, str]:
        """Every manifest ``roots`` reach through index children: ``digest -> what needs it``.

        ``roots`` are ``(descriptor, why)``; a child inherits its root's why.
        """
        reached: dict[str, str] = {}
        frontier = roots
        while frontier:
            batch = []
            for desc, why in frontier:
                if desc.digest not in reached:
                    reached[desc.digest] = why
                    self.known.setdefault(desc.digest, desc)
                    batch.append(desc)
            await self._read_all_children(batch)
            frontier = [
                (self.known[c], reached[d.digest])
                for d in batch
                for c in self.children.get(d.digest, [])
                if c not in reached
            ]
        return reached

    async def _read_all_children(self, descs: list[Descriptor]) -> None:
        """Learn the children of every one of ``descs`` not read yet (concurrently)."""

        async def one(desc: Descriptor) -> None:
            found = await self._read_children(desc)
            self.children[desc.digest] = [c.digest for c in found]
            for child in found:
                self.known.setdefault(child.digest, child)

        async with anyio.create_task_group() as tg:
            for desc in descs:
                if desc.digest not in self.children:
                    tg.start_soon(one, desc)

    async def _deletions(
        self, pruned: dict[str, Descriptor], needed: dict[str, str], resolved: dict[str, Descriptor]
    ) -> list[DeletePlan]:
        """The delete plans of the manifests left without a tag, parents first.

        A manifest whose graph carries a tag this prune keeps is kept itself
        (and, with it, what it needs): the plans are made again without it.
        """
        digests = {t: d.digest for t, d in resolved.items()}
        plans: dict[str, DeletePlan] = {}
        while True:
            roots = [(d, f"tag {t}") for t, d in sorted(pruned.items()) if d.digest not in needed]
            candidates = [d for d in await self._closure(roots) if d not in needed]

            async def plan_one(digest: str) -> None:
                plans[digest] = await plan_delete(
                    self.target,
                    self.repo,
                    self.known[digest],
                    tag_names=self.scope.names,
                    resolved_tags=digests,
                )

            async with anyio.create_task_group() as tg:
                for digest in candidates:
                    if digest not in plans:
                        tg.start_soon(plan_one, digest)
            blocked = self._blocked(candidates, plans, set(pruned))
            if not blocked:
                return self._ordered(candidates, plans)
            for digest, foreign in blocked.items():
                why = f"tag {', '.join(foreign)} points at it or at one of its referrers"
                self.report.kept.append((digest, why))
            kept = [(self.known[d], f"the kept manifest {d}") for d in blocked]
            needed.update(
                (d, why) for d, why in (await self._closure(kept)).items() if d not in needed
            )

    @staticmethod
    def _blocked(
        candidates: list[str], plans: dict[str, DeletePlan], pruned: set[str]
    ) -> dict[str, list[str]]:
        """Candidates whose graph carries a tag this prune does not remove, with those tags."""
        out: dict[str, list[str]] = {}
        for digest in candidates:
            foreign = sorted(t for t in plans[digest].tags if t not in pruned)
            if foreign:
                out[digest] = foreign
        return out

    def _ordered(self, candidates: list[str], plans: dict[str, DeletePlan]) -> list[DeletePlan]:
        """The plans, an index before its children; a manifest another plan deletes as a
        referrer is not planned again."""
        covered = {d.digest for c in candidates for d in plans[c].order[:-1]}
        roots = [c for c in candidates if c not in covered]
        chosen = set(roots)
        parents = dict.fromkeys(roots, 0)
        for c in roots:
            for child in self.children.get(c, []):
                if child in chosen:
                    parents[child] += 1
        order: list[str] = []
        ready = [c for c in roots if parents[c] == 0]
        while ready:
            c = ready.pop(0)
            order.append(c)
            for child in self.children.get(c, []):
                if child in chosen:
                    parents[child] -= 1
                    if parents[child] == 0:
                        ready.append(child)
        order += [c for c in roots if c not in order]  # a cycle (hostile): the rest, as found
        return [plans[c] for c in order]

    async def _execute(self, plan: DeletePlan) -> None:
        """Carry out one delete plan, noting every manifest that went."""

        def on_event(event: DeleteEvent) -> None:
            if event.action == "deleted":
                self.report.manifests.append(event.descriptor.digest)
            elif event.action == "left_in_place" and event.note:
                self.report.notes.append(event.note)

        self.report.notes.extend(plan.notes)
        await execute_delete(self.target, plan, on_event=on_event)
        log.info(
            "prune.manifest_deleted",
            destination=self.report.destination,
            digest=plan.root.digest,
            referrers=plan.referrers,
        )
