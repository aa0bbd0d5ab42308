"""One runner per job, and per journal run, across processes (locks beside the journal).

Two ``sync`` processes on one config and journal never run the same job at
once: the second leaves out (and names) what the first holds and exits 11, or
waits with ``--wait-lock``.  The same for two identical ``copy`` commands, which
before the lock shared one journal run and cancelled each other's upload
sessions.  A counting proxy in front of the destination proves it: no blob is
uploaded twice, no upload session is cancelled.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from replicator.errors import EXIT_LOCKED, EXIT_OK
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.service_helpers import ServiceProcess, push_image, tags_of, wait_until


def _holder_pid(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _uploads_per_blob(proxy: FaultProxy) -> Counter[str]:
    """How often each blob's upload was completed at the destination (``PUT ...?digest=``)."""
    found: Counter[str] = Counter()
    for record in proxy.stats().log:
        if record.method == "PUT" and record.kind == "upload":
            match = re.search(r"digest=(sha256(?::|%3A)[0-9a-f]{64})", record.path)
            assert match, record.path
            found[match.group(1).replace("%3A", ":")] += 1
    return found


def _slow_destination(
    registry: RegistryInstance, fault_proxy: Callable[..., FaultProxy], seconds: float
) -> FaultProxy:
    proxy = fault_proxy(registry)
    # Every blob upload waits before it completes: a run is in the middle of its
    # uploads for a while (a second process then finds the blobs absent too).
    proxy.delay("PUT", r"/blobs/uploads/", seconds, times=None)
    return proxy


def _uploading(proxy: FaultProxy) -> bool:
    """The first process is in the middle of its copy: an upload session was opened."""
    return proxy.stats().requests("POST", "upload") > 0


def _two_job_config(path: Path, source: str, destination: str, base: str) -> Path:
    path.write_text(
        "version: 1\njobs:\n"
        + "".join(
            f"  - name: {name}\n    source: {source}/{base}/{name}\n"
            f"    destinations: [{destination}/{base}/{name}-copy]\n"
            for name in ("a", "b")
        )
    )
    return path


def test_a_second_sync_leaves_out_held_jobs_and_a_waiting_one_runs_after(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    for name in ("a", "b"):
        push_image(registry_open, f"{unique_repo}/{name}", "v1", layer_size=100_000)
    destination = _slow_destination(registry_open, fault_proxy, 5.0)
    config = _two_job_config(
        tmp_path / "sync.yaml", registry_open.host, destination.host, unique_repo
    )
    journal = tmp_path / "j.sqlite"
    locks = tmp_path / "j.sqlite.locks"
    common = ("sync", str(config), "--journal", str(journal))
    with ServiceProcess(common, tmp_path, "first") as first:
        wait_until(lambda: _uploading(destination), "the first sync's uploads")
        holders = {_holder_pid(locks / f"job-{n}.lock") for n in ("a", "b")}
        with ServiceProcess(common, tmp_path, "second") as second:
            second.wait()
        with ServiceProcess((*common, "--wait-lock"), tmp_path, "waiting") as waiting:
            first.wait()
            waiting.wait()
    uploads = _uploads_per_blob(destination)
    assert len(uploads) == 6 and set(uploads.values()) == {1}, uploads  # 2 images x 3 blobs
    assert holders == {first.pid}
    assert first.proc.returncode == EXIT_OK, first.stderr()[-3000:]
    assert second.proc.returncode == EXIT_LOCKED, second.stderr()[-3000:]
    assert waiting.proc.returncode == EXIT_OK, waiting.stderr()[-3000:]
    # The second one ran nothing and said who held the jobs.
    (failed,) = second.events("cli.failed")
    assert failed["exit_code"] == EXIT_LOCKED
    assert "every selected job (2) is being run elsewhere" in failed["error"]
    assert f"pid {first.pid} on " in second.stderr()
    assert "Job " not in second.stdout()
    # The waiting one ran after the first: everything was there already.
    assert "Up to date:" in waiting.stdout() and "Copied" not in waiting.stdout()
    for name in ("a", "b"):
        assert tags_of(registry_open, f"{unique_repo}/{name}-copy") == ["v1"]


def test_a_sync_runs_the_jobs_nobody_holds_and_exits_locked(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    for name in ("a", "b"):
        push_image(registry_open, f"{unique_repo}/{name}", "v1", layer_size=100_000)
    destination = _slow_destination(registry_open, fault_proxy, 5.0)
    config = _two_job_config(
        tmp_path / "sync.yaml", registry_open.host, destination.host, unique_repo
    )
    common = ("sync", str(config), "--journal", str(tmp_path / "j.sqlite"))
    lock_a = tmp_path / "j.sqlite.locks" / "job-a.lock"
    with ServiceProcess((*common, "--job", "a"), tmp_path, "only-a") as only_a:
        wait_until(lambda: _uploading(destination), "job a's uploads")
        holder = _holder_pid(lock_a)
        with ServiceProcess(common, tmp_path, "all") as every:
            every.wait()
        only_a.wait()
    uploads = _uploads_per_blob(destination)
    assert len(uploads) == 6 and set(uploads.values()) == {1}, uploads
    assert holder == only_a.pid
    assert every.proc.returncode == EXIT_LOCKED, every.stderr()[-3000:]
    assert only_a.proc.returncode == EXIT_OK, only_a.stderr()[-3000:]
    # Job b ran in the second process, job a only in the first.
    assert "Job b" in every.stdout() and "Job a" not in every.stdout()
    assert "Job a" in only_a.stdout() and "Job b" not in only_a.stdout()
    (locked,) = every.events("cli.job_locked")
    assert locked["job"] == "a" and f"pid {only_a.pid} on " in locked["error"]


def test_two_identical_copies_never_share_a_run(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    push_image(registry_open, f"{unique_repo}/src", "v1", layer_size=300_000)
    destination = _slow_destination(registry_open, fault_proxy, 5.0)
    journal = tmp_path / "j.sqlite"
    src = f"{registry_open.host}/{unique_repo}/src:v1"
    dst = f"{destination.host}/{unique_repo}/dst:v1"
    copy = ("copy", "-r", "--journal", str(journal))
    locks = tmp_path / "j.sqlite.locks"
    with ServiceProcess((*copy, src, dst), tmp_path, "first") as first:
        wait_until(lambda: _uploading(destination), "the first copy's uploads")
        with ServiceProcess((*copy, src, dst), tmp_path, "second") as second:
            second.wait()
        with ServiceProcess((*copy, "--wait-lock=120", src, dst), tmp_path, "waiting") as waiting:
            first.wait()
            waiting.wait()
    uploads = _uploads_per_blob(destination)
    assert len(uploads) == 3 and set(uploads.values()) == {1}, uploads
    # No process cancelled another's upload session.
    assert destination.stats().requests("DELETE", "upload") == 0
    assert _holder_pid(next(locks.glob("run-*.lock"))) is None  # released: the file is emptied
    assert first.proc.returncode == EXIT_OK, first.stderr()[-3000:]
    assert second.proc.returncode == EXIT_LOCKED, second.stderr()[-3000:]
    assert waiting.proc.returncode == EXIT_OK, waiting.stderr()[-3000:]
    (failed,) = second.events("cli.failed")
    assert failed["error"].startswith(
        f"the same run on the journal {journal} is being run by pid {first.pid} on "
    )
    assert "--wait-lock waits for it" in failed["error"]
    assert f"Up to date: {src} => {dst}" in waiting.stdout()


def test_no_lock_file_is_created_beside_a_journal_path_that_is_not_a_journal(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    """``--journal config.json`` by mistake: exit 8 as before, and no ``config.json.locks``."""
    push_image(registry_open, f"{unique_repo}/a", "v1")
    work = tmp_path / "work"
    work.mkdir()
    mistaken = work / "config.json"
    mistaken.write_text('{"important": true}\n')
    host = registry_open.host
    config = tmp_path / "sync.yaml"
    config.write_text(
        f"version: 1\njobs:\n  - name: a\n    source: {host}/{unique_repo}/a\n"
        f"    destinations: [{host}/{unique_repo}/a-copy]\n"
    )
    synced = run_cli("sync", str(config), "--journal", str(mistaken), home=tmp_path)
    copied = run_cli(
        "copy",
        "--journal",
        str(mistaken),
        f"{host}/{unique_repo}/a:v1",
        f"{host}/{unique_repo}/b:v1",
        home=tmp_path,
    )
    assert synced.code == copied.code == 8, synced.stderr + copied.stderr
    assert "not a replicator journal" in copied.stderr
    assert [p.name for p in work.iterdir()] == ["config.json"]
