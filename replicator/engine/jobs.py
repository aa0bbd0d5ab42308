"""What a run is asked to do: endpoints, destinations, jobs and options.

These are plain values: the run layer (``replicator.sync``) builds them, the
engine only reads them.  A :class:`CopyJob` copies one source root (a tag or a
digest in one repository) with the graph selected under it to every
:class:`Destination`; :class:`CopyOptions` hold what applies to the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from replicator.engine.state import DestRepo
from replicator.errors import IncompleteCopyError, ReplicatorError
from replicator.graph.filters import GraphFilter
from replicator.targets.base import Target


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A repository inside a target: where content is read from or written to.

    ``location`` is the target's key (a registry host, or ``ocidir://PATH``):
    every endpoint of one location shares its target, its limits and its
    mount sources.
    """

    target: Target
    location: str
    repository: str
    #: ``(location, repository)``, made once: every table of a run keys by it.
    key: DestRepo = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", DestRepo(self.location, self.repository))

    def __str__(self) -> str:
        if self.target.is_local:
            return f"{self.location}{':' + self.repository if self.repository else ''}"
        return f"{self.location}/{self.repository}"


#: What to do with a destination tag that already exists (see :class:`Destination`).
Overwrite = Literal["if-changed", "never", "always"]


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a job writes: an endpoint and the tags to set there once complete.

    ``digest`` is set when the user named the destination by digest: the copy
    then fails unless the root copied has that digest.

    ``overwrite``: ``if-changed`` (default) moves a tag that points elsewhere and
    leaves one already on the root alone (it also proves the root's graph
    present there); ``never`` leaves a tag that points elsewhere in place and
    reports it (a destination whose every tag is kept gets nothing copied);
    ``always`` writes every tag even when it already points at the root, and
    takes no tag as proof of what is under it (every manifest is asked about).

    ``backup``: a template with ``{tag}`` (e.g. ``{tag}-previous``): before a tag
    that points elsewhere is moved, its old manifest is tagged with the
    template's name, in the same run.
    """

    endpoint: Endpoint
    tags: tuple[str, ...] = ()
    digest: str | None = None
    display: str = ""
    overwrite: Overwrite = "if-changed"
    backup: str | None = None


@dataclass(frozen=True, slots=True)
class CopyJob:
    """Copy the graph of ``reference`` (tag or digest) in ``source`` to every destination.

    ``require``: a promotion gate — artifact types (globs, as the referrer
    filters take) of which the root must have at least one genuine referrer at
    the source; checked before anything is written for this job, a root
    lacking one is refused (``GateRefusedError``, exit 10) with the missing types.
    ``name``: the job it belongs to (a sync job's name), for reports.
    ``filter``: this job's selection (referrers, types, depth, platforms) when it
    differs from the run's (``CopyOptions.filter``).  A node two jobs with
    different selections share is walked with the selection of the job that
    reaches it first.
    """

    source: Endpoint
    reference: str
    destinations: tuple[Destination, ...]
    display: str = ""
    require: tuple[str, ...] = ()
    name: str = ""
    filter: GraphFilter | None = None


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How a run copies.

    ``probe_threshold``: blobs at least this large get a ``blob_exists`` probe at
    a registry destination before being uploaded (one request to possibly save
    many bytes); smaller ones are uploaded straight away when their manifest is
    absent there — a POST+PUT costs one request less than HEAD+POST+PUT.  Local
    stores (``Target.is_local``) are always probed: it costs no request.

    ``deep_check``: ask each destination about every manifest of the graph.
    By default presence is inferred where the destination already vouches for
    it: a present index for its children, a subject's referrers listing for
    the referrers it names (the registry stored that index only with all of
    them present).  A manifest deleted out of band from under such an index
    is then not noticed; a deep check finds and copies it again, at one
    request per manifest.

    ``plan``: a dry run.  The destinations are asked what they hold (read-only
    requests), but nothing is written to any store and no blob is read: every
    upload, mount, manifest push, referrers-index update and tag that the run
    would make is recorded in the report's ``planned`` list instead, and
    counted as if done, so the report says what a real run would do.

    ``check_blobs``: also ask each destination about every blob of a manifest
    it holds (a registry can lose blobs under a manifest it keeps: garbage
    collection, storage restored from a backup); a missing one is sent again
    (in a dry run: planned, with the detail ``lost``).  ``verify --deep``.
    """

    filter: GraphFilter = field(default_factory=GraphFilter)
    keep_going: bool = False
    chunk_size: int | None = None
    probe_threshold: int = 1024 * 1024
    fanout_buffer: int = 4
    deep_check: bool = False
    plan: bool = False
    check_blobs: bool = False


class DependencyFailed(ReplicatorError):
    """A node was not committed because something it depends on failed."""

    exit_code = IncompleteCopyError.exit_code
