"""The in-memory ledger, the report and the copy command's size parsing."""

from __future__ import annotations

import asyncio
import json

import pytest

from replicator.cli.cmd_copy import parse_size, request_lines, summary_line
from replicator.engine.copier import raise_for_report
from replicator.engine.ledger import Confirmation, Ledger, MemoryLedger
from replicator.engine.report import CopyReport, JobResult
from replicator.errors import IncompleteCopyError, NotFoundError, UsageError
from replicator.targets.base import UploadProgress

D = "sha256:" + "a" * 64


def test_memory_ledger_answers_from_confirmations_only() -> None:
    async def main() -> None:
        ledger = MemoryLedger()
        assert isinstance(ledger, Ledger)
        assert await ledger.lookup("reg:5000", "a", D) is None
        await ledger.record(Confirmation("blob", "uploaded", "reg:5000", "a", D, 10))
        await ledger.record(Confirmation("blob", "mounted", "reg:5000", "b", D, 10))
        await ledger.record(Confirmation("tag", "tagged", "reg:5000", "a", D, tag="v1"))
        assert (await ledger.lookup("reg:5000", "a", D)) is not None
        assert await ledger.lookup("other:5000", "a", D) is None
        assert await ledger.locate("reg:5000", D) == ["a", "b"]
        assert await ledger.tagged("reg:5000", "a", "v1") == D
        assert await ledger.tagged("reg:5000", "b", "v1") is None
        progress = UploadProgress("c", D, "/v2/c/blobs/uploads/x", 1024)
        await ledger.record_progress("reg:5000", progress)
        assert await ledger.upload_progress("reg:5000", "c", D) == progress
        await ledger.record(Confirmation("blob", "uploaded", "reg:5000", "c", D, 10))
        assert await ledger.upload_progress("reg:5000", "c", D) is None
        assert len(ledger.history) == 4

    asyncio.run(main())


def test_report_json_and_summary() -> None:
    report = CopyReport(manifests_pushed=2, blobs_uploaded=3, blobs_mounted=1, bytes_sent=2048)
    report.jobs = [JobResult(source="a", destinations=["b"], status="copied", digest=D)]
    report.requests = {"reg": {"blob_put": 3, "bytes_sent": 2048, "retries": 1}}
    report.retries = 1
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is True and data["new_blobs"] == 4
    assert data["jobs"][0]["digest"] == D
    line = summary_line(report)
    assert "2 manifests copied" in line and "3 blobs copied, 1 mounted" in line
    assert "3 requests" in line and "1 retry" in line
    assert request_lines(report) == ["Requests reg: blob_put=3 retries=1"]
    raise_for_report(report)


def test_incomplete_report_raises_the_documented_errors() -> None:
    report = CopyReport(failures=["blob x: boom"])
    report.jobs = [JobResult(source="a", destinations=["b"], status="failed", source_digest=D)]
    with pytest.raises(IncompleteCopyError) as info:
        raise_for_report(report)
    assert info.value.exit_code == 9 and "boom" in str(info.value)
    unreadable = CopyReport(failures=["a: not found"])
    unreadable.jobs = [JobResult(source="a", destinations=["b"], status="failed")]
    with pytest.raises(NotFoundError):
        raise_for_report(unreadable, NotFoundError("manifest 'x' not found"))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8MiB", 8 << 20),
        ("16M", 16 << 20),
        ("512k", 512 << 10),
        ("1048576", 1 << 20),
        ("1g", 1 << 30),
    ],
)
def test_chunk_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1M", "0", "8XB"])
def test_bad_chunk_sizes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)
