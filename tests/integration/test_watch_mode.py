"""``replicator sync CONFIG --watch`` against real registries, with short intervals.

A new tag reaches the destination within one interval plus the copy; a slow job
never overlaps itself (its overlapping ticks are skipped and counted); SIGTERM
in the middle of a copy exits cleanly and the next start resumes; SIGHUP with a
broken file keeps the old jobs and says why.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from replicator.errors import EXIT_INTERRUPTED, EXIT_OK
from replicator.targets.registry import RegistryTarget
from tests.infra.process import free_port
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder, assert_same_graph
from tests.integration.service_helpers import (
    WatchProcess,
    push_image,
    tags_of,
    total,
    value,
    wait_until,
)


def _config(path: Path, jobs: list[tuple[str, str, str, str]]) -> Path:
    """A config of ``(name, source, destination, interval)`` jobs."""
    lines = ["version: 1", "jobs:"]
    for name, source, destination, interval in jobs:
        lines += [
            f"  - name: {name}",
            f"    source: {source}",
            f"    destinations: [{destination}]",
            f"    interval: {interval}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_tag_pushed_to_the_source_appears_within_one_interval_plus_the_copy(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    host = registry_open.host
    push_image(registry_open, f"{unique_repo}/src", "v1")
    config = _config(
        tmp_path / "sync.yaml",
        [("app", f"{host}/{unique_repo}/src", f"{host}/{unique_repo}/dst", "2s")],
    )
    with WatchProcess(config, tmp_path / "j.sqlite", tmp_path) as watch:
        watch.wait_ready()
        assert tags_of(registry_open, f"{unique_repo}/dst") == ["v1"]  # the first pass
        pushed = time.monotonic()
        push_image(registry_open, f"{unique_repo}/src", "v2")
        wait_until(lambda: "v2" in tags_of(registry_open, f"{unique_repo}/dst"), "v2 copied")
        elapsed = time.monotonic() - pushed
        runs = watch.events("watch.job_finished")
        copy_time = max(r["seconds"] for r in runs)
        # One interval, the copy, and the polling and process scheduling of a busy machine.
        assert elapsed <= 2.0 + copy_time + 1.5, (elapsed, copy_time)
        assert all(r["result"] == "success" for r in runs), runs
        # Every 2 s a run starts: SIGTERM may find one in flight (75: cut short,
        # resumed at the next start, as the SIGTERM test below checks) or none (0).
        code = watch.terminate()
        assert code in (EXIT_OK, EXIT_INTERRUPTED)
    assert watch.events("watch.stopped")[0]["exit_code"] == code


def test_a_slow_job_never_overlaps_itself_and_its_skipped_ticks_are_counted(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    push_image(registry_open, f"{unique_repo}/src", "v1")
    source = fault_proxy(registry_open)
    # Every manifest request to the source takes 1.5 s: a run lasts longer than the 1 s interval.
    source.delay(None, r"/manifests/", 1.5, times=None)
    config = _config(
        tmp_path / "sync.yaml",
        [
            (
                "slow",
                f"{source.host}/{unique_repo}/src",
                f"{registry_open.host}/{unique_repo}/dst",
                "1s",
            )
        ],
    )
    with WatchProcess(config, tmp_path / "j.sqlite", tmp_path) as watch:
        watch.wait_event("watch.job_finished", count=3)
        samples = watch.metrics()
        assert watch.terminate() == EXIT_OK
    runs = watch.events("watch.job_finished")
    skipped_logged = watch.events("watch.tick_skipped")
    assert all(s["reason"] == "running" for s in skipped_logged)
    skipped = value(
        samples, "replicator_job_ticks_skipped_total", sync_job="slow", reason="running"
    )
    succeeded = value(samples, "replicator_job_runs_total", sync_job="slow", result="success")
    assert succeeded >= 3
    assert all(r["seconds"] >= 1.5 for r in runs if r["result"] == "success")
    # At least one tick per run after the first found it still running.
    assert skipped >= succeeded - 1 >= 2
    assert skipped <= len(skipped_logged)  # every skip counted was logged (a scrape may lag)
    # The runs never overlapped: each began after the previous one ended.
    spans = [(_time(r["timestamp"]) - r["seconds"], _time(r["timestamp"])) for r in runs]
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end - 0.05, spans


def _time(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


LAYER = 3 * 1024 * 1024
CHUNK = 256 * 1024


def test_sigterm_mid_copy_exits_cleanly_and_the_next_start_resumes(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    src_repo, dst_repo = f"{unique_repo}/src", f"{unique_repo}/dst"

    async def build() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            await GraphBuilder(t, src_repo).image("big", layers=1, layer_size=LAYER, tags=["v1"])

    anyio.run(build)
    destination = fault_proxy(registry_open)
    # Every chunk of the upload waits a little: the copy takes a few seconds.
    destination.delay("PATCH", r"/blobs/uploads/", 0.3, times=None)
    config = _config(
        tmp_path / "sync.yaml",
        [("big", f"{registry_open.host}/{src_repo}", f"{destination.host}/{dst_repo}", "1h")],
    )
    journal = tmp_path / "j.sqlite"
    args = ("--chunk-size", str(CHUNK))
    with WatchProcess(config, journal, tmp_path, *args, name="first") as first:
        wait_until(lambda: destination.stats().requests("PATCH", "upload") >= 3, "3 chunks")
        first.signal(signal.SIGTERM)
        assert first.wait() == EXIT_INTERRUPTED, first.stderr()[-3000:]
    assert first.events("watch.stopping")
    assert first.events("run.interrupted")
    sent_first = destination.stats().bytes_up("PATCH", "upload")
    assert 0 < sent_first < LAYER
    assert "v1" not in tags_of(registry_open, dst_repo)  # the tag is the last write
    destination.reset()

    with WatchProcess(config, journal, tmp_path, *args, name="second") as second:
        (done,) = second.wait_event("watch.job_finished")
        assert done["result"] == "success", second.stderr()[-3000:]
        assert second.events("run.resumed"), second.stderr()[-3000:]
        assert second.terminate() == EXIT_OK
    # The acknowledged chunks were not sent again: the rest only (at most one chunk over).
    sent_second = destination.stats().bytes_up("PATCH", "upload")
    assert sent_second <= LAYER - sent_first + CHUNK, (sent_first, sent_second)

    async def same() -> None:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            await assert_same_graph(t, src_repo, "v1", t, dst_repo, "v1")

    anyio.run(same)


def test_sighup_with_a_broken_file_keeps_the_old_jobs_and_says_why(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    host = registry_open.host
    push_image(registry_open, f"{unique_repo}/a", "v1")
    push_image(registry_open, f"{unique_repo}/b", "v1")
    job_a = ("a", f"{host}/{unique_repo}/a", f"{host}/{unique_repo}/a-copy", "1s")
    config = _config(tmp_path / "sync.yaml", [job_a])
    with WatchProcess(config, tmp_path / "j.sqlite", tmp_path) as watch:
        watch.wait_ready()
        # A valid YAML file with a job whose interval is not a duration.
        broken = config.read_text().replace("interval: 1s", "interval: soon")
        config.write_text(broken + "  - name: b\n")
        watch.signal(signal.SIGHUP)
        (failed,) = watch.wait_event("watch.reload_failed")
        assert failed["kept_jobs"] == ["a"]
        assert "sync.yaml: 3 errors" in failed["error"], failed  # source, destinations
        assert any("jobs[0].interval: 'soon' is not a duration" in p for p in failed["problems"])
        # The old job goes on: a new tag at its source still arrives.
        push_image(registry_open, f"{unique_repo}/a", "v2")
        wait_until(lambda: "v2" in tags_of(registry_open, f"{unique_repo}/a-copy"), "v2 copied")
        samples = watch.metrics()
        assert value(samples, "replicator_config_last_reload_successful") == 0
        assert value(samples, "replicator_config_reloads_total", result="failure") == 1
        # A good file with a second job: reloaded, the new job runs at once.
        job_b = ("b", f"{host}/{unique_repo}/b", f"{host}/{unique_repo}/b-copy", "1s")
        _config(config, [job_a, job_b])
        watch.signal(signal.SIGHUP)
        (reloaded,) = watch.wait_event("watch.reloaded")
        assert reloaded["added"] == ["b"] and reloaded["removed"] == []
        wait_until(lambda: "v1" in tags_of(registry_open, f"{unique_repo}/b-copy"), "b copied")
        samples = watch.metrics()
        assert value(samples, "replicator_config_last_reload_successful") == 1
        assert total(samples, "replicator_job_runs_total", sync_job="b") >= 1
        assert watch.terminate() == EXIT_OK


def test_a_failing_job_backs_off_while_the_others_go_on(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    host = registry_open.host
    push_image(registry_open, f"{unique_repo}/good", "v1")
    config = _config(
        tmp_path / "sync.yaml",
        [
            ("good", f"{host}/{unique_repo}/good", f"{host}/{unique_repo}/good-copy", "1s"),
            # Nothing listens at the destination: every run fails at once.
            ("broken", f"{host}/{unique_repo}/good", f"127.0.0.1:{free_port()}/x", "30s"),
        ],
    )
    with WatchProcess(config, tmp_path / "j.sqlite", tmp_path) as watch:
        watch.wait_ready()
        failed = wait_until(
            lambda: [e for e in watch.events("watch.job_finished") if e["job"] == "broken"][2:],
            "three failed runs",
        )
        samples = watch.metrics()
        assert watch.terminate() == EXIT_OK
    runs = watch.events("watch.job_finished")
    broken = [r for r in runs if r["job"] == "broken"]
    assert all(r["result"] == "failed" for r in broken) and failed
    # Retried after 5 s, then 10 s (the back-off doubles), long before the 30 s interval.
    gaps = [_time(b["timestamp"]) - _time(a["timestamp"]) for a, b in itertools.pairwise(broken)]
    assert 4.5 <= gaps[0] <= 8 and 9.5 <= gaps[1] <= 14, gaps
    assert [r["failures"] for r in broken[:3]] == [1, 2, 3]
    assert value(samples, "replicator_job_consecutive_failures", sync_job="broken") >= 3
    assert value(samples, "replicator_job_runs_total", sync_job="broken", result="failed") >= 3
    # The good job was not held up: it kept running every second meanwhile.
    good = [r for r in runs if r["job"] == "good"]
    assert len(good) >= 10 and all(r["result"] == "success" for r in good[:-1])
    assert good[-1]["result"] in ("success", "interrupted")  # SIGTERM may come during one
    assert value(samples, "replicator_job_consecutive_failures", sync_job="good") == 0
