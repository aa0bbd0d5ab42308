"""The JSON report written one job at a time is the document ``to_json`` describes, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from replicator.engine.report import CopyReport, FailureCause, JobResult, PlannedWrite
from replicator.errors import NotFoundError
from replicator.sync import Message, RunOutcome
from replicator.sync.journal_run import SourceMoved
from replicator.sync.outcome import write_report


def _outcome(jobs: int) -> RunOutcome:
    report = CopyReport(manifests_pushed=3, warnings=["two\nlines", 'naïve "quoted"'])
    report.causes.append(FailureCause("gone", 3, "NotFoundError", "source", "MANIFEST_UNKNOWN"))
    report.planned.append(PlannedWrite("tag", "reg/app", "sha256:" + "a" * 64, tag="v1"))
    report.requests["reg"] = {"manifest_get": 2}
    for i in range(jobs):
        report.jobs.append(
            JobResult(
                source=f"reg/app:t{i}",
                destinations=[f"dst/app:t{i}", "other/app:x"],
                status="copied" if i % 2 else "failed",
                digest="sha256:" + "b" * 64,
                tags=[f"t{i}"],
                backups=["old -> sha256:" + "c" * 64] if i == 1 else [],
            )
        )
    return RunOutcome(
        report,
        "failed",
        3,
        error=NotFoundError("nothing \u2603 here"),
        run_id="run-1",
        messages=[Message("warning", "careful\tnow", "run.warning")],
        sources_moved=[SourceMoved("reg/app:t0", "sha256:1", "sha256:2")],
        throttle_events={"reg/meta": 1},
        job_states=["failed", "copied"],
    )


def test_streamed_report_equals_the_whole_document(tmp_path: Path) -> None:
    for jobs in (0, 1, 3):
        outcome = _outcome(jobs)
        path = tmp_path / f"report-{jobs}.json"
        write_report(path, outcome)
        expected = json.dumps(outcome.to_json(), indent=2) + "\n"
        assert path.read_text(encoding="utf-8") == expected
        assert len(json.loads(expected)["jobs"]) == jobs


def test_report_json_keeps_the_engine_report_fields_in_order() -> None:
    outcome = _outcome(2)
    doc = outcome.to_json()
    engine_keys = list(outcome.report.to_json())
    assert list(doc)[: len(engine_keys)] == engine_keys
    assert doc["jobs"][1]["status"] == "copied"
    assert doc["jobs"][1]["backups"] == ["old -> sha256:" + "c" * 64]
    assert outcome.report.summary_json()["jobs"] == []
    assert outcome.report.summary_json()["planned"][0]["tag"] == "v1"
