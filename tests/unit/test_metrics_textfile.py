"""Service metrics as Prometheus reads them, and the textfile carried over from run to run."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from replicator.errors import InputError
from replicator.observe.metrics import (
    FAMILIES,
    JobFigures,
    RegistryFigures,
    ServiceMetrics,
    activated,
    count_pruned,
)
from replicator.observe.textfile import write_textfile


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` parsed by prometheus-client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def job(name: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"sync_job": name, **labels}.items()))


def test_every_family_follows_the_naming_conventions() -> None:
    for name, family in FAMILIES.items():
        assert name.startswith("replicator_")
        assert name.endswith("_total") == (family.kind == "counter"), name
        if "timestamp" in name or "duration" in name or "interval" in name:
            assert name.endswith("_seconds"), name
        if "bytes" in name:
            assert name.endswith("_bytes_total"), name
        assert "job" not in family.labels  # Prometheus' own target label


def test_a_run_is_exposed_with_zeroed_series_and_parses() -> None:
    m = ServiceMetrics()
    m.declare_job("api", 900)
    m.record_run(
        "api",
        JobFigures(
            "success",
            finished=1000.0,
            duration=2.5,
            graphs={"copied": 2, "up_to_date": 1},
            manifests_copied=4,
            blobs_copied=3,
            blobs_mounted=1,
            bytes_sent=12345,
        ),
    )
    m.record_skipped_tick("api", "running")
    m.set_registry_totals({"reg:5000": RegistryFigures({("blob_put", "2xx"): 3}, retries=1)})
    m.record_limits({("reg:5000", "blob"): 2}, {("reg:5000", "blob"): 4})
    got = samples(generate_latest(m.registry()).decode())
    assert got[("replicator_job_runs_total", job("api", result="success"))] == 1
    assert got[("replicator_job_runs_total", job("api", result="failed"))] == 0
    assert got[("replicator_job_last_success_timestamp_seconds", job("api"))] == 1000.0
    assert got[("replicator_job_interval_seconds", job("api"))] == 900
    assert got[("replicator_job_graphs_total", job("api", status="copied"))] == 2
    assert got[("replicator_job_graphs_total", job("api", status="refused"))] == 0
    assert got[("replicator_job_blobs_total", job("api", action="mounted"))] == 1
    assert got[("replicator_job_sent_bytes_total", job("api"))] == 12345
    assert got[("replicator_job_ticks_skipped_total", job("api", reason="running"))] == 1
    assert got[("replicator_job_tags_pruned_total", job("api"))] == 0
    key = (("kind", "blob_put"), ("registry", "reg:5000"), ("status_class", "2xx"))
    assert got[("replicator_registry_requests_total", key)] == 3
    assert (
        got[
            (
                "replicator_registry_throttle_events_total",
                (("kind", "blob"), ("registry", "reg:5000")),
            )
        ]
        == 2
    )
    assert (
        got[("replicator_registry_concurrency_limit", (("kind", "blob"), ("registry", "reg:5000")))]
        == 4
    )


def test_pruning_counts_reach_the_active_metrics_only() -> None:
    m = ServiceMetrics()
    m.declare_job("api", 60)
    count_pruned("api", 5)  # nothing active: dropped
    with activated(m):
        count_pruned("api", 3)
    assert m.value("replicator_job_tags_pruned_total", "api") == 3


def test_forgetting_a_job_drops_its_series() -> None:
    m = ServiceMetrics()
    m.declare_job("old", 60)
    m.declare_job("kept", 60)
    m.forget_job("old")
    text = generate_latest(m.registry()).decode()
    assert 'sync_job="old"' not in text and 'sync_job="kept"' in text


def _one_run(result: str, finished: float, blobs: int) -> ServiceMetrics:
    m = ServiceMetrics()
    m.declare_job("api", 60)
    m.record_run("api", JobFigures(result, finished, 1.0, blobs_copied=blobs))  # type: ignore[arg-type]
    m.exit_code(0 if result == "success" else 7)
    return m


def test_the_textfile_carries_counters_and_the_last_success_over(tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "replicator.prom"
    write_textfile(path, _one_run("success", 1000.0, 3).collect())
    write_textfile(path, _one_run("failed", 2000.0, 2).collect())
    got = samples(path.read_text())
    assert got[("replicator_job_runs_total", job("api", result="success"))] == 1
    assert got[("replicator_job_runs_total", job("api", result="failed"))] == 1
    assert got[("replicator_job_blobs_total", job("api", action="copied"))] == 5
    # The failed run set no success timestamp: the first run's is kept.
    assert got[("replicator_job_last_success_timestamp_seconds", job("api"))] == 1000.0
    assert got[("replicator_job_last_run_timestamp_seconds", job("api"))] == 2000.0
    assert got[("replicator_sync_last_exit_code", ())] == 7
    assert not any(name.endswith("_created") for name, _ in got)
    # Only the .prom file is left (no temporary file the collector could pick up).
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == [
        "replicator.prom"
    ]


def test_series_of_jobs_this_run_did_not_select_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.prom"
    other = ServiceMetrics()
    other.declare_job("other", 60)
    other.record_run("other", JobFigures("success", 500.0, 1.0))
    write_textfile(path, other.collect())
    write_textfile(path, _one_run("success", 1000.0, 1).collect())
    got = samples(path.read_text())
    assert got[("replicator_job_last_success_timestamp_seconds", job("other"))] == 500.0
    assert got[("replicator_job_last_success_timestamp_seconds", job("api"))] == 1000.0


def test_a_previous_file_that_is_not_metrics_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "r.prom"
    path.write_text("this is { not prometheus\n")
    write_textfile(path, _one_run("success", 1000.0, 1).collect())
    got = samples(path.read_text())
    assert got[("replicator_job_runs_total", job("api", result="success"))] == 1


def test_an_unwritable_metrics_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.prom").mkdir()
    with pytest.raises(InputError, match="cannot write the metrics file"):
        write_textfile(tmp_path / "dir.prom", _one_run("success", 1.0, 1).collect())
