"""Live progress of a copy on a terminal (rich), in the spirit of ORAS's output.

:class:`RichProgress` is a :class:`~replicator.engine.events.CopyObserver`: a
live panel shows the bytes read with rate and ETA, blob and manifest counters,
and one bar per blob in flight; finished nodes scroll above it as ORAS-like
lines (``Copied  6bdea3cdc730 sbom.json``, ``Exists  ...``, ``Mounted ...``).
It writes to the given console (stderr by default) so stdout stays clean for
results.  Use it as a context manager around the run.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from replicator.engine.events import label_of
from replicator.oci.descriptor import Descriptor

_VERBS = {"uploaded": "Copied", "pushed": "Copied", "exists": "Exists", "mounted": "Mounted"}


class RichProgress:
    """A rich live display fed by the copy engine's observer calls.

    Never raises from an observer call; bars of blobs that finish are removed,
    so the display stays small however many blobs a run moves.
    """

    def __init__(self, stream: TextIO | None = None, *, max_bars: int = 8) -> None:
        self.console = Console(file=stream or sys.stderr)
        self.max_bars = max_bars
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=20),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._total: TaskID = self.progress.add_task("total", total=None)
        self._bars: dict[str, TaskID] = {}
        self._expected = 0
        self.blobs = 0
        self.manifests = 0
        self.bytes = 0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def _describe_total(self) -> None:
        self.progress.update(
            self._total,
            description=f"total  {self.blobs} blobs  {self.manifests} manifests",
            total=self._expected or None,
            completed=self.bytes,
        )

    def blob_started(self, desc: Descriptor, destinations: int) -> None:
        """Add a bar for the blob (while fewer than ``max_bars`` are shown)."""
        self._expected += desc.size
        if len(self._bars) < self.max_bars and desc.digest not in self._bars:
            name = label_of(desc)
            if len(name) > 24:
                name = name[:23] + "…"
            self._bars[desc.digest] = self.progress.add_task(
                f"{desc.short} {name}", total=desc.size
            )
        self._describe_total()

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """Advance the blob's bar and the total."""
        self.bytes += nbytes
        bar = self._bars.get(desc.digest)
        if bar is not None:
            self.progress.advance(bar, nbytes)
        self._describe_total()

    def blob_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Drop the blob's bar and print its ORAS-like line."""
        self.blobs += 1
        bar = self._bars.pop(desc.digest, None)
        if bar is not None:
            self.progress.remove_task(bar)
        self.console.print(f"{_VERBS.get(how, how.capitalize()):<8}{desc.short} {label_of(desc)}")
        self._describe_total()

    def manifest_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Print the manifest's ORAS-like line."""
        self.manifests += 1
        self.console.print(f"{_VERBS.get(how, how.capitalize()):<8}{desc.short} {label_of(desc)}")
        self._describe_total()

    def warning(self, message: str) -> None:
        """Print a warning line above the bars."""
        self.console.print(f"[yellow]Warning[/yellow] {message}", markup=True, highlight=False)
