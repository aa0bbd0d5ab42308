"""The run layer from Python, between OCI layouts on disk (no registry, no argparse):
outcomes, statuses, the journal's run, stops, reports, and the attempt ledger's tally."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from replicator.engine import Confirmation, MemoryLedger
from replicator.errors import (
    EXIT_INTERRUPTED,
    EXIT_JOURNAL,
    EXIT_NOT_FOUND,
    JournalError,
)
from replicator.errors import (
    EXIT_REGISTRY as EXIT_LAYOUT,
)
from replicator.sync import (
    JournalChoice,
    Message,
    RunOutcome,
    RunRequest,
    StopRequest,
    TargetPool,
    reference_job,
    repository_job,
    run_copy,
)
from replicator.sync.ledger import AttemptLedger
from replicator.targets.base import UploadProgress
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import GraphBuilder, SignedImage


def _source(tmp_path: Path) -> tuple[str, SignedImage]:
    layout = tmp_path / "src"

    async def build() -> SignedImage:
        target = OCILayoutTarget(layout, create=True)
        try:
            return await GraphBuilder(target, "").signed_image("app", tags=["v1"])
        finally:
            await target.aclose()

    return f"ocidir://{layout}", anyio.run(build)


def _run(request: RunRequest, stop: StopRequest | None = None) -> tuple[RunOutcome, list[Message]]:
    heard: list[Message] = []

    async def go() -> RunOutcome:
        async with TargetPool() as targets:
            return await run_copy(request, targets=targets, stop=stop, on_message=heard.append)

    return anyio.run(go), heard


def test_a_copy_then_the_same_copy_again_is_up_to_date(tmp_path: Path) -> None:
    src, signed = _source(tmp_path)
    journal = JournalChoice.at(tmp_path / "journal.sqlite")
    request = RunRequest(
        jobs=(reference_job(f"{src}:v1", [f"ocidir://{tmp_path / 'dst'}:v1"]),),
        journal=journal,
        command=("copy", "-r", "src", "dst"),
        report_path=tmp_path / "report.json",
    )
    first, _ = _run(request)
    assert (first.status, first.exit_code, first.error) == ("copied", 0, None)
    assert first.job_states == ["copied"] and first.report.manifests_pushed == 4
    assert first.run_id and not first.resumed
    again, heard = _run(request)
    assert (again.status, again.job_states, again.report.manifests_pushed) == (
        "up-to-date",
        ["up-to-date"],
        0,
    )
    assert again.run_id != first.run_id and heard == []
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "up-to-date" and report["jobs"][0]["status"] == "up-to-date"
    assert report["jobs"][0]["digest"] == signed.image.digest


def test_a_stop_before_the_copy_copies_nothing_and_exits_75(tmp_path: Path) -> None:
    src, _ = _source(tmp_path)
    stop = StopRequest()
    stop.request("test")
    outcome, heard = _run(
        RunRequest(
            jobs=(repository_job(src, [f"ocidir://{tmp_path / 'dst'}"]),),
            journal=JournalChoice.off(),
        ),
        stop,
    )
    assert (outcome.status, outcome.exit_code) == ("interrupted", EXIT_INTERRUPTED)
    assert [m.event for m in heard] == ["run.interrupted"]
    assert not (tmp_path / "dst").exists()


def test_errors_are_in_the_outcome_and_the_report_is_written(tmp_path: Path) -> None:
    src, _ = _source(tmp_path)
    report_path = tmp_path / "report.json"
    missing, _ = _run(
        RunRequest(
            jobs=(reference_job(f"{src}:nope", [f"ocidir://{tmp_path / 'dst'}:v1"]),),
            journal=JournalChoice.off(),
            report_path=report_path,
        )
    )
    assert (missing.status, missing.exit_code) == ("failed", EXIT_NOT_FOUND)
    assert json.loads(report_path.read_text())["exit_code"] == EXIT_NOT_FOUND
    not_a_journal = tmp_path / "notes.txt"
    not_a_journal.write_text("mine\n")
    refused, _ = _run(
        RunRequest(
            jobs=(reference_job(f"{src}:v1", [f"ocidir://{tmp_path / 'dst'}:v1"]),),
            journal=JournalChoice.at(not_a_journal),
            report_path=report_path,
        )
    )
    assert refused.exit_code == EXIT_JOURNAL and isinstance(refused.error, JournalError)
    unreadable, _ = _run(
        RunRequest(
            jobs=(repository_job(f"ocidir://{tmp_path / 'none'}", [f"ocidir://{tmp_path / 'd'}"]),),
            journal=JournalChoice.off(),
            report_path=report_path,
        )
    )
    assert (unreadable.status, unreadable.exit_code) == ("failed", EXIT_LAYOUT)
    assert not_a_journal.read_text() == "mine\n"
    assert json.loads(report_path.read_text())["status"] == "failed"


def test_a_repository_without_tags_is_nothing_to_copy(tmp_path: Path) -> None:
    empty = tmp_path / "empty"

    async def make() -> None:
        await OCILayoutTarget(empty, create=True).aclose()

    anyio.run(make)
    outcome, _ = _run(
        RunRequest(
            jobs=(repository_job(f"ocidir://{empty}", [f"ocidir://{tmp_path / 'dst'}"]),),
            journal=JournalChoice.off(),
        )
    )
    assert (outcome.status, outcome.exit_code, outcome.report.jobs) == ("up-to-date", 0, [])


@pytest.mark.parametrize("confirmed", [False, True])
def test_the_attempt_ledger_counts_acknowledged_bytes_of_unfinished_uploads(
    confirmed: bool,
) -> None:
    async def go() -> int:
        inner = MemoryLedger()
        digest = "sha256:" + "1" * 64
        await inner.record_progress("h", UploadProgress("r", digest, "/up/a", 8))  # earlier attempt
        ledger = AttemptLedger(inner)
        for offset in (8, 16, 24):  # resumed at 8: 16 bytes this attempt
            await ledger.record_progress("h", UploadProgress("r", digest, "/up/a", offset))
        other = "sha256:" + "2" * 64
        for offset in (0, 8, 0, 4):  # a session that started over: 8 + 4
            await ledger.record_progress("h", UploadProgress("r", other, "/up/b", offset))
        if confirmed:
            await ledger.record(Confirmation("blob", "uploaded", "h", "r", digest, 24))
        assert ledger.written == ({("h", "r")} if confirmed else set())
        return ledger.unfinished_upload_bytes()

    assert anyio.run(go) == (12 if confirmed else 28)


def test_a_second_stop_request_is_counted_and_waited_for() -> None:
    async def go() -> list[str]:
        stop = StopRequest()
        seen: list[str] = []
        async with anyio.create_task_group() as tg:

            async def waiter(count: int) -> None:
                await stop.wait(count)
                seen.append(f"after {count}")

            tg.start_soon(waiter, 1)
            tg.start_soon(waiter, 2)
            await anyio.sleep(0.01)
            stop.request("first")
            await anyio.sleep(0.01)
            assert seen == ["after 1"]
            stop.request("second")
        return [*seen, *stop.reasons]

    assert anyio.run(go) == ["after 1", "after 2", "first", "second"]
