"""The live progress display: ORAS-like lines above a bounded, transient live area."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
import unicodedata

import pytest
import structlog

from replicator.engine.events import LogObserver
from replicator.observe.logging import configure_logging
from replicator.observe.progress import TerminalProgress
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor

_CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
_SGR = re.compile(r"\x1b\[[0-9;]*m")


class FakeTTY(io.StringIO):
    """An in-memory stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _cells(text: str) -> int:
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


class Screen:
    """Just enough of a terminal to replay the display: text, CR, LF, CUU, EL, ED.

    A row is a list of cells (a wide character is followed by an empty cell);
    ``overflow`` records writes past the last column (where a terminal would wrap).
    """

    def __init__(self, width: int = 1000) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.overflow: list[str] = []

    def feed(self, data: str) -> Screen:
        pos = 0
        while pos < len(data):
            m = _CSI.match(data, pos)
            if m:
                self._csi(m.group(1), m.group(2))
                pos = m.end()
                continue
            ch = data[pos]
            pos += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":  # a tty in cooked mode maps LF to CR LF
                self.row += 1
                self.col = 0
                while len(self.rows) <= self.row:
                    self.rows.append([])
            else:
                assert ch >= " ", f"control character {ch!r} sent to the terminal"
                cells = [ch] + [""] * (_cells(ch) - 1)
                row = self.rows[self.row]
                row.extend([" "] * (self.col + len(cells) - len(row)))
                row[self.col : self.col + len(cells)] = cells
                self.col += len(cells)
                if self.col > self.width:
                    self.overflow.append("".join(row))
        return self

    def _csi(self, params: str, final: str) -> None:
        if final == "A":
            self.row = max(0, self.row - int(params or "1"))
        elif final == "K":
            del self.rows[self.row][self.col :]
        elif final == "J":
            del self.rows[self.row][self.col :]
            del self.rows[self.row + 1 :]
        elif final in "mhl":
            pass
        else:  # pragma: no cover
            raise AssertionError(f"unexpected escape sequence {params}{final}")

    @property
    def text(self) -> list[str]:
        rows = ["".join(r).rstrip() for r in self.rows]
        while rows and not rows[-1]:
            rows.pop()
        return rows


def _blob(i: int, size: int = 100, title: str | None = None) -> Descriptor:
    return Descriptor(
        mt.OCI_LAYER_GZIP,
        "sha256:" + f"{i:x}"[-1] * 64,
        size,
        annotations={"org.opencontainers.image.title": title or f"file{i}.txt"},
    )


_MANIFEST = Descriptor(mt.OCI_MANIFEST, "sha256:" + "f" * 64, 10)


def test_progress_prints_oras_like_lines_on_a_plain_stream() -> None:
    """Not a terminal: only the finished lines, no escape sequences at all."""
    stream = io.StringIO()
    blobs = [_blob(i) for i in range(1, 11)]
    with TerminalProgress(stream, max_bars=3) as progress:
        for b in blobs:
            progress.blob_started(b, 1)
        for b in blobs:
            progress.blob_advanced(b, 100)
            progress.blob_finished(b, "uploaded", "dst")
        progress.manifest_finished(_MANIFEST, "exists", "dst")
        progress.warning("something skipped")
        assert progress._inflight == {}
        assert progress.bytes == 1000 and progress.blobs == 10 and progress.manifests == 1
    text = stream.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "Copied  111111111111 file1.txt"
    assert lines[10] == "Exists  ffffffffffff application/vnd.oci.image.manifest.v1+json"
    assert lines[11] == "Warning something skipped"
    assert len(lines) == 12


def test_scrolled_lines_stay_and_the_live_area_is_cleared_at_exit() -> None:
    stream = FakeTTY()
    clock = FakeClock()
    blobs = [_blob(i) for i in range(1, 11)]
    with TerminalProgress(
        stream, max_bars=3, clock=clock, width=100, height=40, auto_refresh=False
    ) as progress:
        for b in blobs:
            progress.blob_started(b, 1)
        clock.now += 1
        progress.blob_advanced(blobs[0], 50)
        live = Screen(100).feed(stream.getvalue()).text
        assert live[0].startswith("total  0 blobs  0 manifests")
        assert live[0].endswith(" 50/1000 B 50 B/s 0:00:19")
        assert live[1].startswith("  111111111111 file1.txt") and live[1].endswith("50/100 B  50%")
        assert live[2].startswith("  222222222222 file2.txt")
        assert live[3].startswith("  333333333333 file3.txt")
        assert live[4] == "  … and 7 more in flight"
        assert len(live) == 5
        progress.blob_advanced(blobs[0], 50)
        progress.blob_finished(blobs[0], "uploaded", "dst")
        progress.blob_finished(blobs[1], "mounted", "dst")
        progress.blob_finished(blobs[2], "exists", "dst")
        progress.manifest_finished(_MANIFEST, "pushed", "dst")
        clock.now += 1
        progress.blob_advanced(blobs[3], 1)
        live = Screen(100).feed(stream.getvalue()).text
        assert live[:4] == [
            "Copied  111111111111 file1.txt",
            "Mounted 222222222222 file2.txt",
            "Exists  333333333333 file3.txt",
            "Copied  ffffffffffff application/vnd.oci.image.manifest.v1+json",
        ]
        assert live[4].startswith("total  3 blobs  1 manifests")
        assert live[5].startswith("  444444444444 file4.txt")  # the next blob got a bar
        progress.warning("last one")  # queued: the last redraw is too recent
    screen = Screen(100).feed(stream.getvalue())
    assert screen.text == [
        "Copied  111111111111 file1.txt",
        "Mounted 222222222222 file2.txt",
        "Exists  333333333333 file3.txt",
        "Copied  ffffffffffff application/vnd.oci.image.manifest.v1+json",
        "Warning last one",
    ]
    assert (screen.row, screen.col) == (5, 0)  # the cursor is below the last line
    assert stream.getvalue().endswith("\x1b[?25h")  # the cursor is shown again
    assert screen.overflow == []


def test_redraws_are_rate_limited() -> None:
    stream = FakeTTY()
    clock = FakeClock()
    with TerminalProgress(
        stream, clock=clock, width=120, height=40, auto_refresh=False
    ) as progress:
        assert progress.redraws == 1  # drawn once on entry
        for i in range(5000):  # thousands of tiny blobs, all within one interval
            b = _blob(i, size=10)
            progress.blob_started(b, 1)
            progress.blob_advanced(b, 10)
            progress.blob_finished(b, "uploaded", "dst")
        assert progress.redraws == 1
        for i in range(3000):  # 3 seconds of calls, one per millisecond
            clock.now += 0.001
            b = _blob(i, size=10)
            progress.blob_started(b, 1)
            progress.blob_finished(b, "exists", "dst")
        assert 25 <= progress.redraws <= 32
        redraws = progress.redraws
    # every redraw but the first starts by moving up over the live area; so does the exit
    assert len(re.findall(r"\x1b\[\d+A", stream.getvalue())) == redraws
    lines = Screen(120).feed(stream.getvalue()).text
    assert len(lines) == 8000 and lines[-1].startswith("Exists  ")


def test_the_ticker_draws_lines_left_over_by_quiet_observers() -> None:
    stream = FakeTTY()
    with TerminalProgress(stream, width=80, height=20, refresh_per_second=50) as progress:
        progress.blob_started(_blob(1), 1)
        progress.blob_finished(_blob(1), "uploaded", "dst")  # within the interval: queued
        deadline = time.monotonic() + 5
        while "Copied  " not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "Copied  111111111111 file1.txt" in stream.getvalue()
        assert progress._ticker is not None and progress._ticker.is_alive()
        ticker = progress._ticker
    assert not ticker.is_alive()
    assert "replicator-progress" not in [t.name for t in threading.enumerate()]


def test_colours_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    def run() -> str:
        stream = FakeTTY()
        clock = FakeClock()
        with TerminalProgress(stream, clock=clock, width=120, height=40) as progress:
            progress.blob_started(_blob(1, 1000), 1)
            clock.now += 1
            progress.blob_advanced(_blob(1, 1000), 500)
            progress.warning("careful")
        return stream.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert _SGR.search(run())
    monkeypatch.setenv("NO_COLOR", "1")
    text = run()
    assert not _SGR.search(text)
    assert "\x1b[1A" in text  # cursor movement is still used
    assert "Warning careful" in Screen().feed(text).text


@pytest.mark.parametrize("width", [1, 8, 20, 33, 60])
def test_no_line_is_wider_than_a_narrow_terminal(width: int) -> None:
    stream = FakeTTY()
    clock = FakeClock()
    long_title = "a-very-long-file-name-" * 5 + ".tar.gz"
    wide_title = "日本語のファイル名" * 4
    with TerminalProgress(
        stream, max_bars=4, clock=clock, width=width, height=30, auto_refresh=False
    ) as progress:
        blobs = [_blob(1, 10**9, long_title), _blob(2, 5 * 10**6, wide_title), _blob(3)]
        for b in blobs:
            progress.blob_started(b, 2)
        for b in blobs:
            clock.now += 1
            progress.blob_advanced(b, b.size // 3)
        for b in blobs:
            clock.now += 1
            progress.blob_finished(b, "uploaded", "dst")
        progress.warning("x" * 200)
    screen = Screen(width).feed(stream.getvalue())
    assert screen.overflow == []
    for row in _SGR.sub("", stream.getvalue()).split("\n"):
        assert _cells(_CSI.sub("", row).replace("\r", "")) <= width
    if width >= 60:  # scrolled lines are folded, not cut: nothing is lost
        text = "".join(line.strip() for line in screen.text)
        assert long_title in text and wide_title in text and "x" * 200 in text


def test_a_terminal_that_reports_no_size_is_drawn_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pty nobody sized (``script``, some ``docker run -t``) says 0 x 0."""
    import os

    import replicator.observe.progress as progress_module

    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)

    def zero(fd: int = 0) -> os.terminal_size:
        return os.terminal_size((0, 0))

    class SizedTTY(FakeTTY):
        def fileno(self) -> int:
            return 2

    monkeypatch.setattr(progress_module.os, "get_terminal_size", zero)
    stream = SizedTTY()
    with TerminalProgress(stream, max_bars=4, auto_refresh=False) as progress:
        blob = _blob(1, 100, "a-file-name-long-enough-to-fold-at-a-tiny-width.json")
        progress.blob_started(blob, 1)
        progress.blob_finished(blob, "uploaded", "dst")
    screen = Screen(80).feed(stream.getvalue())
    assert screen.overflow == []
    assert any(
        "a-file-name-long-enough-to-fold-at-a-tiny-width.json" in line for line in screen.text
    )


def test_the_live_area_fits_a_short_terminal() -> None:
    stream = FakeTTY()
    with TerminalProgress(stream, max_bars=8, width=100, height=5, auto_refresh=False) as p:
        for i in range(1, 11):
            p.blob_started(_blob(i), 1)
        p._draw(1e9)
        rows = Screen(100).feed(stream.getvalue()).text
        assert len(rows) == 4  # height less one row for the cursor
        assert rows[-1] == "  … and 8 more in flight"


def test_odd_input_and_a_broken_stream_never_raise() -> None:
    stream = FakeTTY()
    clock = FakeClock()
    evil = _blob(1, 0, "evil\x1b[2J\x07name\nnext\r")
    with TerminalProgress(stream, clock=clock, width=80, height=24, auto_refresh=False) as p:
        p.blob_started(evil, 0)
        p.blob_advanced(evil, -5)
        p.blob_advanced(_blob(2), 10)  # never started
        p.blob_started(None, 1)  # type: ignore[arg-type]
        p.blob_advanced(evil, None)  # type: ignore[arg-type]
        p.blob_finished(evil, "", "dst")
        p.manifest_finished(_MANIFEST, "teleported", "dst")
        p.warning(None)  # type: ignore[arg-type]
        p.warning("multi\nline\x1b]0;title\x07")
        clock.now += 1
        p.blob_started(_blob(3), 1)
    text = stream.getvalue()
    assert "\x1b[2J" not in text and "\x07" not in text and "\x1b]" not in text
    rows = Screen(80).feed(text).text  # asserts no control character reaches the terminal
    assert "        111111111111 evil?[2J?name next" in rows
    assert "Teleportedffffffffffff application/vnd.oci.image.manifest.v1+json" in rows
    assert "Warning multi line?]0;title?" in rows

    class Broken(FakeTTY):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    with TerminalProgress(Broken(), clock=clock, auto_refresh=False) as p:
        p.blob_started(_blob(1), 1)
        clock.now += 1
        p.blob_advanced(_blob(1), 10)
        p.blob_finished(_blob(1), "uploaded", "dst")
        p.warning("w")
    assert p.blobs == 1
    with TerminalProgress(Broken(), live=False) as p:
        p.blob_finished(_blob(1), "uploaded", "dst")


def _json_lines(debug: bool) -> list[dict[str, object]]:
    stream = io.StringIO()
    configure_logging(debug=debug, fmt="json", stream=stream)
    try:
        observer = LogObserver()
        blob = Descriptor(
            mt.OCI_LAYER_GZIP,
            "sha256:" + "1" * 64,
            100,
            annotations={"org.opencontainers.image.title": "file1.txt"},
        )
        observer.blob_started(blob, 1)
        observer.blob_advanced(blob, 100)
        observer.blob_finished(blob, "uploaded", "r.example/x")
        observer.manifest_finished(
            Descriptor(mt.OCI_MANIFEST, "sha256:" + "f" * 64, 10), "exists", "r.example/x"
        )
        observer.warning("something skipped")
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "stream", None) is stream:
                root.removeHandler(handler)
        structlog.reset_defaults()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_observer_writes_one_line_per_node_and_the_start_only_with_debug() -> None:
    lines = _json_lines(debug=False)
    assert [line["event"] for line in lines] == [
        "engine.blob_copied",
        "engine.manifest_present",
        "engine.warning",
    ]
    assert lines[0] | {"timestamp": ""} == {
        "digest": "111111111111",
        "name": "file1.txt",
        "size": 100,
        "destination": "r.example/x",
        "event": "engine.blob_copied",
        "level": "info",
        "logger": "replicator.engine",
        "timestamp": "",
    }
    debug = _json_lines(debug=True)
    assert [line["event"] for line in debug] == [
        "engine.blob_started",
        "engine.blob_copied",
        "engine.manifest_present",
        "engine.warning",
    ]
    assert debug[0]["size"] == 100 and debug[0]["to"] == 1


def test_live_sizes_and_rates_use_the_binary_units_of_the_summary() -> None:
    """The live area speaks KiB/MiB like ``human_size`` in the copy summary, never kB/MB."""
    from replicator.cli.output import human_size

    stream = FakeTTY()
    clock = FakeClock()
    big = _blob(1, size=3 * 1024 * 1024, title="big.bin")
    small = _blob(2, size=1536, title="small.bin")
    with TerminalProgress(
        stream, max_bars=3, clock=clock, width=120, height=40, auto_refresh=False
    ) as progress:
        progress.blob_started(big, 1)
        progress.blob_started(small, 1)
        clock.now += 1
        progress.blob_advanced(big, 1024 * 1024 + 512 * 1024)
        live = Screen(120).feed(stream.getvalue()).text
        total = 3 * 1024 * 1024 + 1536
        assert live[0].endswith(" 1.50/3.00 MiB 1.50 MiB/s 0:00:01"), live[0]
        assert live[1].endswith(" 1.50/3.00 MiB  50%"), live[1]
        assert live[2].endswith(" 0.00/1.50 KiB   0%"), live[2]
        assert human_size(total) == "3.00 MiB"
        assert human_size(1024 * 1024 + 512 * 1024) + "/s" in live[0]
    assert not re.search(r"\b(kB|MB|GB|bytes)\b", stream.getvalue())
