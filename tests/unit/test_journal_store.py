"""The journal store: durability, resume lookup, corruption handling, gc."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from replicator.journal.store import BLOB, DONE, MANIFEST, Journal, UploadState


def run(coro_fn, *args):  # type: ignore[no-untyped-def]
    return anyio.run(coro_fn, *args)


def test_confirmations_survive_reopen_and_resume_same_key(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"

    async def first() -> str:
        j = await Journal.open(path)
        run_id, resumed = j.begin_run("k1", {"src": "a", "dst": "b"})
        assert not resumed
        j.confirm(run_id, "reg:5000", "app", "sha256:" + "a" * 64, BLOB)
        j.confirm(run_id, "reg:5000", "app", "sha256:" + "b" * 64, MANIFEST)
        j.record_upload(
            run_id, UploadState("reg:5000", "app", "sha256:" + "c" * 64, "/up/1?x=1", 4096)
        )
        await j.close()
        return run_id

    async def second(first_id: str) -> None:
        j = await Journal.open(path)
        run_id, resumed = j.begin_run("k1", {"src": "a", "dst": "b"})
        assert resumed and run_id == first_id
        got = j.confirmations(run_id)
        assert ("reg:5000", "app", "sha256:" + "a" * 64, BLOB, "") in got
        assert len(got) == 2
        ups = j.uploads(run_id)
        assert [(u.upload_url, u.offset) for u in ups] == [("/up/1?x=1", 4096)]
        assert j.mount_candidates("reg:5000", "sha256:" + "a" * 64) == ["app"]
        j.finish_run(run_id, DONE, counts={"blobs": 1}, bytes_moved=10)
        await j.flush()
        assert j.uploads(run_id) == []
        # a finished run is not resumed: the same key starts a new run
        new_id, resumed_again = j.begin_run("k1", {})
        assert not resumed_again and new_id != run_id
        await j.close()

    rid = run(first)
    run(second, rid)


def test_fresh_abandons_unfinished_run(tmp_path: Path) -> None:
    async def go() -> None:
        j = await Journal.open(tmp_path / "j.sqlite")
        a, _ = j.begin_run("k", {})
        await j.flush()
        b, resumed = j.begin_run("k", {}, fresh=True)
        assert not resumed and a != b
        await j.flush()
        info = j.run(a)
        assert info is not None and info.state == "failed"
        await j.close()

    run(go)


def test_corrupt_journal_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database" * 100)

    async def go() -> None:
        j = await Journal.open(path)
        _, resumed = j.begin_run("k", {})
        assert not resumed
        await j.close()

    run(go)
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert aside, "the corrupt file must be kept aside for inspection"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_forget_drops_mount_candidate_and_confirmation(tmp_path: Path) -> None:
    async def go() -> None:
        j = await Journal.open(tmp_path / "j.sqlite")
        rid, _ = j.begin_run("k", {})
        d = "sha256:" + "d" * 64
        j.confirm(rid, "h", "r", d, BLOB)
        await j.flush()
        assert j.mount_candidates("h", d) == ["r"]
        j.forget("h", "r", d)
        await j.flush()
        assert j.mount_candidates("h", d) == []
        assert j.confirmations(rid) == set()
        await j.close()

    run(go)


def test_gc_removes_old_finished_runs_only(tmp_path: Path) -> None:
    async def go() -> None:
        j = await Journal.open(tmp_path / "j.sqlite")
        done_id, _ = j.begin_run("a", {})
        j.finish_run(done_id, DONE)
        open_id, _ = j.begin_run("b", {})
        await j.flush()
        assert j.gc(older_than=-1) == 1
        await j.flush()
        assert [r.id for r in j.runs()] == [open_id]
        await j.close()

    run(go)


@pytest.mark.parametrize("n", [5000])
def test_many_confirmations_are_batched(tmp_path: Path, n: int) -> None:
    async def go() -> None:
        j = await Journal.open(tmp_path / "j.sqlite")
        rid, _ = j.begin_run("k", {})
        for i in range(n):
            j.confirm(rid, "h", "r", f"sha256:{i:064x}", BLOB)
        await j.flush()
        assert len(j.confirmations(rid)) == n
        await j.close()

    run(go)
