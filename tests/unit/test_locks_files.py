"""The lock files beside the journal: one holder at a time, named to whoever finds it taken."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from replicator.errors import EXIT_LOCKED, LockedError
from replicator.sync.locks import (
    HeldLock,
    Holder,
    acquire,
    job_lock_path,
    lock_dir,
    run_lock_path,
    try_lock,
)


def test_lock_files_live_beside_the_journal(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    assert lock_dir(journal) == tmp_path / "j.sqlite.locks"
    assert job_lock_path(journal, "mirror-a") == tmp_path / "j.sqlite.locks" / "job-mirror-a.lock"
    key = "sha256:" + "ab" * 32
    assert run_lock_path(journal, key).name == "run-" + "ab" * 16 + ".lock"


def test_a_second_taker_gets_the_holder_and_takes_it_once_released(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "job-x.lock"
    me = Holder(pid=123, host="pod-a", started=1_700_000_000.0, command=("sync", "c.yaml"))
    first = try_lock(path, me)
    assert isinstance(first, HeldLock)
    second = try_lock(path, Holder.me(("sync",)))
    assert second == me
    assert me.describe() == (
        "pid 123 on pod-a since 2023-11-14 22:13:20 UTC (replicator sync c.yaml)"
    )
    first.release()
    first.release()  # idempotent
    assert path.read_text() == ""  # the holder line goes with the lock
    third = try_lock(path, Holder.me(("sync",)))
    assert isinstance(third, HeldLock)
    third.release()


def test_acquire_without_waiting_raises_locked_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    held = try_lock(path, Holder(7, "host-b", time.time(), ("copy", "a", "b")))
    assert isinstance(held, HeldLock)

    async def main() -> None:
        with pytest.raises(LockedError) as caught:
            await acquire(path, Holder.me(()), what="job x", wait=0)
        assert caught.value.exit_code == EXIT_LOCKED == 11
        text = str(caught.value)
        assert text.startswith("job x is being run by pid 7 on host-b since ")
        assert "(replicator copy a b)" in text and "--wait-lock waits for it" in text

    anyio.run(main)
    held.release()


def test_acquire_waits_until_the_holder_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    held = try_lock(path, Holder.me(("first",)))
    assert isinstance(held, HeldLock)

    async def main() -> float:
        async with anyio.create_task_group() as tg:

            async def let_go() -> None:
                await anyio.sleep(0.5)
                held.release()

            tg.start_soon(let_go)
            began = time.monotonic()
            got = await acquire(path, Holder.me(("second",)), what="x", wait=None)
            assert isinstance(got, HeldLock)
            got.release()
            return time.monotonic() - began

    waited = anyio.run(main)
    assert 0.4 < waited < 3


def test_a_wait_with_a_limit_ends_locked_and_a_stop_ends_it_early(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    held = try_lock(path, Holder.me(("first",)))
    assert isinstance(held, HeldLock)

    async def main() -> None:
        began = time.monotonic()
        with pytest.raises(LockedError, match=r"waited 0.3s"):
            await acquire(path, Holder.me(()), what="x", wait=0.3)
        assert 0.25 < time.monotonic() - began < 2
        stopped = await acquire(path, Holder.me(()), what="x", wait=None, stopped=lambda: True)
        assert stopped is None

    anyio.run(main)
    held.release()


def test_another_process_holding_the_lock_is_named_and_its_death_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "job-x.lock"
    script = textwrap.dedent(
        f"""
        import sys, time
        from replicator.sync.locks import Holder, try_lock
        from pathlib import Path
        held = try_lock(Path({str(path)!r}), Holder.me(("sync", "other.yaml")))
        print("held", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        other = try_lock(path, Holder.me(()))
        assert isinstance(other, Holder)
        assert other.pid == proc.pid and other.command == ("sync", "other.yaml")
    finally:
        proc.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock
        proc.wait()
    mine = try_lock(path, Holder.me(()))
    assert isinstance(mine, HeldLock)
    mine.release()
