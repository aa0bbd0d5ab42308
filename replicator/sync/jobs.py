"""The jobs of a run: what is copied from where to where, as parsed references.

A front end (``copy`` today, ``sync`` for config-file jobs next) describes a run
as a list of jobs; the run layer turns them into engine jobs
(:func:`expand_jobs`).  Two kinds:

* :class:`ReferenceJob` — the graph of one source reference (a tag or a digest)
  to one or more destinations, each with the tags to set there.  A front end
  that selects and maps tags itself supplies one such job per tag.
* :class:`RepositoryJob` — every tag of a source repository to the same tag in
  each destination repository (``copy --all-tags``).  The tags are listed when
  the run starts; referrers fallback tags (``sha256-<hex>``) are left out, their
  content travels as referrers.

Guarantees: building a job parses and normalises every reference
(:class:`~replicator.errors.ReferenceError` for a malformed one); a destination
without a tag or digest takes the source's tag, as the copy sets it; a job's
:func:`job_key` depends only on the normalised references, never on how the user
spelled them (``alpine`` and ``docker.io/library/alpine`` are one source).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from replicator.engine import CopyJob, Destination, Endpoint
from replicator.engine.jobs import Overwrite
from replicator.graph.filters import GraphFilter
from replicator.oci.reference import (
    Reference,
    is_referrers_tag,
    parse_reference,
    parse_repository,
    split_tags,
)
from replicator.sync.targets import TargetPool


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """One destination of a :class:`ReferenceJob`: where, and the tags to set there.

    ``ref`` carries the first tag (or the digest the user pinned); ``tags`` every
    tag, in order.  A destination named by digest has no tags: the copy then
    fails unless the source root has that digest.
    """

    ref: Reference
    tags: tuple[str, ...] = ()
    overwrite: Overwrite = "if-changed"
    backup: str | None = None

    @property
    def display(self) -> str:
        """How results name it: ``host/repo:t1,t2`` for several tags, else the reference.

        A repository inside a shared layout is named too: ``ocidir://PATH (repo:tag)``.
        """
        if self.ref.scheme == "ocidir" and self.ref.repository:
            tag = ",".join(self.tags) or self.ref.digest or ""
            return f"{self.ref.without_tag_or_digest()} ({self.ref.repository}:{tag})"
        if len(self.tags) > 1:
            return str(self.ref).rsplit(":", 1)[0] + ":" + ",".join(self.tags)
        return str(self.ref)


@dataclass(frozen=True, slots=True)
class ReferenceJob:
    """Copy the graph of ``source`` (a tag or a digest) to every destination.

    ``origin`` says where the job came from (``pairs.txt:3``), for messages.
    A config-file front end also names the job (``name``), its promotion gate
    (``require``: artifact types the root must have referrers of) and its own
    graph selection (``filter``, None: the run's).
    """

    source: Reference
    destinations: tuple[DestinationSpec, ...]
    origin: str = ""
    name: str = ""
    require: tuple[str, ...] = ()
    filter: GraphFilter | None = None


@dataclass(frozen=True, slots=True)
class RepositoryJob:
    """Copy every tag of repository ``source`` to the same tag in each destination repository."""

    source: Reference
    destinations: tuple[Reference, ...]
    origin: str = ""


JobSpec = ReferenceJob | RepositoryJob


def reference_job(source: str, destinations: Sequence[str], *, origin: str = "") -> ReferenceJob:
    """Parse ``SRC DST...`` into a :class:`ReferenceJob`.

    A destination may name several tags (``host/repo:t1,t2``); one without a tag
    or digest takes the source's tag.  Raises
    :class:`~replicator.errors.ReferenceError` for a malformed reference.
    """
    src = parse_reference(source)
    dests = []
    for text in destinations:
        ref, tags = split_tags(text)
        if not tags and ref.digest is None and src.tag:
            ref, tags = ref.with_tag(src.tag), (src.tag,)
        dests.append(DestinationSpec(ref, tags))
    return ReferenceJob(src, tuple(dests), origin)


def repository_job(source: str, destinations: Sequence[str], *, origin: str = "") -> RepositoryJob:
    """Parse ``SRC DST...`` repositories (no tag, no digest) into a :class:`RepositoryJob`."""
    return RepositoryJob(
        parse_repository(source), tuple(parse_repository(d) for d in destinations), origin
    )


def job_key(job: JobSpec) -> list[Any]:
    """The job's part of the run key: its normalised source and destinations (with tags)."""
    if isinstance(job, RepositoryJob):
        return [str(job.source), [str(d) for d in job.destinations]]
    return [str(job.source), [f"{d.ref}|{','.join(d.tags)}" for d in job.destinations]]


async def expand_jobs(
    jobs: Sequence[JobSpec], targets: TargetPool, before_listing: Callable[[], None]
) -> list[CopyJob]:
    """The engine jobs for ``jobs``: targets opened from ``targets``, repositories' tags listed.

    ``before_listing`` is called before the first tag listing (the first
    network request of the run), if there is one.
    """
    out: list[CopyJob] = []
    for job in jobs:
        if isinstance(job, RepositoryJob):
            before_listing()
            out.extend(await _repository_jobs(job, targets))
        else:
            out.append(_reference_job(job, targets))
    return out


def _endpoint(targets: TargetPool, ref: Reference, *, create: bool) -> Endpoint:
    return Endpoint(targets.open(ref, create=create), ref.location, ref.repository)


def _reference_job(job: ReferenceJob, targets: TargetPool) -> CopyJob:
    src = _endpoint(targets, job.source, create=False)
    dests = tuple(
        Destination(
            _endpoint(targets, d.ref, create=True),
            tags=d.tags,
            digest=d.ref.digest,
            display=d.display,
            overwrite=d.overwrite,
            backup=d.backup,
        )
        for d in job.destinations
    )
    return CopyJob(
        src,
        job.source.reference,
        dests,
        display=str(job.source),
        require=job.require,
        name=job.name,
        filter=job.filter,
    )


async def _repository_jobs(job: RepositoryJob, targets: TargetPool) -> list[CopyJob]:
    src = _endpoint(targets, job.source, create=False)
    tags = [t for t in await src.target.tags(job.source.repository) if not is_referrers_tag(t)]
    dest_endpoints = [(d, _endpoint(targets, d, create=True)) for d in job.destinations]
    return [
        CopyJob(
            src,
            tag,
            tuple(
                Destination(endpoint, tags=(tag,), display=str(d.with_tag(tag)))
                for d, endpoint in dest_endpoints
            ),
            display=str(job.source.with_tag(tag)),
        )
        for tag in tags
    ]
