"""Live progress of a copy on a terminal, in the spirit of ORAS's output.

:class:`TerminalProgress` is a :class:`~replicator.engine.events.CopyObserver`:
a live area at the bottom of the terminal shows the bytes read with rate and
ETA (in the binary units of :mod:`replicator.observe.units`, as the copy
summary prints them: KiB, MiB, GiB), blob and manifest counters, and one bar per blob in flight; finished nodes
scroll above it as ORAS-like lines (``Copied  6bdea3cdc730 sbom.json``,
``Exists  ...``, ``Mounted ...``).  It writes to the given stream (stderr by
default) so stdout stays clean for results.  Use it as a context manager around
the run: on exit the live area is erased and the scrolled lines stay.

It uses the standard library only (ANSI escape sequences).  Depending on rich
for this display cost ~50 ms of every CLI start-up: ``structlog.dev`` imports
rich (and pygments) whenever it is installed.

Redraws are rate-limited (``refresh_per_second``): an observer call changes the
state and redraws only if the last redraw is older than the interval, so a run
of thousands of tiny blobs costs a few redraws per second, not one per blob.  A
daemon thread (``auto_refresh``) draws what is left over, so a finished node's
line shows up soon even when the engine then goes quiet.  Lines are cut (live
area) or folded (scrolled lines) to the terminal width so the terminal never
wraps them, and the live area never grows taller than the terminal.  Colours
follow ``NO_COLOR`` (https://no-color.org); a stream that is not a terminal
(or ``TERM=dumb``) gets the scrolled lines only, without escape sequences.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TextIO

from replicator.engine.events import label_of
from replicator.observe.units import human_rate, human_size, human_size_pair
from replicator.oci.descriptor import Descriptor

_VERBS = {"uploaded": "Copied", "pushed": "Copied", "exists": "Exists", "mounted": "Mounted"}

# SGR parameters (the defaults rich's progress columns used).
_YELLOW = "33"
_MAGENTA = "35"
_GREEN = "32"
_RED = "31"
_CYAN = "36"
_DIM = "2"

_HIDE_CURSOR = "\x1b[?25l"
_SHOW_CURSOR = "\x1b[?25h"
_CLEAR_LINE_END = "\x1b[K"
_CLEAR_SCREEN_END = "\x1b[J"

_BAR_WIDTH = 20
_NAME_WIDTH = 24
_INDENT = 8  # continuation rows of a folded line start under the digest
_RATE_WINDOW = 10.0  # seconds of samples the rate is computed over
_IDLE_REDRAW = 1.0  # the ticker refreshes rate and ETA this often when nothing changes
_BLANKS = str.maketrans("\t\n\r", "   ")

#: A piece of a line: its text and its SGR parameters ("" for none).
Segment = tuple[str, str]


def _char_cells(ch: str) -> int:
    import unicodedata  # only for non-ASCII text

    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _cells(text: str) -> int:
    """How many terminal columns ``text`` takes."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(ch) for ch in text)


#: Columns and rows assumed when the terminal reports none.
_FALLBACK_SIZE = (80, 24)


def _cut(text: str, width: int) -> str:
    """The longest prefix of ``text`` that fits in ``width`` columns."""
    if text.isascii():
        return text[:width]
    used = 0
    for i, ch in enumerate(text):
        used += _char_cells(ch)
        if used > width:
            return text[:i]
    return text


def _clock_time(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        if not stream.isatty():
            return False
    except Exception:
        return False
    return os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def _speaks_unicode(stream: TextIO) -> bool:
    encoding = getattr(stream, "encoding", None)
    if not isinstance(encoding, str):
        return True  # an in-memory text stream takes any character
    return encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")


class _Blob:
    __slots__ = ("desc", "done", "name")

    def __init__(self, desc: Descriptor, name: str) -> None:
        self.desc = desc
        self.name = name
        self.done = 0


class TerminalProgress:
    """A live display on a terminal fed by the copy engine's observer calls.

    Never raises from an observer call (a stream that fails to write turns the
    display off).  Blobs that finish leave the live area, so it stays small
    however many blobs a run moves: at most ``max_bars`` bars, then a line
    counting the others in flight.  ``clock``, ``width``, ``height``, ``color``
    and ``live`` are for tests; by default the live area is drawn when the
    stream is a terminal, and coloured unless ``NO_COLOR`` is set.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        max_bars: int = 8,
        refresh_per_second: float = 10.0,
        auto_refresh: bool = True,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
        height: int | None = None,
        color: bool | None = None,
        live: bool | None = None,
    ) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.max_bars = max(0, max_bars)
        self.live = _is_terminal(self.stream) if live is None else live
        wants_color = not os.environ.get("NO_COLOR") if color is None else color
        self.color = self.live and wants_color
        self.blobs = 0
        self.manifests = 0
        self.bytes = 0
        #: How many times the live area was drawn.
        self.redraws = 0
        self._interval = 1.0 / refresh_per_second if refresh_per_second > 0 else 0.0
        self._auto_refresh = auto_refresh
        self._clock = clock
        self._width = width
        self._height = height
        unicode = _speaks_unicode(self.stream)
        self._encoding = None if unicode else getattr(self.stream, "encoding", None)
        self._ellipsis = "…" if unicode else "..."
        self._bar_done, self._bar_todo = ("━", "─") if unicode else ("#", "-")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._inflight: dict[str, _Blob] = {}
        self._pending: list[list[Segment]] = []
        self._samples: deque[tuple[float, int]] = deque()
        self._expected = 0
        self._active = False  # the live area is on screen (or about to be)
        self._broken = False  # the stream failed: write nothing more
        self._dirty = False
        self._drawn = 0  # rows of the live area on screen, above the cursor
        self._last_draw = 0.0

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> TerminalProgress:
        with contextlib.suppress(Exception), self._lock:
            if self.live and not self._active and not self._broken:
                self._active = True
                now = self._clock()
                self._samples.append((now, self.bytes))
                self._write(_HIDE_CURSOR)
                self._draw(now)
        if self._active and self._auto_refresh and self._interval > 0:
            self._stop.clear()
            self._ticker = threading.Thread(
                target=self._tick, name="replicator-progress", daemon=True
            )
            self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Erase the live area, print the lines still queued, show the cursor."""
        self._stop.set()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.join(timeout=2.0)
        with contextlib.suppress(Exception), self._lock:
            if not self._active:
                return
            self._active = False
            out = [self._erase()]
            for segments in self._pending:
                out.extend(self._rows(segments, self._terminal_size()[0]))
            self._pending.clear()
            out.append(_SHOW_CURSOR)
            self._drawn = 0
            self._write("".join(out))

    # -- observer calls ------------------------------------------------------

    def blob_started(self, desc: Descriptor, destinations: int) -> None:
        """Count the blob's size into the total and give it a place in the live area."""
        with contextlib.suppress(Exception), self._lock:
            self._expected += desc.size
            if desc.digest not in self._inflight:
                self._inflight[desc.digest] = _Blob(desc, self._name(desc))
            self._changed()

    def blob_advanced(self, desc: Descriptor, nbytes: int) -> None:
        """Advance the blob's bar and the total."""
        with contextlib.suppress(Exception), self._lock:
            self.bytes += nbytes
            blob = self._inflight.get(desc.digest)
            if blob is not None:
                blob.done += nbytes
            self._changed()

    def blob_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Drop the blob's bar and print its ORAS-like line."""
        with contextlib.suppress(Exception), self._lock:
            self.blobs += 1
            self._inflight.pop(desc.digest, None)
            self._scroll(self._node_line(desc, how))

    def manifest_finished(self, desc: Descriptor, how: str, destination: str) -> None:
        """Print the manifest's ORAS-like line."""
        with contextlib.suppress(Exception), self._lock:
            self.manifests += 1
            self._scroll(self._node_line(desc, how))

    def warning(self, message: str) -> None:
        """Print a warning line above the live area."""
        with contextlib.suppress(Exception), self._lock:
            self._scroll([("Warning", _YELLOW), (" " + self._clean(str(message)), "")])

    # -- state to text -------------------------------------------------------

    def _clean(self, text: str) -> str:
        """``text`` without control characters (registry data must not drive the terminal)."""
        if not text.isprintable():
            text = "".join(ch if ch.isprintable() else "?" for ch in text.translate(_BLANKS))
        if self._encoding is not None and not text.isascii():
            with contextlib.suppress(LookupError):
                text = text.encode(self._encoding, "replace").decode(self._encoding)
        return text

    def _name(self, desc: Descriptor) -> str:
        name = self._clean(label_of(desc))
        if _cells(name) > _NAME_WIDTH:
            name = _cut(name, _NAME_WIDTH - _cells(self._ellipsis)) + self._ellipsis
        return name

    def _node_line(self, desc: Descriptor, how: str) -> list[Segment]:
        verb = _VERBS.get(how, how.capitalize())
        return [(self._clean(f"{verb:<8}{desc.short} {label_of(desc)}"), "")]

    def _bar(self, done: int, total: int, style: str) -> list[Segment]:
        filled = _BAR_WIDTH if total <= 0 else max(0, min(_BAR_WIDTH, _BAR_WIDTH * done // total))
        return [
            (self._bar_done * filled, style),
            (self._bar_todo * (_BAR_WIDTH - filled), _DIM),
        ]

    def _rate(self, now: float) -> float | None:
        samples = self._samples
        samples.append((now, self.bytes))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW:
            samples.popleft()
        then, read = samples[0]
        if now - then <= 0:
            return None
        return max(0.0, (self.bytes - read) / (now - then))

    def _live_lines(self, now: float, usable: int, height: int) -> list[list[Segment]]:
        """The live area: the totals, then the blobs in flight (each fits ``usable`` columns)."""
        rate = self._rate(now)
        head: list[Segment] = [(f"total  {self.blobs} blobs  {self.manifests} manifests", "")]
        tail: list[Segment] = []
        bar: list[Segment] = []
        if self._expected > 0:
            complete = self.bytes >= self._expected
            bar = self._bar(self.bytes, self._expected, _GREEN if complete else _MAGENTA)
            tail.append((" " + human_size_pair(self.bytes, self._expected), _GREEN))
        else:
            tail.append((" " + human_size(self.bytes), _GREEN))
        tail.append((" " + human_rate(int(rate)) if rate is not None else " ?/s", _RED))
        if self._expected > 0:
            left = max(0, self._expected - self.bytes)
            tail.append((" " + (_clock_time(left / rate) if rate else "-:--:--"), _CYAN))
        lines = [self._with_bar(head, bar, tail, usable)]

        room = max(0, height - 2)  # rows for bars: the terminal less the total and the cursor row
        blobs = list(self._inflight.values())
        shown = min(len(blobs), self.max_bars, room)
        if shown < len(blobs) and shown == room and room > 0:
            shown -= 1  # keep a row for the summary
        for blob in blobs[:shown]:
            size = blob.desc.size
            label = f"{blob.desc.short} {blob.name}"
            pad = " " * max(0, 13 + _NAME_WIDTH - _cells(label))
            percent = 100 if size <= 0 else max(0, min(100, 100 * blob.done // size))
            lines.append(
                self._with_bar(
                    [("  " + label + pad, "")],
                    self._bar(blob.done, size, _MAGENTA),
                    [(f" {human_size_pair(blob.done, size)} {percent:3d}%", "")],
                    usable,
                )
            )
        if shown < len(blobs) and room > 0:
            more = len(blobs) - shown
            lines.append([(f"  {self._ellipsis} and {more} more in flight", _DIM)])
        return lines

    @staticmethod
    def _with_bar(
        head: list[Segment], bar: list[Segment], tail: list[Segment], usable: int
    ) -> list[Segment]:
        """``head``, ``bar`` and ``tail``; without the bar if that does not fit."""
        if bar:
            line = [*head, ("  ", ""), *bar, *tail]
            if sum(_cells(text) for text, _ in line) <= usable:
                return line
        return [*head, *tail]

    # -- drawing -------------------------------------------------------------

    def _terminal_size(self) -> tuple[int, int]:
        width, height = self._width, self._height
        if width is None or height is None:
            try:
                size = os.get_terminal_size(self.stream.fileno())
            except Exception:
                size = shutil.get_terminal_size()
            env_columns = os.environ.get("COLUMNS", "")
            env_lines = os.environ.get("LINES", "")
            if width is None:
                width = int(env_columns) if env_columns.isdigit() else size.columns
            if height is None:
                height = int(env_lines) if env_lines.isdigit() else size.lines
            # A pseudo-terminal nobody gave a size (``script``, ``docker run -t``
            # in some set-ups) reports 0 x 0: draw for 80 x 24 then.
            if width <= 0:
                width = _FALLBACK_SIZE[0]
            if height <= 0:
                height = _FALLBACK_SIZE[1]
        return max(1, width), max(1, height)

    def _style(self, text: str, style: str) -> str:
        if style and self.color and text:
            return f"\x1b[{style}m{text}\x1b[0m"
        return text

    def _fit(self, segments: Iterable[Segment], width: int) -> str:
        """One row: ``segments`` cut to ``width`` columns."""
        out = []
        used = 0
        for text, style in segments:
            cells = _cells(text)
            if used + cells > width:
                out.append(self._style(_cut(text, width - used), style))
                break
            out.append(self._style(text, style))
            used += cells
        return "".join(out)

    def _rows(self, segments: list[Segment], width: int) -> list[str]:
        """A scrolled line folded into rows of at most the usable width, each ending the line."""
        usable = max(1, width - 1)  # the last column would make some terminals wrap
        if sum(_cells(text) for text, _ in segments) <= usable:
            return [self._fit(segments, usable) + _CLEAR_LINE_END + "\n"]
        indent = " " * _INDENT if usable > 2 * _INDENT else ""
        rows: list[str] = []
        row: list[str] = []
        used = 0
        for text, style in segments:
            piece: list[str] = []
            for ch in text:
                cells = _cells(ch)
                if cells > usable:  # a wide character in a one-column terminal
                    ch, cells = "?", 1
                if used + cells > usable and used > len(indent):
                    row.append(self._style("".join(piece), style))
                    rows.append("".join(row) + _CLEAR_LINE_END + "\n")
                    row, piece, used = [indent], [], len(indent)
                piece.append(ch)
                used += cells
            row.append(self._style("".join(piece), style))
        rows.append("".join(row) + _CLEAR_LINE_END + "\n")
        return rows

    def _erase(self) -> str:
        """Go back to the top of the live area and clear it."""
        if self._drawn:
            return f"\r\x1b[{self._drawn}A{_CLEAR_SCREEN_END}"
        return "\r" + _CLEAR_SCREEN_END

    def _draw(self, now: float) -> None:
        width, height = self._terminal_size()
        out = [f"\r\x1b[{self._drawn}A" if self._drawn else "\r"]
        for segments in self._pending:
            out.extend(self._rows(segments, width))
        self._pending.clear()
        usable = max(1, width - 1)
        lines = self._live_lines(now, usable, height)
        out.extend(self._fit(line, usable) + _CLEAR_LINE_END + "\n" for line in lines)
        out.append(_CLEAR_SCREEN_END)
        self._drawn = len(lines)
        self._last_draw = now
        self._dirty = False
        self.redraws += 1
        self._write("".join(out))

    def _changed(self) -> None:
        """Something changed: redraw unless the last redraw is too recent."""
        if not self._active:
            return
        self._dirty = True
        now = self._clock()
        if now - self._last_draw >= self._interval:
            self._draw(now)

    def _scroll(self, segments: list[Segment]) -> None:
        """Print a finished line above the live area (at the next redraw)."""
        if self._active:
            self._pending.append(segments)
            self._changed()
        elif not self._broken:
            self._write("".join(text for text, _ in segments) + "\n")

    def _tick(self) -> None:
        """Draw what observer calls left to draw, and refresh rate and ETA now and then."""
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception), self._lock:
                if not self._active:
                    return
                now = self._clock()
                idle = now - self._last_draw
                if (self._dirty and idle >= self._interval) or (
                    self._inflight and idle >= _IDLE_REDRAW
                ):
                    self._draw(now)

    def _write(self, text: str) -> None:
        if self._broken:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            self._broken = True
            self._active = False
