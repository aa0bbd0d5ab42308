"""``journal gc`` keeps every run a rerun would resume.

docs/RESUME.md: a rerun continues the newest run of its key unless that run is
``done`` — whether it is ``running`` (killed), ``interrupted`` or ``failed``.
gc therefore removes, by default, only runs no rerun can reach: ``done`` runs
and runs superseded by a newer run of the same key (those abandoned by
``--fresh`` among them).  ``--include-unfinished`` removes the resumable ones
too.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from replicator.journal.store import DONE, FAILED, INTERRUPTED, Journal
from tests.integration.cli_helpers import run_cli


def _build(path: Path) -> dict[str, str]:
    """A journal holding one run of each kind; their ids by role."""

    async def go() -> dict[str, str]:
        j = await Journal.open(path)
        ids: dict[str, str] = {}
        ids["done"], _ = j.begin_run("k-done", {"argv": ["copy", "a", "b"]})
        j.finish_run(ids["done"], DONE)
        ids["failed"], _ = j.begin_run("k-failed", {"argv": ["copy", "c", "d"]})
        j.finish_run(ids["failed"], FAILED, error="destination: 503")
        ids["interrupted"], _ = j.begin_run("k-int", {"argv": ["copy", "e", "f"]})
        j.finish_run(ids["interrupted"], INTERRUPTED)
        ids["running"], _ = j.begin_run("k-run", {"argv": ["copy", "g", "h"]})
        # --fresh abandons an unfinished run: it is marked failed and never resumed.
        ids["abandoned"], _ = j.begin_run("k-fresh", {"argv": ["copy", "i", "j"]})
        await j.flush()
        ids["fresh"], _ = j.begin_run("k-fresh", {"argv": ["copy", "i", "j"]}, fresh=True)
        # A failed run followed by a successful one of the same key: nothing resumes it.
        ids["failed_then_done"], _ = j.begin_run("k-redo", {"argv": ["copy", "k", "l"]})
        j.finish_run(ids["failed_then_done"], FAILED, error="source: 500")
        await j.flush()
        ids["redone"], _ = j.begin_run("k-redo", {"argv": ["copy", "k", "l"]}, fresh=True)
        j.finish_run(ids["redone"], DONE)
        await j.close()
        return ids

    return anyio.run(go)


def _states(path: Path) -> dict[str, str]:
    async def go() -> dict[str, str]:
        j = await Journal.open(path)
        try:
            return {r.id: r.state for r in j.runs()}
        finally:
            await j.close()

    return anyio.run(go)


def test_gc_keeps_the_runs_a_rerun_resumes(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    ids = _build(path)

    async def go() -> tuple[int, bool, str]:
        j = await Journal.open(path)
        removed = j.gc(older_than=-1)
        await j.flush()
        # The failed run is still the one the same command continues.
        again, resumed = j.begin_run("k-failed", {"argv": ["copy", "c", "d"]})
        await j.close()
        return removed, resumed, again

    removed, resumed, again = anyio.run(go)
    left = _states(path)
    assert set(left) == {ids["failed"], ids["interrupted"], ids["running"], ids["fresh"]}
    assert removed == 4  # done, abandoned by --fresh, failed-then-redone, redone
    assert resumed and again == ids["failed"]


def test_gc_with_unfinished_removes_every_old_run(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _build(path)

    async def go() -> int:
        j = await Journal.open(path)
        removed = j.gc(older_than=-1, keep_unfinished=False)
        await j.close()
        return removed

    assert anyio.run(go) == 8
    assert _states(path) == {}


def test_gc_keeps_recent_runs_whatever_their_state(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    ids = _build(path)

    async def go() -> int:
        j = await Journal.open(path)
        removed = j.gc(older_than=3600, keep_unfinished=False)
        await j.close()
        return removed

    assert anyio.run(go) == 0
    assert set(_states(path)) == set(ids.values())


def test_journal_gc_command_keeps_a_failed_run_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    ids = _build(path)
    home = tmp_path / "home"
    pruned = run_cli("journal", "--journal", str(path), "gc", "--older-than", "0s", home=home)
    assert pruned.code == 0, pruned.stderr
    assert f"Removed 4 run(s) from {path}" in pruned.stdout
    assert "Kept 4 unfinished run(s) that a rerun resumes" in pruned.stdout
    assert ids["failed"] in _states(path)
    everything = run_cli(
        "journal",
        "--journal",
        str(path),
        "gc",
        "--older-than",
        "0s",
        "--include-unfinished",
        home=home,
    )
    assert everything.code == 0, everything.stderr
    assert f"Removed 4 run(s) from {path}" in everything.stdout
    assert "Kept" not in everything.stdout
    assert _states(path) == {}
