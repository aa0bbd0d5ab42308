"""The targets of a run: one :class:`~replicator.targets.base.Target` per location.

A :class:`TargetPool` opens the target serving a location (a registry host or an
OCI layout directory) the first time a reference names it, with the connection
settings ``options_for(host)`` gives for that registry host, and hands the same
object out afterwards: a run that names a registry twice shares its
connections, tokens and request counters, and can mount between its
repositories.  The pool owns what it opened and closes it all in
:meth:`TargetPool.aclose` (or at the end of ``async with``); callers must not
close a pooled target themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from replicator.observe.logging import get_logger
from replicator.oci.reference import Reference
from replicator.targets.base import Target
from replicator.targets.factory import open_target
from replicator.targets.registry.options import RegistryOptions

log = get_logger(__name__)

#: Connection settings (credentials, TLS, scheme) for a registry host.
OptionsFor = Callable[[str], RegistryOptions]


def anonymous_options(host: str) -> RegistryOptions:
    """Default settings for ``host``: no credentials, HTTPS except for loopback hosts."""
    return RegistryOptions()


class TargetPool:
    """Opens one target per location, shares it, closes them all (see the module doc)."""

    def __init__(self, options_for: OptionsFor | None = None) -> None:
        self._options_for: OptionsFor = options_for or anonymous_options
        self._targets: dict[str, Target] = {}

    def open(self, ref: Reference, *, create: bool = False) -> Target:
        """The target serving ``ref``'s location, opened on first use.

        ``create`` lets an OCI layout directory be created (destinations); it
        counts only when the location is first opened.  Raises
        :class:`~replicator.errors.ReferenceError` for a reference no backend serves.
        """
        target = self._targets.get(ref.location)
        if target is None:
            target = open_target(ref, options_for=self._options_for, create=create)
            self._targets[ref.location] = target
        return target

    def opened(self, location: str) -> Target | None:
        """The target already open for ``location``, if any (nothing is opened)."""
        return self._targets.get(location)

    def targets(self) -> list[Target]:
        """Every target opened so far."""
        return list(self._targets.values())

    async def aclose(self) -> None:
        """Close every target opened so far; a close that fails is logged, never raised."""
        targets = list(self._targets.values())
        self._targets.clear()
        for target in targets:
            try:
                await target.aclose()
            except Exception as exc:  # closing must not mask the run's own result
                log.debug("targets.close_failed", target=target.display, error=repr(exc))

    async def __aenter__(self) -> TargetPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
