"""Watch mode's pure logic: when a job ticks, and how a failing job backs off."""

from __future__ import annotations

import datetime
import os
import time

import pytest

from replicator.sync.schedule import (
    BACKOFF_BASE,
    DEFAULT_INTERVAL,
    Schedule,
    backoff_delay,
    retry_time,
)

T0 = 1_700_000_000.0  # a fixed anchor


def test_an_interval_ticks_on_a_grid_anchored_at_the_start() -> None:
    s = Schedule.of(cron=None, interval=datetime.timedelta(seconds=30), anchor=T0)
    assert s.next_tick(T0 - 5) == T0
    assert s.next_tick(T0) == T0 + 30  # strictly after
    assert s.next_tick(T0 + 0.5) == T0 + 30
    assert s.next_tick(T0 + 30) == T0 + 60
    assert s.next_tick(T0 + 95) == T0 + 120  # a long run does not shift the grid
    assert s.period(T0 + 1000) == 30


def test_ticks_computed_from_ticks_never_repeat_despite_rounding() -> None:
    s = Schedule.of(cron=None, interval=datetime.timedelta(seconds=0.1 * 3 + 1), anchor=0.1)
    tick, seen = s.anchor, []
    for _ in range(1000):
        nxt = s.next_tick(tick)
        assert nxt > tick
        seen.append(nxt - tick)
        tick = nxt
    assert max(seen) < 1.31 * 1.01


def test_a_job_with_neither_schedule_nor_interval_gets_the_default() -> None:
    s = Schedule.of(cron=None, interval=None, anchor=T0)
    assert s.interval == DEFAULT_INTERVAL == 600.0
    assert s.next_tick(T0) == T0 + 600
    assert s.describe() == "every 600s"


@pytest.fixture
def utc() -> object:
    """Cron schedules use the process's local time zone: pin it to UTC for the test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield None
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp()


def test_a_cron_schedule_ticks_when_the_expression_matches(utc: object) -> None:
    s = Schedule.of(cron="*/15 * * * *", interval=None, anchor=T0)
    assert s.next_tick(_at("2025-03-01T10:07:00")) == _at("2025-03-01T10:15:00")
    assert s.next_tick(_at("2025-03-01T10:15:00")) == _at("2025-03-01T10:30:00")  # strictly after
    assert s.period(_at("2025-03-01T10:07:00")) == 15 * 60
    daily = Schedule.of(cron="@daily", interval=None, anchor=T0)
    assert daily.next_tick(_at("2025-03-01T10:07:00")) == _at("2025-03-02T00:00:00")
    assert daily.describe() == "cron '@daily'"


def test_ticks_between_counts_the_ticks_a_long_run_missed() -> None:
    s = Schedule.of(cron=None, interval=datetime.timedelta(seconds=10), anchor=T0)
    assert s.ticks_between(T0, T0 + 35) == 3  # T0+10, +20, +30
    assert s.ticks_between(T0, T0 + 5) == 0


def test_backoff_doubles_from_its_base_and_is_capped() -> None:
    assert backoff_delay(0, 600) == 0
    assert [backoff_delay(n, 600) for n in (1, 2, 3, 4)] == [
        BACKOFF_BASE,
        2 * BACKOFF_BASE,
        4 * BACKOFF_BASE,
        8 * BACKOFF_BASE,
    ]
    assert backoff_delay(30, 600) == 600
    assert backoff_delay(10_000, 600) == 600  # no overflow
    assert backoff_delay(3, 7) == 7


def test_a_failed_job_is_retried_after_the_backoff_or_at_its_next_tick_if_sooner() -> None:
    s = Schedule.of(cron=None, interval=datetime.timedelta(minutes=10), anchor=T0)
    failed_at = T0 + 60
    assert retry_time(s, 1, failed_at) == failed_at + BACKOFF_BASE
    assert retry_time(s, 3, failed_at) == failed_at + 4 * BACKOFF_BASE
    # Many failures: never later than the next tick (the backoff is capped at the period).
    assert retry_time(s, 40, failed_at) == T0 + 600
    # Near the next tick, the tick comes first.
    assert retry_time(s, 2, T0 + 598) == T0 + 600
    # A success (0 failures) waits for the next tick.
    assert retry_time(s, 0, failed_at) == T0 + 600
