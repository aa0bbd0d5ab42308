"""What a run is asked to do: endpoints, destinations, jobs and options.

These are plain values: the run layer (``replicator.sync``) builds them, the
engine only reads them.  A :class:`CopyJob` copies one source root (a tag or a
digest in one repository) with the graph selected under it to every
:class:`Destination`; :class:`CopyOptions` hold what applies to the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def key(self) -> DestRepo:
        """``(location, repository)``."""
        return DestRepo(self.location, self.repository)

    def __str__(self) -> str:
        if self.target.is_local:
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
    stores (``Target.is_local``) are always probed: it costs no request.

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
