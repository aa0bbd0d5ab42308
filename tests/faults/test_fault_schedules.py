"""Randomized fault schedules over graph copies and sync runs (docs/RELIABILITY.md).

Each seed draws a schedule (:mod:`tests.faults.schedule`): the graph at the
source, the command (``copy -r``, ``copy -r --all-tags``, ``sync``), the
destination (a registry or an OCI layout), the authentication (none, Basic,
token), the chunk size, and one to four faults with their timing.
:func:`tests.faults.runner.run_schedule` carries it out against real
registries behind fault proxies and checks the outcome: the run completes with
source == destination, or fails with one clear error and a journal from which
a clean rerun completes; never a destination tag on an incomplete or corrupt
graph, never a traceback, never a secret in stdout, stderr or the journal.

A handful of seeds run in the default suite; :data:`SLOW_SEEDS` (60) behind
the ``slow`` marker.  One seed again::

    REPLICATOR_FAULT_SEED=1234 bash scripts/test-slow.sh -k fault_schedule

(``REPLICATOR_FAULT_SEED`` takes ``N``, ``N,M,...`` or ``N-M``.)
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.conftest import record
from tests.faults.runner import Outcome, ProxyFactory, Stack, run_schedule
from tests.faults.schedule import (
    COMMANDS,
    DESTINATIONS,
    FAULT_WEIGHTS,
    GRAPH_KINDS,
    SOURCES,
    draw,
)

SEED_ENV = "REPLICATOR_FAULT_SEED"
#: Run by the default suite: a spread of commands, destinations and faults, each
#: firing (copy -r into a layout failing then rerun; sync into layouts across a
#: source restart; --all-tags through redirects, flipped upload bytes, and links
#: that break mid-upload after the registry got the bytes; sync over token auth
#: on a slow link).  Also in SLOW_SEEDS: the slow suite runs them again.
DEFAULT_SEEDS: tuple[int, ...] = (1058, 1044, 1008, 1021, 1030)
#: Run behind the ``slow`` marker.
SLOW_SEEDS: tuple[int, ...] = tuple(range(1000, 1060))
#: Product bugs found and not fixed yet: (command or None, what a finding says, the bug).
#: A run whose every finding is one of these is an expected failure (``xfail``)
#: naming the bug; each has a minimal ``xfail(strict=True)`` test of its own.
KNOWN_BUGS: tuple[tuple[str | None, str, str], ...] = ()
# Fixed: seeds 1013, 1045, 1053 (a sync job's listing error escaping as an
# ExceptionGroup, tests/faults/test_sync_listing_failure.py).


def known_bug(outcome: Outcome) -> str | None:
    """The known bug explaining every finding of ``outcome``, if one does."""
    reasons = set()
    for finding in outcome.findings:
        reason = next(
            (
                why
                for command, text, why in KNOWN_BUGS
                if text in finding and command in (None, outcome.schedule.command)
            ),
            None,
        )
        if reason is None:
            return None
        reasons.add(reason)
    return "; ".join(sorted(reasons)) or None


def seeds_from_env(default: tuple[int, ...]) -> tuple[int, ...]:
    """``$REPLICATOR_FAULT_SEED`` (``N``, ``N,M``, ``N-M``) or ``default``."""
    text = os.environ.get(SEED_ENV, "").strip()
    if not text:
        return default
    out: list[int] = []
    for part in text.split(","):
        if "-" in part.strip()[1:]:
            low, high = part.split("-", 1)
            out += range(int(low), int(high) + 1)
        elif part.strip():
            out.append(int(part))
    return tuple(out)


def _params(seeds: tuple[int, ...]) -> list[object]:
    return [pytest.param(seed, id=f"seed-{seed}") for seed in seeds]


def _check(
    seed: int,
    stack: Stack,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    outcomes: list[Outcome],
    kind: str,
) -> None:
    schedule = draw(seed)
    outcome = run_schedule(schedule, stack, fault_proxy, tmp_path)
    outcome.known_bug = known_bug(outcome)
    record(outcomes, outcome, kind)
    print(outcome.report())
    if outcome.known_bug is not None:
        pytest.xfail(f"seed {seed}: known product bug: {outcome.known_bug}")
    assert not outcome.findings, outcome.report()


@pytest.mark.parametrize("seed", _params(seeds_from_env(DEFAULT_SEEDS)))
def test_fault_schedule_quick(
    seed: int,
    fault_stack: Stack,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    fault_outcomes: list[Outcome],
) -> None:
    _check(seed, fault_stack, fault_proxy, tmp_path, fault_outcomes, "default")


@pytest.mark.slow
@pytest.mark.parametrize("seed", _params(seeds_from_env(SLOW_SEEDS)))
def test_fault_schedule(
    seed: int,
    fault_stack: Stack,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    fault_outcomes: list[Outcome],
) -> None:
    _check(seed, fault_stack, fault_proxy, tmp_path, fault_outcomes, "slow")


def test_a_seed_always_draws_the_same_schedule() -> None:
    for seed in (*DEFAULT_SEEDS, *SLOW_SEEDS[:10]):
        assert draw(seed) == draw(seed)
        assert draw(seed).describe() == draw(seed).describe()
    assert draw(1) != draw(2)


def test_the_slow_seeds_cover_every_command_destination_graph_and_fault() -> None:
    schedules = [draw(seed) for seed in SLOW_SEEDS]
    assert len(schedules) >= 50
    assert {s.command for s in schedules} == set(COMMANDS)
    assert {s.source for s in schedules} == set(SOURCES)
    assert {s.destination for s in schedules} == set(DESTINATIONS)
    assert {g for s in schedules for g in s.graphs} == set(GRAPH_KINDS)
    kinds = Counter(f.kind for s in schedules for f in s.faults)
    assert set(kinds) == set(FAULT_WEIGHTS), kinds
    assert any(s.chunk_size for s in schedules) and any(not s.chunk_size for s in schedules)
    assert all(1 <= len(s.faults) <= 4 for s in schedules)
    assert any(f.times is None for s in schedules for f in s.faults)  # persistent faults
    assert any(s.sync_env_credentials for s in schedules)


def test_seed_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SEED_ENV, "1234")
    assert seeds_from_env((1,)) == (1234,)
    monkeypatch.setenv(SEED_ENV, "5,7, 9")
    assert seeds_from_env((1,)) == (5, 7, 9)
    monkeypatch.setenv(SEED_ENV, "10-13")
    assert seeds_from_env((1,)) == (10, 11, 12, 13)
    monkeypatch.delenv(SEED_ENV)
    assert seeds_from_env((1,)) == (1,)
