"""Prometheus metrics of real runs, parsed with prometheus-client's own text parser.

A one-shot ``sync --metrics-file`` writes the node-exporter textfile: per job and
per registry its figures equal the run's JSON report (the destination answers
429 twice, so retries, 4xx answers and throttle events show too), and a second
run adds to the first.  A watch serves ``/metrics``, ``/healthz`` and
``/readyz``: its figures equal what a counting proxy saw.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replicator.errors import EXIT_OK
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.service_helpers import (
    WatchProcess,
    parse_metrics,
    push_image,
    total,
    value,
    wait_until,
)


def _two_jobs(path: Path, source: str, destination: str, base: str) -> Path:
    path.write_text(
        f"""\
version: 1
jobs:
  - name: a
    source: {source}/{base}/a
    destinations: [{destination}/{base}/a-copy]
  - name: b
    source: {source}/{base}/b
    destinations: [{destination}/{base}/b-copy]
    interval: 5m
"""
    )
    return path


def _statuses(report: dict[str, Any], job: str) -> Counter[str]:
    return Counter(r["status"].replace("-", "_") for r in report["jobs"][job]["results"])


def test_the_textfile_of_a_one_shot_sync_matches_its_report_and_adds_up(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    push_image(registry_open, f"{unique_repo}/a", "v1", layer_size=50_000)
    push_image(registry_open, f"{unique_repo}/a", "v2", layer_size=70_000)
    push_image(registry_open, f"{unique_repo}/b", "v1", layer_size=60_000)
    destination = fault_proxy(registry_open)
    destination.status("PUT", r"/manifests/", 429, retry_after=0, times=2)
    config = _two_jobs(tmp_path / "sync.yaml", registry_open.host, destination.host, unique_repo)
    textfile = tmp_path / "textfile" / "replicator.prom"
    args = ("sync", str(config), "--journal", str(tmp_path / "j.sqlite"))
    started = time.time()
    first = run_cli(
        *args, "--metrics-file", str(textfile), "--report", str(tmp_path / "r1.json"), home=tmp_path
    )
    assert first.code == EXIT_OK, first.stderr
    report = json.loads((tmp_path / "r1.json").read_text())
    run = report["run"]
    got = parse_metrics(textfile.read_text())

    for job in ("a", "b"):
        for state in ("copied", "up_to_date", "kept", "refused", "failed"):
            counted = value(got, "replicator_job_graphs_total", sync_job=job, status=state)
            assert counted == _statuses(report, job)[state], (job, state)
        assert value(got, "replicator_job_runs_total", sync_job=job, result="success") == 1
        assert value(got, "replicator_job_last_success_timestamp_seconds", sync_job=job) >= started
    assert value(got, "replicator_job_interval_seconds", sync_job="a") == 600  # the default
    assert value(got, "replicator_job_interval_seconds", sync_job="b") == 300
    # The run's counters, split by job, add up to the report's.
    pairs = [
        ("replicator_job_manifests_total", "copied", "manifests_pushed"),
        ("replicator_job_manifests_total", "skipped", "manifests_skipped"),
        ("replicator_job_blobs_total", "copied", "blobs_uploaded"),
        ("replicator_job_blobs_total", "mounted", "blobs_mounted"),
        ("replicator_job_blobs_total", "skipped", "blobs_skipped"),
    ]
    for name, action, field in pairs:
        assert total(got, name, action=action) == run[field], (name, action)
    assert run["blobs_uploaded"] == 9  # 3 images x (config + 2 layers)
    assert value(got, "replicator_job_blobs_total", sync_job="a", action="copied") == 6
    assert total(got, "replicator_job_sent_bytes_total") == run["bytes_sent"]
    # Per registry: the requests of the report, by kind; the proxy's answers, by status class.
    dst = destination.host
    for kind, n in run["requests"][dst].items():
        if kind not in ("bytes_sent", "bytes_received", "retries"):
            assert total(got, "replicator_registry_requests_total", registry=dst, kind=kind) == n
    assert value(got, "replicator_registry_retries_total", registry=dst) == run["retries"] >= 2
    put_429 = value(
        got,
        "replicator_registry_requests_total",
        registry=dst,
        kind="manifest_put",
        status_class="4xx",
    )
    assert put_429 == 2
    seen = Counter()
    for stats in destination.stats().by_kind.values():
        for status, n in stats.statuses.items():
            seen[f"{status // 100}xx"] += n
    for status_class, n in seen.items():
        counted = total(
            got, "replicator_registry_requests_total", registry=dst, status_class=status_class
        )
        assert counted == n, status_class
    throttled = run["throttle_events"][f"{dst}/meta"]
    assert throttled >= 1
    assert (
        value(got, "replicator_registry_throttle_events_total", registry=dst, kind="meta")
        == throttled
    )
    assert value(got, "replicator_sync_last_exit_code") == 0

    # A second run: up to date; the textfile's counters add up, the timestamps move.
    second = run_cli(
        *args, "--metrics-file", str(textfile), "--report", str(tmp_path / "r2.json"), home=tmp_path
    )
    assert second.code == EXIT_OK, second.stderr
    again = parse_metrics(textfile.read_text())
    run2 = json.loads((tmp_path / "r2.json").read_text())["run"]
    for job in ("a", "b"):
        assert value(again, "replicator_job_runs_total", sync_job=job, result="success") == 2
        assert value(again, "replicator_job_last_success_timestamp_seconds", sync_job=job) > value(
            got, "replicator_job_last_success_timestamp_seconds", sync_job=job
        )
    assert total(again, "replicator_job_blobs_total", action="copied") == 9  # nothing new
    assert total(again, "replicator_job_manifests_total", action="skipped") == (
        run["manifests_skipped"] + run2["manifests_skipped"]
    )
    assert total(again, "replicator_registry_requests_total", registry=dst) == total(
        got, "replicator_registry_requests_total", registry=dst
    ) + sum(
        v
        for k, v in run2["requests"][dst].items()
        if k not in ("bytes_sent", "bytes_received", "retries")
    )


def test_a_watch_serves_metrics_health_and_readiness_matching_what_the_registry_saw(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    push_image(registry_open, f"{unique_repo}/src", "v1", layer_size=80_000)
    source = fault_proxy(registry_open)
    source.delay("GET", r"/manifests/", 3.0, times=1)  # the first pass takes a while
    destination = fault_proxy(registry_open)
    config = tmp_path / "sync.yaml"
    config.write_text(
        f"""\
version: 1
jobs:
  - name: app
    source: {source.host}/{unique_repo}/src
    destinations: [{destination.host}/{unique_repo}/dst]
    interval: 1h
"""
    )
    with WatchProcess(config, tmp_path / "j.sqlite", tmp_path) as watch:
        first = wait_until(lambda: watch.get("/readyz")[0], "the metrics endpoint")
        assert first == 503  # not ready before the first pass is done
        watch.wait_ready()
        assert watch.get("/healthz") == (200, "ok\n")
        assert watch.get("/nothing")[0] == 404
        (finished,) = watch.wait_event("watch.job_finished")
        time.sleep(2.5)  # one refresh of the registry counters
        got = watch.metrics()
        assert watch.terminate() == EXIT_OK
    seen = destination.stats()
    assert value(got, "replicator_job_runs_total", sync_job="app", result="success") == 1
    assert value(got, "replicator_job_graphs_total", sync_job="app", status="copied") == 1
    assert (
        value(got, "replicator_job_blobs_total", sync_job="app", action="copied")
        == (seen.requests("PUT", "upload"))
        == 3
    )
    assert (
        value(got, "replicator_job_manifests_total", sync_job="app", action="copied")
        == (seen.requests("PUT", "manifest"))
        == 1
    )
    assert value(got, "replicator_job_sent_bytes_total", sync_job="app") == seen.bytes_up(
        kind="upload"
    )
    duration = value(got, "replicator_job_last_run_duration_seconds", sync_job="app")
    assert abs(duration - finished["seconds"]) < 0.01
    assert value(got, "replicator_job_running", sync_job="app") == 0
    assert value(got, "replicator_job_interval_seconds", sync_job="app") == 3600
    next_run = value(got, "replicator_job_next_run_timestamp_seconds", sync_job="app")
    assert time.time() + 3000 < next_run < time.time() + 3600
    assert total(got, "replicator_registry_requests_total", registry=destination.host) == (
        seen.requests()
    )
    assert total(got, "replicator_registry_requests_total", registry=source.host) == (
        source.stats().requests()
    )
    assert value(got, "replicator_config_last_reload_successful") == 1
    assert ("process_start_time_seconds", ()) in got
