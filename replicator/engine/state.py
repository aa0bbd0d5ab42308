"""The run state: what one engine run knows, claimed and decided, in typed tables.

Every table is keyed by a named tuple that says what it identifies, so a key of
one table cannot be mistaken for a key of another:

* :class:`SourceNode` — a manifest at the source (location, repository, digest);
* :class:`DestRepo` — a repository at a destination (location, repository);
* :class:`DestNode` — content (a manifest or a blob) in a destination repository;
* :class:`DestTag` — a tag in a destination repository;
* :class:`Visit` — one source node visited for one destination repository;
* :class:`LocationBlob` — a blob at a destination *location* (any repository).

Most values are :class:`~replicator.engine.once.Once` cells: the first task that
needs a thing claims the cell and does the work, every other task awaits the
same outcome.  This is how the engine reads each source manifest once, uploads
each blob once per destination, and decides each node once however many paths
lead to it.  The state belongs to one run; nothing here performs I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from replicator.engine.once import Once
from replicator.errors import ReplicatorError
from replicator.oci.descriptor import Descriptor

K = TypeVar("K")


class SourceNode(NamedTuple):
    """A manifest at the source."""

    location: str
    repository: str
    digest: str


class DestRepo(NamedTuple):
    """A repository at a destination."""

    location: str
    repository: str


class DestNode(NamedTuple):
    """A manifest or blob in a destination repository."""

    location: str
    repository: str
    digest: str


class DestTag(NamedTuple):
    """A tag in a destination repository."""

    location: str
    repository: str
    tag: str


class Visit(NamedTuple):
    """One source node visited for one destination repository."""

    node: SourceNode
    dest: DestRepo


class LocationBlob(NamedTuple):
    """A blob at a destination location, whatever the repository."""

    location: str
    digest: str


def dest_node(dest: DestRepo, digest: str) -> DestNode:
    """The content ``digest`` in the destination repository ``dest``."""
    return DestNode(dest.location, dest.repository, digest)


def cell(table: dict[K, Once], key: K) -> Once:
    """The cell of ``key`` in ``table``, made on first use."""
    found = table.get(key)
    if found is None:
        found = table[key] = Once()
    return found


_SETTLED: dict[object, Once] = {}


def settled(value: object) -> Once:
    """A shared, claimed cell already settled with ``value`` (hashable).

    A run holds a cell per node and destination; once one has succeeded, what
    is left to know is its value, so the table keeps this shared cell instead
    (tasks already waiting on the original were woken by it).
    """
    found = _SETTLED.get(value)
    if found is None:
        found = _SETTLED[value] = Once()
        found.claimed = True
        found.set(value)
    return found


def settle(table: dict[K, Once], key: K, once: Once, value: object = None) -> None:
    """Set ``once`` to ``value`` and, when that succeeded, keep the shared cell in ``table``."""
    once.set(value)
    if once.error is None and once.value == value and table.get(key) is once:
        table[key] = settled(value)


@dataclass(slots=True)
class RunState:
    """Every table of one run (see the module doc for the keys)."""

    #: Source manifests read, once each: a read in flight (its cell), then its
    #: exact bytes and media type.
    manifests: dict[SourceNode, Once | tuple[bytes, str | None]] = field(default_factory=dict)
    #: Referrer listings read at the source, once each: a read in flight, then the listing.
    referrer_lists: dict[SourceNode, Once | Sequence[Descriptor]] = field(default_factory=dict)
    #: Manifests made present at a destination ("exists" or "pushed").
    committed: dict[DestNode, Once] = field(default_factory=dict)
    #: Blobs made present at a destination ("exists", "mounted", "uploaded").
    blobs: dict[DestNode, Once] = field(default_factory=dict)
    #: The walk of a node (itself, its children, its referrers) per destination.
    walks: dict[Visit, Once] = field(default_factory=dict)
    #: Per destination repository: did the store say it does not exist yet?
    new_repos: dict[DestRepo, Once] = field(default_factory=dict)
    #: The graph as discovered: children and admitted referrers of each node.
    edges: dict[SourceNode, set[SourceNode]] = field(default_factory=dict)
    #: Nodes whose referrers could not be listed or indexed (their graph is incomplete).
    referrer_errors: dict[SourceNode, ReplicatorError] = field(default_factory=dict)
    #: Referrers admitted without reading them (present everywhere), by subject digest.
    admitted_unread: dict[SourceNode, str] = field(default_factory=dict)
    #: Listed referrers not admitted (foreign, unreadable): (subject, referrer digest).
    not_admitted: set[tuple[SourceNode, str]] = field(default_factory=set)
    #: Roots this run built itself (a platform-filtered index): no referrers.
    synthetic: set[SourceNode] = field(default_factory=set)
    #: Per destination location and blob: the lead upload other repositories follow.
    location_leads: dict[LocationBlob, Once] = field(default_factory=dict)
    #: Where destination tags point, as far as this run knows.
    current_tags: dict[DestTag, str] = field(default_factory=dict)
    #: Tags a root may be pushed under directly.
    root_tags: dict[DestNode, tuple[str, ...]] = field(default_factory=dict)
    #: Where destination tags pointed before this run moved them (for backups).
    previous_tags: dict[DestTag, str] = field(default_factory=dict)
    #: Tags left pointing elsewhere (``overwrite: never``).
    kept_tags: set[DestTag] = field(default_factory=set)
    #: Per job root: destinations whose every tag is kept (nothing copied there).
    skipped_dests: dict[SourceNode, frozenset[DestRepo]] = field(default_factory=dict)
    #: Tags written together with their root's push.
    pushed_tags: set[DestTag] = field(default_factory=set)
    #: Visits whose referrer walk finished without error.
    referrers_walked: set[Visit] = field(default_factory=set)
    #: Referrers pushed with their index update deferred to the subject's relist.
    unindexed: set[DestNode] = field(default_factory=set)

    def skipped(self, root: SourceNode) -> frozenset[DestRepo]:
        """Destinations of the job rooted at ``root`` that get nothing (all tags kept)."""
        return self.skipped_dests.get(root, frozenset())

    def edge(self, parent: SourceNode | None, node: SourceNode) -> None:
        """Record ``node`` under ``parent`` in the discovered graph (a root has none)."""
        if parent is not None:
            self.edges.setdefault(parent, set()).add(node)
