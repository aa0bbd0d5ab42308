"""What every part of one engine run shares: options, ledger, limits, report, state.

:class:`RunContext` is handed to each part of the engine (presence checks,
source reads, blob movement, manifest commits, referrer walks, tagging).  It
owns the run's failure policy (:meth:`RunContext.fail`: record, and without
``keep_going`` cancel the run), its warnings, the rate-limited call to a store
(:meth:`RunContext.limited`), the optional abilities of each target (checked
once per target with ``isinstance``), and the graceful-stop bookkeeping of
uploads in flight (:class:`StopControl`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import InitVar, dataclass, field
from itertools import islice
from typing import Any, TypeVar

import anyio
import structlog

from replicator.engine.events import CopyObserver
from replicator.engine.jobs import CopyOptions, DependencyFailed, Endpoint
from replicator.engine.limits import Kind, Limits, Signal
from replicator.engine.report import CopyReport, FailureCause, PlannedWrite
from replicator.engine.state import DestRepo, RunState, SourceNode
from replicator.engine.trust import LedgerView
from replicator.errors import EXIT_INCOMPLETE, EXIT_REFUSED, RegistryError, ReplicatorError
from replicator.graph.filters import GraphFilter
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Abilities, Target, abilities_of

_log = structlog.get_logger("replicator.engine")

#: A zero-argument coroutine function: one piece of concurrent work.
Call = Callable[[], Coroutine[Any, Any, Any]]
T = TypeVar("T")


async def run_all(calls: Sequence[Call]) -> None:
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


@dataclass(frozen=True, slots=True)
class NodeVisit:
    """One request to make a manifest node and what is selected under it present.

    ``depth`` is the referrer level (0: the root and its index children);
    ``subject`` is set for a referrer (the node it refers to), ``parent`` is
    the node it was reached from.  ``implied``: destinations where a parent is
    present (so this node is), or, for a referrer, whose listing of its
    subject's referrers names it; ``fresh``: destinations where this
    referrer's subject was just pushed by this run (so it cannot be there yet).
    """

    src: Endpoint
    desc: Descriptor
    dests: Sequence[Endpoint]
    depth: int
    subject: Descriptor | None = None
    parent: SourceNode | None = None
    implied: frozenset[DestRepo] = frozenset()
    fresh: frozenset[DestRepo] = frozenset()
    #: The selection of the job this visit belongs to.
    flt: GraphFilter = field(default_factory=GraphFilter)
    #: The node at the source, made once (tables key by it).
    key: SourceNode = field(init=False, compare=False, repr=False)
    #: The caller's key of this node, when it has one (shared instead of made again).
    node: InitVar[SourceNode | None] = None

    def __post_init__(self, node: SourceNode | None) -> None:
        key = SourceNode(self.src.location, self.src.repository, self.desc.digest)
        object.__setattr__(self, "key", node if node == key else key)


#: Visits a node (the graph visitor's entry point, handed to the referrer walk).
VisitNode = Callable[[NodeVisit], Awaitable[None]]


async def run_bounded(calls: Iterable[Call], limit: int) -> None:
    """Run ``calls`` concurrently, at most ``limit`` at a time, and wait for them all.

    The calls are taken from the iterable as workers free up, so thousands of
    referrers of one subject (or tags of one run) cost ``limit`` tasks in
    flight, not one task each: memory stays bounded by what is in flight.
    Bounding a level of the walk cannot deadlock: a call only ever waits for
    work its own subtree started or that a running call claimed.
    """
    it = iter(calls)
    head = list(islice(it, max(1, limit)))
    if not head:
        return
    if len(head) == 1:
        await head[0]()
        for call in it:
            await call()
        return

    async def worker(first: Call) -> None:
        await first()
        for call in it:
            await call()

    async with anyio.create_task_group() as tg:
        for first in head:
            tg.start_soon(worker, first)


class StopControl:
    """Graceful stop: no new upload starts, uploads in flight park at a chunk boundary.

    ``stopping`` turns true on :meth:`request`; every upload registers with
    :meth:`enter_push` / :meth:`leave_push`, and :meth:`wait_quiet` returns once
    none is between two acknowledged chunks.
    """

    def __init__(self) -> None:
        self.stopping = False
        self._active = 0
        self._quiet: anyio.Event | None = None

    def request(self) -> None:
        """Stop taking new work."""
        self.stopping = True
        if self._quiet is None:
            self._quiet = anyio.Event()
        if self._active == 0:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        """Return once no upload is between two acknowledged chunks (after :meth:`request`)."""
        if self._quiet is None:
            self._quiet = anyio.Event()
        await self._quiet.wait()

    def enter_push(self) -> None:
        """An upload begins."""
        self._active += 1

    def leave_push(self) -> None:
        """An upload ended, or parked at an acknowledged chunk for the stop."""
        self._active -= 1
        if self.stopping and self._active == 0 and self._quiet is not None:
            self._quiet.set()


@dataclass(slots=True)
class RunContext:
    """The shared parts of one run (see the module doc)."""

    options: CopyOptions
    ledger: LedgerView
    limits: Limits
    observer: CopyObserver
    report: CopyReport = field(default_factory=CopyReport)
    state: RunState = field(default_factory=RunState)
    stop: StopControl = field(default_factory=StopControl)
    #: Per location: a counter of the target's retried requests (congestion signal).
    signals: dict[str, Signal] = field(default_factory=dict)
    cancel_scope: anyio.CancelScope | None = None
    _abilities: dict[int, Abilities] = field(default_factory=dict)

    def abilities(self, target: Target) -> Abilities:
        """The optional abilities of ``target`` (checked once per target)."""
        found = self._abilities.get(id(target))
        if found is None:
            found = self._abilities[id(target)] = abilities_of(target)
        return found

    def fail(self, message: str, error: BaseException | None = None) -> None:
        """Record a failure; without ``keep_going`` cancel the run.

        A :class:`DependencyFailed` is the echo of a failure already recorded
        where it happened: it is not recorded twice.
        """
        if isinstance(error, DependencyFailed):
            return
        self.report.failures.append(message)
        if isinstance(error, RegistryError):
            cause = FailureCause(
                message,
                error.exit_code,
                type(error).__name__,
                error.side,
                error.code,
                error.registry,
                error.repository,
            )
        elif isinstance(error, ReplicatorError):
            cause = FailureCause(message, error.exit_code, type(error).__name__, error.side)
        else:
            cause = FailureCause(message, EXIT_INCOMPLETE, type(error).__name__ if error else "")
        self.report.causes.append(cause)
        _log.error("engine.copy_failed", reason=message)
        if not self.options.keep_going and self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def refuse(self, message: str) -> None:
        """Record a promotion gate's refusal: exit 10 unless something failed; the run goes on."""
        self.report.causes.append(FailureCause(message, EXIT_REFUSED, "GateRefusedError"))
        _log.warning("engine.gate_refused", reason=message)

    def planned(
        self,
        action: str,
        destination: str,
        digest: str,
        size: int = 0,
        tag: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Note a write a dry run would make (``CopyOptions.plan``)."""
        self.report.planned.append(PlannedWrite(action, destination, digest, size, tag, detail))
        if action == "upload":
            self.report.planned_bytes += size

    def warn(self, message: str) -> None:
        """Record a warning once and tell the observer."""
        if message not in self.report.warnings:
            self.report.warnings.append(message)
            self.observer.warning(message)

    async def limited(self, kind: Kind, location: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` while holding a ``kind`` slot at ``location``."""
        return await self.limits.call(kind, location, fn, self.signals.get(location))

    @property
    def fanout(self) -> int:
        """How many siblings (referrers of one node, jobs of a run) are walked at once."""
        return max(8, 2 * self.limits.settings.concurrency)

    def is_local(self, endpoint: Endpoint) -> bool:
        """Whether asking ``endpoint``'s store costs no request."""
        return endpoint.target.is_local


def mark_side(error: ReplicatorError, side: str) -> ReplicatorError:
    """``error`` attributed to ``side`` unless it already names one."""
    error.side = error.side or side
    return error
