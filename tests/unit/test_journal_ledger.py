"""JournalLedger: the engine's ledger seam made durable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio

from replicator.engine.ledger import Confirmation, Ledger
from replicator.journal.ledger import JournalLedger
from replicator.journal.store import Journal
from replicator.targets.base import UploadProgress

LOC = "reg.example:5000"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_a_killed_run_resumes_with_what_its_destinations_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def first() -> str:
        j = await Journal.open(path)
        run_id, _ = j.begin_run("key", {"argv": ["copy"]})
        ledger = JournalLedger(j, run_id)
        assert isinstance(ledger, Ledger)
        await ledger.record(Confirmation("blob", "uploaded", LOC, "app", D1, 10))
        await ledger.record(Confirmation("manifest", "pushed", LOC, "app", D2, 5))
        await ledger.record(Confirmation("tag", "tagged", LOC, "app", D2, tag="v1"))
        await ledger.record_progress(LOC, UploadProgress("app", D2, "/up/1?_state=a", 0))
        await ledger.record_progress(LOC, UploadProgress("app", D2, "/up/1?_state=b", 4096))
        await j.close()  # what a SIGKILL after the writer's last commit leaves
        return run_id

    async def second(first_id: str) -> None:
        j = await Journal.open(path)
        run_id, resumed = j.begin_run("key", {"argv": ["copy"]})
        assert resumed and run_id == first_id
        ledger = JournalLedger(j, run_id)
        assert ledger.resumed_entries == 3
        assert await ledger.lookup(LOC, "app", D1) is not None
        assert await ledger.lookup(LOC, "app", D2) is not None
        assert await ledger.tagged(LOC, "app", "v1") == D2
        progress = await ledger.upload_progress(LOC, "app", D2)
        assert progress is not None and progress.offset == 4096
        assert progress.location == "/up/1?_state=b"
        await j.close()

    run_id = anyio.run(first)
    anyio.run(second, run_id)


def test_the_blob_cache_spans_runs_and_forget_drops_a_lost_blob(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def go() -> None:
        j = await Journal.open(path)
        one, _ = j.begin_run("k1", {})
        a = JournalLedger(j, one)
        await a.record(Confirmation("blob", "uploaded", LOC, "app", D1, 10))
        j.finish_run(one, "done")
        await j.flush()
        two, resumed = j.begin_run("k2", {})
        assert not resumed
        b = JournalLedger(j, two)
        # Another run: the blob is a mount candidate and, in that repository, known.
        assert await b.locate(LOC, D1) == ["app"]
        assert await b.lookup(LOC, "app", D1) is not None
        assert await b.lookup(LOC, "other", D1) is None
        await b.record(Confirmation("blob", "mounted", LOC, "other", D1, 10))
        assert await b.locate(LOC, D1) == ["other", "app"]
        # The destination lost it in "app": forgotten in memory and in the journal.
        await b.forget(LOC, "app", D1)
        assert await b.lookup(LOC, "app", D1) is None
        assert await b.locate(LOC, D1) == ["other"]
        await j.flush()
        assert j.mount_candidates(LOC, D1) == ["other"]
        await j.close()

    anyio.run(go)


def test_a_new_upload_session_is_on_disk_before_the_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def go() -> None:
        j = await Journal.open(path)
        run_id, _ = j.begin_run("k", {})
        ledger = JournalLedger(j, run_id)
        await ledger.record_progress(LOC, UploadProgress("app", D1, "/up/9?_state=x", 0))
        # Read through a separate connection, as the next process would.
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT upload_url, offset FROM uploads").fetchall()
        finally:
            conn.close()
        assert rows == [("/up/9?_state=x", 0)]
        await j.close()

    anyio.run(go)


def test_a_one_request_upload_session_lands_with_the_next_group_commit(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    def on_disk() -> list[tuple[str, int]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("SELECT upload_url, offset FROM uploads").fetchall()
        finally:
            conn.close()

    async def go() -> None:
        j = await Journal.open(path)
        run_id, _ = j.begin_run("k", {})
        ledger = JournalLedger(j, run_id)
        await ledger.record_progress(
            LOC, UploadProgress("app", D1, "/up/7?_state=s", 0), durable=False
        )
        # Known to this run at once (a resume inside the run would find it) ...
        progress = await ledger.upload_progress(LOC, "app", D1)
        assert progress is not None and progress.location == "/up/7?_state=s"
        # ... and on disk once the writer thread commits its group.
        await ledger.flush()
        assert on_disk() == [("/up/7?_state=s", 0)]
        await j.close()

    anyio.run(go)
