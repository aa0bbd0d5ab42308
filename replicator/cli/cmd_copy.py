"""``replicator copy [-r] SRC DST [DST...]``: copy artifact graphs (a thin front end).

Parses the command line into a :class:`~replicator.sync.RunRequest`, hands it to
the run layer (:func:`~replicator.sync.run_copy`, which owns the jobs, the
journal's run, the graceful stop and the report) and formats the outcome:
ORAS-like result lines on stdout (``Copied SRC => DST``, ``Up to date: SRC =>
DST``, ``Digest: ...``, the summary), messages (warnings, ``Resuming run ...``,
``Interrupted: ...``) on stderr with the logs — as JSON events with
``--log-format json``.

Each SRC/DST is a registry reference or ``ocidir://PATH[:TAG|@DIGEST]``.  A DST
may name several tags (``host/repo:t1,t2``); a DST without tag or digest takes
the source's tag.  With ``--all-tags`` SRC and DST name repositories and every
tag of SRC is copied except referrers fallback tags (``sha256-...``), whose
content travels as referrers.  ``--from-file FILE`` reads ``SRC DST [DST...]``
lines (``#`` comments) and copies them all in one run; every bad line is reported.

``--platform`` on an index root: with one platform selected, that platform's
manifest itself becomes the destination root (its digest is preserved, the
index is not copied); with several, a new index listing only the selected
manifests (and the Docker attestation manifests describing them) is written —
its digest differs from the source index, and the new digest is printed and
reported.

Exit 0 only when every selected node is present at every destination; else
:class:`~replicator.errors.IncompleteCopyError` (exit 9), or the error that
made a source unreadable (e.g. exit 3 for an unknown tag), 8 when the journal
fails, 11 when another process runs the same copy on the same journal
(``--wait-lock`` waits for it instead), 75 after SIGTERM/SIGINT
(docs/RESUME.md: the rerun resumes).  The
journal keeps a record of the command built from what was parsed: references
and selecting flags, never a credential flag.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path
from typing import Any

from replicator.cli import heap
from replicator.cli.context import CliContext
from replicator.cli.lockflags import add_wait_lock_flag, wait_lock
from replicator.cli.output import human_duration, human_size, pluralize
from replicator.engine import CopyOptions, CopyReport
from replicator.engine.events import CopyObserver, LogObserver
from replicator.errors import EXIT_INTERRUPTED, UsageError
from replicator.graph.filters import GraphFilter
from replicator.journal.store import default_journal_path
from replicator.oci.descriptor import Platform
from replicator.sync import (
    JobSpec,
    JournalChoice,
    Message,
    RunOutcome,
    RunRequest,
    StopRequest,
    concurrency_limits,
    reference_job,
    repository_job,
    run_copy,
)
from replicator.sync.pairs import read_pairs
from replicator.targets.base import NOT_REQUESTS

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse ``8MiB``, ``16M``, ``512k``, ``1048576`` into bytes (binary units).

    Raises :class:`UsageError` for anything else or for a size below 1 byte.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"invalid size {text!r}: expected e.g. 8MiB, 16M or 1048576")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise UsageError(f"invalid size {text!r}: must be at least 1 byte")
    return int(value)


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``copy`` command (alias ``cp``)."""
    p = subparsers.add_parser(
        "copy",
        aliases=["cp"],
        help="copy an artifact graph between registries and OCI layouts",
        description=(
            "Copy SRC (and with -r its referrers: signatures, SBOMs, attestations) to "
            "every DST. References: host/repo:tag, host/repo@sha256:..., "
            "ocidir://PATH[:TAG|@DIGEST]. A DST may name several tags (repo:t1,t2)."
        ),
    )
    p.add_argument(
        "refs", nargs="*", metavar="SRC DST", help="source, then one or more destinations"
    )
    p.add_argument("-r", "--recursive", action="store_true", help="copy referrers too, recursively")
    p.add_argument(
        "--no-referrers", action="store_true", help="never copy referrers (overrides -r)"
    )
    p.add_argument(
        "--all-tags", action="store_true", help="SRC/DST are repositories: copy every tag"
    )
    p.add_argument("--from-file", metavar="FILE", help="lines of 'SRC DST [DST...]' ('#' comments)")
    _add_selection_flags(p)
    _add_run_flags(p)
    p.set_defaults(handler=run)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags that change how the copy runs, never what it selects (not in the run key)."""
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=32,
        metavar="N",
        help="global cap on concurrent requests (default 32)",
    )
    p.add_argument(
        "--chunk-size",
        type=_size_arg,
        default=None,
        metavar="SIZE",
        help="upload blobs larger than SIZE in chunks of SIZE (8MiB, 16M...); smaller ones in one request",
    )
    p.add_argument("--report", metavar="FILE", help="write a JSON summary to FILE")
    p.add_argument(
        "--keep-going", action="store_true", help="copy everything possible before failing"
    )
    p.add_argument(
        "--deep-check",
        action="store_true",
        help=(
            "ask the destination about every manifest, also those a present index or a "
            "referrers listing already vouches for: finds and copies again manifests "
            "deleted there out of band (one request per manifest)"
        ),
    )
    p.add_argument(
        "--journal",
        metavar="PATH",
        help=(
            f"resume journal (default {default_journal_path()}). The same run = same "
            "sources, destinations and selecting options (-r, --no-referrers, --all-tags, "
            "--artifact-type, --exclude-artifact-type, --depth, --platform); rerunning it "
            "after an interruption continues where it stopped"
        ),
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore an unfinished run of this command: start over"
    )
    p.add_argument("--no-journal", action="store_true", help="run without a journal (no resume)")
    add_wait_lock_flag(p, "the same copy")


def _add_selection_flags(p: argparse.ArgumentParser) -> None:
    """Flags that change what the copy selects (part of the run key, docs/RESUME.md)."""
    p.add_argument(
        "--artifact-type",
        action="append",
        default=[],
        metavar="T",
        help="only referrers whose artifactType matches the glob T (repeatable)",
    )
    p.add_argument(
        "--exclude-artifact-type",
        action="append",
        default=[],
        metavar="T",
        help="skip referrers whose artifactType matches the glob T (repeatable)",
    )
    p.add_argument(
        "--depth",
        type=_depth,
        default=None,
        metavar="N",
        help="referrer levels to follow (default: all)",
    )
    p.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="copy only these platforms of an index root (repeatable): with one, that manifest becomes the root (digest kept); with several, a new index of them is written (new digest, printed)",
    )


def build_request(args: argparse.Namespace) -> RunRequest:
    """The run the parsed command line asks for (no I/O but reading ``--from-file``).

    Raises :class:`UsageError` (exit 2) for missing references, and the
    reference and pairs-file errors of :mod:`replicator.sync` (exit 2).
    """
    return RunRequest(
        jobs=tuple(_jobs(args)),
        options=CopyOptions(
            filter=_filter(args),
            keep_going=args.keep_going,
            chunk_size=args.chunk_size,
            deep_check=args.deep_check,
        ),
        limits=concurrency_limits(args.concurrency),
        journal=_journal_choice(args),
        command=command_record(args),
        report_path=Path(args.report).expanduser() if args.report else None,
    )


def _jobs(args: argparse.Namespace) -> list[JobSpec]:
    """The jobs of the positionals, then of ``--from-file``."""
    jobs: list[JobSpec] = []
    if args.refs:
        if len(args.refs) < 2:
            raise UsageError("copy needs SRC and at least one DST")
        build = repository_job if args.all_tags else reference_job
        jobs.append(build(args.refs[0], args.refs[1:], origin="command line"))
    if args.from_file:
        path = Path(args.from_file)
        jobs.extend(
            read_pairs(path, repositories=args.all_tags, label=f"--from-file {args.from_file}")
        )
    if not jobs:
        raise UsageError("copy needs SRC and DST, or --from-file FILE")
    return jobs


def _filter(args: argparse.Namespace) -> GraphFilter:
    return GraphFilter(
        referrers=bool(args.recursive) and not args.no_referrers,
        max_depth=args.depth,
        include_types=tuple(args.artifact_type),
        exclude_types=tuple(args.exclude_artifact_type),
        platforms=tuple(Platform.parse(p) for p in args.platform),
    )


def _journal_choice(args: argparse.Namespace) -> JournalChoice:
    if args.no_journal:
        return JournalChoice.off()
    return JournalChoice.at(
        args.journal or default_journal_path(), fresh=args.fresh, wait_lock=wait_lock(args)
    )


def command_record(args: argparse.Namespace) -> tuple[str, ...]:
    """What the journal keeps of the command: the copy's own flags and references.

    Built from the parsed arguments, so no global flag (credentials, TLS) and
    no value argparse took for one can ever be part of it.
    """
    words = ["copy"]
    for flag, on in (
        ("-r", args.recursive),
        ("--no-referrers", args.no_referrers),
        ("--all-tags", args.all_tags),
        ("--deep-check", args.deep_check),
        ("--keep-going", args.keep_going),
    ):
        if on:
            words.append(flag)
    for flag, values in (
        ("--artifact-type", args.artifact_type),
        ("--exclude-artifact-type", args.exclude_artifact_type),
        ("--platform", args.platform),
    ):
        for value in values:
            words += [flag, value]
    if args.depth is not None:
        words += ["--depth", str(args.depth)]
    if args.from_file:
        words += ["--from-file", str(args.from_file)]
    return (*words, *args.refs)


def _observer(ctx: CliContext) -> tuple[CopyObserver, Any]:
    """The live display on a terminal (not with JSON logs), else log events."""
    if ctx.is_tty and not ctx.json_logs:
        from replicator.observe.progress import TerminalProgress

        progress = TerminalProgress()
        return progress, progress

    return LogObserver(), contextlib.nullcontext()


def _message_printer(ctx: CliContext) -> Any:
    """Messages on stderr as lines; with JSON logs they are log events already."""

    def show(message: Message) -> None:
        if not ctx.json_logs:
            ctx.err.write(message.line() + "\n")
            ctx.err.flush()

    return show


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Parse, run, format: results on stdout; raise the run's error for main to report."""
    request = build_request(args)
    observer, display = _observer(ctx)
    stop = StopRequest()
    with display, stop.on_signals():
        outcome = await run_copy(
            request,
            targets=ctx.targets,
            observer=observer,
            stop=stop,
            on_message=_message_printer(ctx),
            before_network=heap.settle,
        )
    if outcome.status == "interrupted":
        return EXIT_INTERRUPTED
    if outcome.ok and not outcome.report.jobs:
        ctx.out.write("Nothing to copy: the source repository has no tags\n")
    elif outcome.report.jobs:
        print_results(ctx.out, outcome)
    if outcome.error is not None:
        raise outcome.error
    return 0


def print_results(out: Any, outcome: RunOutcome) -> None:
    """Result lines per job (copied or up to date), then the summary and request counts."""
    report = outcome.report
    for index, job in enumerate(report.jobs):
        state = outcome.job_state(index)
        if state == "failed":
            continue
        verb = "Copied" if state == "copied" else "Up to date:"
        for dst in job.destinations:
            out.write(f"{verb} {job.source} => {dst}\n")
        if job.note:
            out.write(f"Note: {job.note}\n")
        out.write(f"Digest: {job.digest}\n")
    out.write(summary_line(report) + "\n")
    for line in request_lines(report):
        out.write(line + "\n")


def request_lines(report: CopyReport) -> list[str]:
    """``Requests <target>: manifest_get=3 blob_put=2 ...`` per target (non-zero kinds)."""
    lines = []
    for where, counts in sorted(report.requests.items()):
        kinds = " ".join(
            f"{k}={v}" for k, v in counts.items() if v and k not in ("bytes_sent", "bytes_received")
        )
        if kinds:
            lines.append(f"Requests {where}: {kinds}")
    return lines


def summary_line(report: CopyReport) -> str:
    """One line: manifests and blobs copied/skipped/mounted, bytes, requests, time."""
    requests = sum(
        v for counts in report.requests.values() for k, v in counts.items() if k not in NOT_REQUESTS
    )
    counted = (
        f"{pluralize(requests, 'request')}, {pluralize(report.retries, 'retry', 'retries')}; "
        if report.requests
        else ""
    )
    return (
        f"Summary: {pluralize(report.manifests_pushed, 'manifest')} copied, "
        f"{report.manifests_skipped} skipped; "
        f"{pluralize(report.blobs_uploaded, 'blob')} copied, {report.blobs_mounted} mounted, "
        f"{report.blobs_skipped} skipped; {human_size(report.bytes_sent)} sent; "
        f"{counted}{human_duration(report.wall_time)}"
    )
