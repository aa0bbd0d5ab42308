"""Byte counts for humans: one binary formatting for the progress display and the summaries."""

from __future__ import annotations

import pytest

from replicator.cli import output
from replicator.observe import units
from replicator.observe.units import human_rate, human_size, human_size_pair


def test_the_summary_and_the_progress_display_share_one_formatter() -> None:
    assert output.human_size is units.human_size
    assert output.human_rate is units.human_rate


@pytest.mark.parametrize(
    ("done", "total", "text"),
    [
        (0, 0, "0/0 B"),
        (50, 100, "50/100 B"),
        (1023, 1023, "1023/1023 B"),
        (512, 1536, "0.50/1.50 KiB"),
        (3 * 1024**2 // 2, 3 * 1024**2, "1.50/3.00 MiB"),
        (0, 123 * 1024**2, "0.0/123.0 MiB"),
        (5 * 1024**3, 5 * 1024**3, "5.00/5.00 GiB"),
    ],
)
def test_human_size_pair_uses_the_unit_and_precision_of_the_total(
    done: int, total: int, text: str
) -> None:
    assert human_size_pair(done, total) == text


def test_pair_total_reads_like_human_size() -> None:
    for total in (1536, 3 * 1024**2, 123 * 1024**2, 5 * 1024**3):
        assert human_size_pair(total, total).split("/")[1] == human_size(total)


def test_rate_and_negative_sizes() -> None:
    assert human_rate(13 * 1024**2) == "13.00 MiB/s"
    assert human_rate(0) == "0 B/s"
    assert human_size(-1536) == "-1.50 KiB"
    assert human_size(1500, binary=False) == "1.50 kB"
