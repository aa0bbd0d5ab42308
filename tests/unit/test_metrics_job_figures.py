"""How a sync's outcome becomes per-job figures: results, graphs, and the split of a shared run."""

from __future__ import annotations

from dataclasses import replace

from replicator.engine.report import CopyReport, JobResult
from replicator.errors import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK, NotFoundError
from replicator.oci.descriptor import Descriptor
from replicator.sync import RunOutcome, reference_job
from replicator.sync.expand import Expansion, JobPlan
from replicator.sync.service_figures import DestinationTally, job_figures, job_result
from replicator.sync.syncing import SyncOutcome


def _job(name: str, tag: str) -> object:
    job = reference_job(f"src.example/{name}:{tag}", [f"dst.example/{name}-copy:{tag}"])
    return replace(job, name=name)


def _outcome(
    results: list[tuple[str, str, str]],
    status: str = "copied",
    code: int = EXIT_OK,
    errors: dict[str, Exception] | None = None,
) -> SyncOutcome:
    """``results``: (job name, tag, state) per graph, in the run's order."""
    names = list(dict.fromkeys(n for n, _, _ in results)) + list(errors or {})
    plans = [JobPlan(n, error=(errors or {}).get(n)) for n in dict.fromkeys(names)]  # type: ignore[arg-type]
    jobs = [_job(n, t) for n, t, _ in results]
    report = CopyReport(
        blobs_uploaded=5,
        blobs_skipped=1,
        manifests_pushed=2,
        bytes_sent=999,
        jobs=[
            JobResult(f"src.example/{n}:{t}", [], status="pending" if s == "pending" else s, name=n)  # type: ignore[arg-type]
            for n, t, s in results
        ],
    )
    states = ["failed" if s == "pending" else s for _, _, s in results]
    run = RunOutcome(report, status, code, job_states=states)  # type: ignore[arg-type]
    return SyncOutcome(Expansion(plans, jobs), run, code)  # type: ignore[arg-type]


def test_results_by_job() -> None:
    out = _outcome(
        [
            ("ok", "v1", "copied"),
            ("ok", "v2", "up-to-date"),
            ("gate", "v1", "refused"),
            ("gate", "v2", "copied"),
            ("bad", "v1", "failed"),
            ("bad", "v2", "copied"),
        ],
        status="failed",
        code=EXIT_INCOMPLETE,
        errors={"unlisted": NotFoundError("no such repository")},
    )
    assert job_result(out, "ok") == "success"
    assert job_result(out, "gate") == "refused"
    assert job_result(out, "bad") == "failed"
    assert job_result(out, "unlisted") == "failed"


def test_an_interrupted_run_interrupts_only_the_jobs_it_cut_short() -> None:
    out = _outcome(
        [("done", "v1", "copied"), ("cut", "v1", "copied"), ("cut", "v2", "pending")],
        status="interrupted",
        code=EXIT_INTERRUPTED,
    )
    assert job_result(out, "done") == "success"
    assert job_result(out, "cut") == "interrupted"
    figures = job_figures(out, finished=10.0, duration=2.0)
    assert figures["cut"].graphs == {"copied": 1}  # the pending graph is not a failure


def test_a_run_of_one_job_gives_it_the_report_s_counters() -> None:
    out = _outcome([("only", "v1", "copied"), ("only", "v2", "refused")])
    (fig,) = job_figures(out, finished=10.0, duration=2.0).values()
    assert fig.result == "refused"
    assert fig.graphs == {"copied": 1, "refused": 1} and fig.gate_refusals == 1
    assert (fig.blobs_copied, fig.blobs_skipped, fig.manifests_copied, fig.bytes_sent) == (
        5,
        1,
        2,
        999,
    )


def _blob(size: int) -> Descriptor:
    return Descriptor("application/octet-stream", "sha256:" + f"{size:064x}", size)


def test_a_shared_run_is_split_by_the_destination_repository_each_job_writes() -> None:
    out = _outcome([("a", "v1", "copied"), ("b", "v1", "copied")])
    tally = DestinationTally()
    tally.blob_finished(_blob(100), "uploaded", "dst.example/a-copy")
    tally.blob_finished(_blob(7), "exists", "dst.example/a-copy")
    tally.blob_finished(_blob(50), "uploaded", "dst.example/b-copy")
    tally.blob_finished(_blob(60), "mounted", "dst.example/b-copy")
    tally.manifest_finished(_blob(1), "pushed", "dst.example/b-copy")
    tally.blob_finished(_blob(1), "uploaded", "elsewhere.example/x")  # no job's: not counted
    figures = job_figures(out, finished=10.0, duration=2.0, tally=tally)
    a, b = figures["a"], figures["b"]
    assert (a.blobs_copied, a.blobs_skipped, a.bytes_sent, a.manifests_copied) == (1, 1, 100, 0)
    assert (b.blobs_copied, b.blobs_mounted, b.bytes_sent, b.manifests_copied) == (1, 1, 50, 1)
