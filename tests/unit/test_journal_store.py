"""The journal store: durability, resume lookup, corruption handling, gc."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import anyio
import pytest

from replicator.errors import JournalError
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


def _make_journal(path: Path, confirmations: int = 0) -> None:
    async def go() -> None:
        j = await Journal.open(path)
        rid, _ = j.begin_run("k", {})
        for i in range(confirmations):
            j.confirm(rid, "h", "r", f"sha256:{i:064x}", BLOB)
        await j.close()

    run(go)
    with sqlite3.connect(path) as conn:  # one file, no WAL left: what gets damaged is all there
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")


def _open_once(path: Path) -> Journal:
    async def go() -> Journal:
        j = await Journal.open(path)
        _, resumed = j.begin_run("k2", {})
        assert not resumed
        await j.close()
        return j

    journal: Journal = run(go)
    return journal


def _aside(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith("-shm")]


def test_a_damaged_journal_of_ours_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _make_journal(path)
    with path.open("r+b") as fh:  # the header (with our application id) stays, the rest is gone
        fh.seek(100)
        fh.write(os.urandom(8192))
    journal = _open_once(path)
    assert journal.set_aside is not None and journal.problem
    assert _aside(tmp_path) == [journal.set_aside]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_an_older_journal_without_application_id_is_recognised_by_its_tables(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    _make_journal(path, confirmations=2000)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA application_id = 0")
    size = path.stat().st_size
    with path.open("r+b") as fh:  # a data page in the middle: the table list still reads
        fh.seek(size // 2)
        fh.write(os.urandom(4096))
    journal = _open_once(path)
    assert journal.set_aside is not None, "a damaged journal of ours must be set aside"


@pytest.mark.parametrize("kind", ["directory", "text", "json", "other-sqlite", "damaged-other"])
def test_anything_but_our_journal_is_refused_and_left_untouched(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.json"
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_text("keep me")
    elif kind == "text":
        path.write_bytes(b"this is not a database" * 100)
    elif kind == "json":
        path.write_text('{"registries": ["a.example"]}\n')
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (body TEXT)")
            conn.executemany("INSERT INTO notes VALUES (?)", [("x" * 500,)] * 200)
        conn.close()
        if kind == "damaged-other":
            with path.open("r+b") as fh:
                fh.seek(100)
                fh.write(os.urandom(4000))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    content = path.read_bytes() if path.is_file() else None

    async def go() -> None:
        await Journal.open(path)

    with pytest.raises(JournalError) as info:
        run(go)
    assert "not a replicator journal" in str(info.value) and "untouched" in str(info.value)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    if content is not None:
        assert path.read_bytes() == content
    assert not _aside(tmp_path)


def test_reading_creates_nothing_and_moves_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "state" / "journal.sqlite"
    assert run(Journal.open_existing, missing) is None
    assert list(tmp_path.iterdir()) == []
    damaged = tmp_path / "j.sqlite"
    _make_journal(damaged)
    with damaged.open("r+b") as fh:
        fh.seek(100)
        fh.write(os.urandom(8192))
    with pytest.raises(JournalError, match="damaged"):
        run(Journal.open_existing, damaged)
    assert not _aside(tmp_path)


def test_an_empty_file_becomes_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.touch()
    journal = _open_once(path)
    assert journal.set_aside is None


def test_source_digests_keep_the_first_one_recorded(tmp_path: Path) -> None:
    async def go() -> None:
        j = await Journal.open(tmp_path / "j.sqlite")
        rid, _ = j.begin_run("k", {})
        j.record_source(rid, "a.example/x:1", "sha256:" + "1" * 64)
        j.record_source(rid, "a.example/x:1", "sha256:" + "2" * 64)
        await j.flush()
        assert j.sources(rid) == {"a.example/x:1": "sha256:" + "1" * 64}
        j.finish_run(rid, DONE)
        await j.flush()
        assert j.gc(older_than=-1) == 1
        await j.flush()
        assert j.sources(rid) == {}
        await j.close()

    run(go)


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


def test_an_older_journal_loses_the_credentials_its_records_kept(tmp_path: Path) -> None:
    """Before the record was built from the parsed request, ``-pSECRET`` stayed in clear."""
    path = tmp_path / "j.sqlite"
    secret = "Hunter2-very-secret"

    async def old_style() -> None:
        j = await Journal.open(path)
        j.begin_run("k", {"argv": ["-u", "me", f"-p{secret}", "copy", "-r", "a/x:1", "b/x:1"]})
        j.begin_run("k2", {"argv": ["copy", f"-rp{secret}", "--password", "***", "a", "b"]})
        await j.close()

    run(old_style)
    with sqlite3.connect(path) as conn:  # as an older release left it: not yet scrubbed
        conn.execute("DELETE FROM meta WHERE key = 'commands_scrubbed'")
        conn.execute("UPDATE runs SET command = replace(command, '-p', '-p')")
    conn.close()

    async def reopen() -> list[list[str]]:
        j = await Journal.open_existing(path)
        assert j is not None
        try:
            return sorted(list(r.command["argv"]) for r in j.runs())
        finally:
            await j.close()

    assert run(reopen) == [["copy", "-r", "a", "b"], ["copy", "-r", "a/x:1", "b/x:1"]]
    stored = b"".join(
        Path(str(path) + s).read_bytes() for s in ("", "-wal") if Path(str(path) + s).exists()
    )
    assert secret.encode() not in stored
