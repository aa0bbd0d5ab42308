"""Fixtures of the fault suite: private registries shared by the randomized runs, and
the suite's summary at the end of the session.

``fault_stack``: one registry of each variant (open, basic, token, referrers),
started once per session in a private directory — the randomized schedules
restart them at will, so they are not the session registries other tests use.

``fault_outcomes``: where each randomized run records its
:class:`~tests.faults.runner.Outcome`; the terminal summary then prints one
line per run and the totals (runs, completed at once, failed then completed by
a clean rerun, runs with findings and their seeds).  With
``$REPLICATOR_FAULT_REPORT`` set, the outcomes are also appended to that file
as JSON lines (docs/RELIABILITY.md is written from such files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.runner import Outcome, Stack
from tests.infra.registry import RunningRegistry, registry_binary, start_registry

_OUTCOMES = pytest.StashKey[list[Outcome]]()
REPORT_ENV = "REPLICATOR_FAULT_REPORT"


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Private registries of every variant for the randomized runs (see the module doc)."""
    try:
        registry_binary()
    except Exception as exc:
        pytest.fail(str(exc), pytrace=False)
    base = tmp_path_factory.mktemp("fault-stack")
    running: dict[str, RunningRegistry] = {}
    try:
        for variant in ("open", "basic", "token", "referrers"):
            running[variant] = start_registry(variant, base / variant)
        yield Stack(running)
    finally:
        for r in running.values():
            r.stop()


@pytest.fixture
def fault_outcomes(pytestconfig: pytest.Config) -> list[Outcome]:
    """The session's list of randomized outcomes (append yours)."""
    if _OUTCOMES not in pytestconfig.stash:
        pytestconfig.stash[_OUTCOMES] = []
    return pytestconfig.stash[_OUTCOMES]


def record(outcomes: list[Outcome], outcome: Outcome, kind: str) -> None:
    """Add ``outcome`` to the session's list and to ``$REPLICATOR_FAULT_REPORT``."""
    outcomes.append(outcome)
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    s = outcome.schedule
    line = {
        "suite": kind,
        "seed": s.seed,
        "command": s.command,
        "source": s.source,
        "destination": s.destination,
        "chunk_size": s.chunk_size,
        "graphs": list(s.graphs),
        "faults": [f.describe() for f in s.faults],
        "fault_kinds": [f.kind for f in s.faults],
        "fired": outcome.fired,
        "first_code": outcome.first_code,
        "first_error": outcome.first_error,
        "rerun_code": outcome.rerun_code,
        "seconds": round(outcome.seconds, 1),
        "leftover_sessions": outcome.leftover_sessions,
        "status": outcome.status,
        "findings": outcome.findings,
        "known_bug": outcome.known_bug,
    }
    with Path(path).open("a") as fh:
        fh.write(json.dumps(line) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per randomized run, then the totals."""
    outcomes = terminalreporter.config.stash.get(_OUTCOMES, [])
    if not outcomes:
        return
    tr = terminalreporter
    tr.section("randomized fault runs")
    for o in outcomes:
        s = o.schedule
        kinds = "+".join(f.kind for f in s.faults)
        tr.write_line(
            f"seed {s.seed:>5} {s.command:<13} {s.source:>9}->{s.destination:<9} "
            f"{kinds:<40} exit {o.first_code:>3}"
            + (f" rerun {o.rerun_code}" if o.rerun_code is not None else "        ")
            + f" {o.seconds:6.1f}s {o.status}"
        )
    completed = sum(1 for o in outcomes if o.status == "completed")
    rerun = sum(1 for o in outcomes if o.status == "failed, rerun completed")
    known = [o.schedule.seed for o in outcomes if o.status == "known bug"]
    bad = [o.schedule.seed for o in outcomes if o.status == "FINDINGS"]
    tr.write_line(
        f"{len(outcomes)} runs: {completed} completed, {rerun} failed then completed "
        f"on a clean rerun, {len(known)} hit a known product bug"
        + (f" (seeds {', '.join(map(str, known))})" if known else "")
        + f", {len(bad)} with new findings"
        + (f" (seeds {', '.join(map(str, bad))})" if bad else "")
    )
