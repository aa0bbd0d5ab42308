"""From a sync config to the jobs of one run: sources listed, tags selected, destinations mapped.

For each selected config job, :func:`expand` lists what it must (a catalog
source's repositories, a repository's tags — only when the tag rules need a
listing), applies the selection rules (:mod:`replicator.sync.selection`), maps
each source repository to its destinations (:mod:`replicator.sync.mapping`),
and makes one :class:`~replicator.sync.jobs.ReferenceJob` per selected tag,
carrying the job's name, promotion gate, overwrite policy, backup template and
graph selection.

``immutable`` tags cost no request per tag: each destination repository's tag
list is read once, and an immutable tag already there is not looked at again
(at that destination; the others still get it).

Everything decided is kept for the plan and the report: which repositories a
catalog pattern selected or excluded and why, which tags were selected and why
the others were not, which immutable tags were skipped where.  A listing that
fails (an unknown repository, a refused catalog) is that job's failure; the
other jobs go on.

With a :class:`~replicator.sync.shard.Shard`, only the source repositories that
shard owns are kept (after mapping, so a mapping collision is found by every
shard; before any tag is listed); the others are counted in
:attr:`JobPlan.other_shards`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from replicator.errors import NotFoundError, ReplicatorError
from replicator.oci.reference import Reference
from replicator.sync.config import SyncConfig, SyncJob
from replicator.sync.jobs import DestinationSpec, ReferenceJob
from replicator.sync.mapping import describe_destination, map_repositories
from replicator.sync.selection import (
    RepositoryDecision,
    TagDecision,
    is_immutable,
    needs_listing,
    select_repositories,
    select_tags,
)
from replicator.sync.shard import Shard, shard_name
from replicator.sync.targets import TargetPool
from replicator.targets.base import CatalogLister

#: Listings in flight at once while a config is expanded.
LISTING_CONCURRENCY = 8


@dataclass(slots=True)
class RepositoryPlan:
    """One source repository of a job: its destinations and what was decided for its tags."""

    source: Reference
    destinations: tuple[Reference, ...]
    decisions: tuple[TagDecision, ...] = ()
    selected: tuple[str, ...] = ()
    #: Immutable tags already at a destination: ``(tag, destination)`` left alone.
    immutable_skipped: list[tuple[str, str]] = field(default_factory=list)
    #: The source repository's tags as listed (None: not listed, ``include`` alone).
    listed: tuple[str, ...] | None = None


@dataclass(slots=True)
class JobPlan:
    """One config job expanded: its repositories, catalog decisions, and a listing failure."""

    name: str
    repositories: list[RepositoryPlan] = field(default_factory=list)
    catalog: tuple[RepositoryDecision, ...] = ()
    error: ReplicatorError | None = None
    #: Source repositories left to other shards (``--shard``), by name.
    other_shards: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Expansion:
    """Every selected config job expanded, and the run's jobs in order."""

    jobs: list[JobPlan]
    reference_jobs: list[ReferenceJob]

    @property
    def errors(self) -> list[ReplicatorError]:
        """The listing failures, one per job that had one."""
        return [j.error for j in self.jobs if j.error is not None]


def selected_jobs(config: SyncConfig, names: Sequence[str]) -> list[SyncJob]:
    """The config's jobs named in ``names`` (all when empty), in the config's order."""
    if not names:
        return list(config.jobs)
    wanted = list(dict.fromkeys(names))
    return [config.job(name) for name in wanted]


async def expand(
    config: SyncConfig,
    names: Sequence[str],
    targets: TargetPool,
    *,
    honour_immutable: bool = True,
    shard: Shard | None = None,
) -> Expansion:
    """Expand the jobs ``names`` (all when empty) of ``config`` (see the module doc).

    ``honour_immutable`` False (``verify``) looks at every selected tag.
    ``shard``: keep only the source repositories it owns.
    """
    jobs = selected_jobs(config, names)
    plans = [JobPlan(job.name) for job in jobs]
    limiter = anyio.CapacityLimiter(LISTING_CONCURRENCY)

    async def one(job: SyncJob, plan: JobPlan) -> None:
        try:
            await _expand_job(job, plan, targets, limiter, honour_immutable, shard)
        except ReplicatorError as exc:
            plan.error = exc

    async with anyio.create_task_group() as tg:
        for job, plan in zip(jobs, plans, strict=True):
            tg.start_soon(one, job, plan)
    reference_jobs = [
        rj
        for job, plan in zip(jobs, plans, strict=True)
        if plan.error is None
        for rj in _reference_jobs(job, plan)
    ]
    return Expansion(plans, reference_jobs)


async def _expand_job(
    job: SyncJob,
    plan: JobPlan,
    targets: TargetPool,
    limiter: anyio.CapacityLimiter,
    honour_immutable: bool,
    shard: Shard | None = None,
) -> None:
    repositories = await _source_repositories(job, plan, targets, limiter)
    mapped = map_repositories(job.destinations, repositories)
    plan.repositories = [
        RepositoryPlan(job.source_reference(repo if job.is_catalog else None), mapped[repo])
        for repo in repositories
    ]
    if shard is not None:
        plan.repositories, others = shard.split(plan.repositories, lambda r: shard_name(r.source))
        plan.other_shards = [str(r.source) for r in others]
    errors: list[ReplicatorError] = []

    async def select(repo_plan: RepositoryPlan) -> None:
        # Caught here: a task group would wrap it in an exception group, which
        # the job's own handler (one failed listing fails that job only) misses.
        try:
            await _select(job, repo_plan, targets, limiter, honour_immutable)
        except ReplicatorError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for repo_plan in plan.repositories:
            tg.start_soon(select, repo_plan)
    if errors:
        raise errors[0]


async def _source_repositories(
    job: SyncJob, plan: JobPlan, targets: TargetPool, limiter: anyio.CapacityLimiter
) -> list[str]:
    """The job's source repositories: its own, or those of the catalog its globs select."""
    source = job.source_reference(None) if not job.is_catalog else None
    if source is not None:
        return [source.repository]
    catalog_ref = job.source_reference("x")
    target = targets.open(catalog_ref)
    if not isinstance(target, CatalogLister):
        raise NotFoundError(f"{target.display} cannot list its repositories (catalog source)")
    async with limiter:
        listed = await target.catalog()
    patterns = job.source.repositories  # type: ignore[union-attr]
    selection = select_repositories(patterns, listed)
    plan.catalog = selection.decisions
    return list(selection.selected)


async def _select(
    job: SyncJob,
    repo: RepositoryPlan,
    targets: TargetPool,
    limiter: anyio.CapacityLimiter,
    honour_immutable: bool,
) -> None:
    """Select the tags of one source repository, then drop immutable ones already there."""
    listed: list[str] | None = None
    if needs_listing(job.tags):
        target = targets.open(repo.source)
        async with limiter:
            listed = await target.tags(repo.source.repository)
    selection = select_tags(job.tags, listed)
    repo.listed = None if listed is None else tuple(listed)
    repo.decisions = selection.decisions
    repo.selected = selection.selected
    if honour_immutable and job.tags.immutable and repo.selected:
        await _skip_immutable(job, repo, targets, limiter)


async def _skip_immutable(
    job: SyncJob, repo: RepositoryPlan, targets: TargetPool, limiter: anyio.CapacityLimiter
) -> None:
    """Note immutable selected tags each destination already has (one tag listing each)."""
    immutable = [t for t in repo.selected if is_immutable(job.tags, t)]
    if not immutable:
        return
    for dest in repo.destinations:
        target = targets.open(dest, create=True)
        try:
            async with limiter:
                present = set(await target.tags(dest.repository))
        except NotFoundError:
            present = set()
        for tag in immutable:
            if tag in present:
                repo.immutable_skipped.append((tag, describe_destination(dest)))


def _reference_jobs(job: SyncJob, plan: JobPlan) -> list[ReferenceJob]:
    """One engine job per selected tag, to every destination that still needs it."""
    out: list[ReferenceJob] = []
    flt = job.graph_filter()
    for repo in plan.repositories:
        skipped = set(repo.immutable_skipped)
        for tag in repo.selected:
            dests = tuple(
                DestinationSpec(
                    dest.with_tag(tag), (tag,), overwrite=job.overwrite, backup=job.backup
                )
                for dest in repo.destinations
                if (tag, describe_destination(dest)) not in skipped
            )
            if not dests:
                continue
            out.append(
                ReferenceJob(
                    repo.source.with_tag(tag),
                    dests,
                    origin=f"job {job.name}",
                    name=job.name,
                    require=job.require,
                    filter=flt,
                )
            )
    return out
