"""What the engine tells the outside world while it runs (progress, logs).

The engine calls a :class:`CopyObserver` at each step; the CLI plugs in its
live display on a terminal (``replicator.observe.progress``) or
:class:`LogObserver`, which emits structlog events (CI logs).  Observers must be
cheap and must never raise: they are called from the transfer path.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from structlog.typing import FilteringBoundLogger

from replicator.oci.descriptor import Descriptor

_LOGGER_NAME = "replicator.engine"
_BLOB_EVENTS = {
    "uploaded": "engine.blob_copied",
    "mounted": "engine.blob_mounted",
    "exists": "engine.blob_present",
}
_MANIFEST_EVENTS = {"pushed": "engine.manifest_copied", "exists": "engine.manifest_present"}


def label_of(desc: Descriptor) -> str:
    """How ORAS names a node in its progress lines: the title, else the media type."""
    return desc.title or desc.media_type


class CopyObserver(Protocol):
    """Receives the engine's progress notifications."""

    def blob_started(self, desc: Descriptor, destinations: int) -> None:
        """A blob transfer (upload to ``destinations`` stores) begins."""
        ...

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """``nbytes`` more bytes of ``desc`` were read from the source."""
        ...

    def blob_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """A blob reached ``destination``: ``exists``, ``mounted`` or ``uploaded``."""
        ...

    def manifest_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """A manifest is present at ``destination``: ``exists`` or ``pushed``."""
        ...

    def warning(self, message: str) -> None:
        """Something was skipped or looked wrong, but the copy goes on."""
        ...


class LogObserver:
    """Emits one structlog event per finished node (readable in CI logs).

    A blob's start (``engine.blob_started``) is a debug event: at the default level the log
    holds one line per node, the outcome, which names the digest, title, size and
    destination.  The logger is bound once, when the observer is made (after the
    CLI configured logging), so an event costs no logger lookup, and events below
    the configured level cost a no-op call.
    """

    def __init__(self) -> None:
        self._log: FilteringBoundLogger = structlog.get_logger(_LOGGER_NAME).bind()

    def blob_started(self, desc: Descriptor, destinations: int) -> None:
        """Log ``copying <digest> <title>`` (debug)."""
        self._log.debug(
            "engine.blob_started",
            digest=desc.short,
            name=label_of(desc),
            size=desc.size,
            to=destinations,
        )

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """Nothing: per-chunk events would flood a log."""

    def blob_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Log the blob's outcome."""
        self._log.info(
            _BLOB_EVENTS.get(how, "engine.blob_copied"),
            digest=desc.short,
            name=label_of(desc),
            size=desc.size,
            destination=destination,
        )

    def manifest_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Log the manifest's outcome."""
        self._log.info(
            _MANIFEST_EVENTS.get(how, "engine.manifest_copied"),
            digest=desc.short,
            name=label_of(desc),
            destination=destination,
        )

    def warning(self, message: str) -> None:
        """Log a warning event."""
        self._log.warning("engine.warning", reason=message)


class NullObserver:
    """Ignores everything (library use, tests)."""

    def blob_started(self, desc: Descriptor, destinations: int) -> None:
        """Ignore."""

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """Ignore."""

    def blob_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Ignore."""

    def manifest_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Ignore."""

    def warning(self, message: str) -> None:
        """Ignore."""
