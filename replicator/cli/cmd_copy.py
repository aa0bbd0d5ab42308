"""``replicator copy [-r] SRC DST [DST...]``: copy artifact graphs.

Parses the command line into :class:`~replicator.engine.copier.CopyJob` objects,
runs them in one :class:`~replicator.engine.copier.CopyEngine` (shared limits
and deduplication), prints ORAS-like results (``Copied SRC => DST``,
``Digest: ...``) and a summary, and writes ``--report FILE`` as JSON.

Each SRC/DST is a registry reference or ``ocidir://PATH[:TAG|@DIGEST]``.  A DST
may name several tags (``host/repo:t1,t2``); a DST without tag or digest takes
the source's tag.  With ``--all-tags`` SRC and DST name repositories and every
tag of SRC is copied except referrers fallback tags (``sha256-...``), whose
content travels as referrers.  ``--from-file FILE`` reads ``SRC DST [DST...]``
lines (``#`` comments) and copies them all in one run.

``--platform`` on an index root: with one platform selected, that platform's
manifest itself becomes the destination root (its digest is preserved, the
index is not copied); with several, a new index listing only the selected
manifests (and the Docker attestation manifests describing them) is written —
its digest differs from the source index, and the new digest is printed and
reported.  Copying the source index byte for byte with only some children is
impossible: registries refuse an index whose children are missing.

Exit 0 only when every selected node is present at every destination; else
:class:`~replicator.errors.IncompleteCopyError` (exit 9), or the error that
made a source unreadable (e.g. exit 3 for an unknown tag).

Resume (docs/RESUME.md): every confirmation goes to the journal (``--journal
PATH``, default ``$XDG_STATE_HOME/replicator/journal.sqlite``; ``--no-journal``
runs without one).  A run is *the same run* when its key matches: the SHA-256
of the normalised sources, destinations (with their tags) and every option that
changes what is selected (``-r``/``--no-referrers``, ``--all-tags``,
``--artifact-type``, ``--exclude-artifact-type``, ``--depth``, ``--platform``);
``--concurrency``, ``--chunk-size``, ``--report``, ``--keep-going`` and global
flags do not count.  Rerunning a command whose last run with that key did not
end ``done`` continues it; ``--fresh`` starts over.  SIGTERM/SIGINT stop the
copy gracefully (uploads pause at an acknowledged chunk), mark the run
``interrupted`` and exit 75.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import structlog

from replicator.cli import heap
from replicator.cli.context import CliContext
from replicator.cli.output import human_duration, human_size, pluralize
from replicator.engine.copier import (
    CopyEngine,
    CopyJob,
    CopyOptions,
    Destination,
    Endpoint,
    first_root_error,
    raise_for_report,
)
from replicator.engine.events import CopyObserver, LogObserver
from replicator.engine.ledger import Ledger
from replicator.engine.limits import Limits, LimitSettings
from replicator.engine.report import CopyReport
from replicator.errors import EXIT_INTERRUPTED, ConfigError, InputError, UsageError
from replicator.graph.filters import GraphFilter
from replicator.journal.ledger import JournalLedger
from replicator.journal.store import DONE, FAILED, INTERRUPTED, Journal, default_journal_path
from replicator.oci.descriptor import Platform
from replicator.oci.reference import (
    Reference,
    is_referrers_tag,
    parse_reference,
    parse_repository,
    split_tags,
)

_log = structlog.get_logger("replicator.copy")

#: How long a graceful stop waits for uploads to reach a chunk boundary.
STOP_GRACE_SECONDS = 30.0

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
    p.set_defaults(handler=run)


_QUOTING = re.compile(r"[\"'\\]")
_SHLEX_BLANKS = re.compile(r"[ \t\r\n]+")


def _pairs(args: argparse.Namespace) -> list[tuple[str, list[str], str]]:
    """``(src, [dst...], where)`` from the positionals and ``--from-file``."""
    pairs: list[tuple[str, list[str], str]] = []
    if args.refs:
        if len(args.refs) < 2:
            raise UsageError("copy needs SRC and at least one DST")
        pairs.append((args.refs[0], list(args.refs[1:]), "command line"))
    if args.from_file:
        path = Path(args.from_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"--from-file {args.from_file}: {exc.__class__.__name__}: cannot read"
            ) from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                # shlex only where quoting occurs (it costs ~40 us a line); without
                # quotes or escapes it splits exactly at these four blanks.
                if _QUOTING.search(line):
                    words = shlex.split(line)
                else:
                    words = [w for w in _SHLEX_BLANKS.split(line) if w]
            except ValueError as exc:
                raise ConfigError(f"{args.from_file}:{number}: {exc}") from None
            if len(words) < 2:
                raise ConfigError(f"{args.from_file}:{number}: expected 'SRC DST [DST...]'")
            pairs.append((words[0], words[1:], f"{args.from_file}:{number}"))
    if not pairs:
        raise UsageError("copy needs SRC and DST, or --from-file FILE")
    return pairs


def _filter(args: argparse.Namespace) -> GraphFilter:
    return GraphFilter(
        referrers=bool(args.recursive) and not args.no_referrers,
        max_depth=args.depth,
        include_types=tuple(args.artifact_type),
        exclude_types=tuple(args.exclude_artifact_type),
        platforms=tuple(Platform.parse(p) for p in args.platform),
    )


def _endpoint(ctx: CliContext, ref: Reference, *, create: bool) -> Endpoint:
    return Endpoint(ctx.open_target(ref, create=create), ref.location, ref.repository)


async def build_jobs(args: argparse.Namespace, ctx: CliContext) -> list[CopyJob]:
    """Turn the command line (and ``--from-file``) into copy jobs."""
    jobs: list[CopyJob] = []
    for src_text, dst_texts, where in _pairs(args):
        try:
            if args.all_tags:
                jobs.extend(await _all_tags_jobs(ctx, src_text, dst_texts))
            else:
                jobs.append(_single_job(ctx, src_text, dst_texts))
        except (UsageError, InputError) as exc:
            if where == "command line":
                raise
            raise ConfigError(f"{where}: {exc}") from None
    return jobs


def _single_job(ctx: CliContext, src_text: str, dst_texts: list[str]) -> CopyJob:
    src_ref = parse_reference(src_text)
    src = _endpoint(ctx, src_ref, create=False)
    dests = []
    for text in dst_texts:
        dst_ref, tags = split_tags(text)
        if not tags and dst_ref.digest is None and src_ref.tag:
            tags = (src_ref.tag,)
            dst_ref = dst_ref.with_tag(src_ref.tag)
        dests.append(
            Destination(
                _endpoint(ctx, dst_ref, create=True),
                tags=tags,
                digest=dst_ref.digest,
                display=_display(dst_ref, tags),
            )
        )
    return CopyJob(src, src_ref.reference, tuple(dests), display=str(src_ref))


def _display(ref: Reference, tags: tuple[str, ...]) -> str:
    if len(tags) > 1:
        return f"{ref}".rsplit(":", 1)[0] + ":" + ",".join(tags)
    return str(ref)


async def _all_tags_jobs(ctx: CliContext, src_text: str, dst_texts: list[str]) -> list[CopyJob]:
    src_repo = parse_repository(src_text)
    dst_repos = [parse_repository(t) for t in dst_texts]
    src = _endpoint(ctx, src_repo, create=False)
    tags = [t for t in await src.target.tags(src_repo.repository) if not is_referrers_tag(t)]
    jobs = []
    for tag in tags:
        src_ref = src_repo.with_tag(tag)
        dests = tuple(
            Destination(
                _endpoint(ctx, d, create=True),
                tags=(tag,),
                display=str(d.with_tag(tag)),
            )
            for d in dst_repos
        )
        jobs.append(CopyJob(src, tag, dests, display=str(src_ref)))
    return jobs


def _observer(ctx: CliContext) -> tuple[CopyObserver, contextlib.AbstractContextManager[Any]]:
    if ctx.is_tty:
        from replicator.observe.progress import TerminalProgress

        progress = TerminalProgress()
        return progress, progress
    return LogObserver(), contextlib.nullcontext()


def run_key(args: argparse.Namespace) -> str:
    """The key that makes two invocations *the same run* (see module doc, docs/RESUME.md).

    SHA-256 of the normalised (source, destinations) pairs, in order, from the
    command line and ``--from-file``, and of every option that changes what is
    selected.  References are normalised by parsing (``docker.io/alpine`` and
    ``alpine`` are the same), destinations keep their tags.
    """
    pairs = []
    for src_text, dst_texts, _ in _pairs(args):
        if args.all_tags:
            pairs.append([_norm_repo(src_text), [_norm_repo(d) for d in dst_texts]])
        else:
            pairs.append(_norm_pair(src_text, dst_texts))
    selection = {
        "pairs": pairs,
        "referrers": bool(args.recursive) and not args.no_referrers,
        "all_tags": bool(args.all_tags),
        "artifact_types": sorted(args.artifact_type),
        "exclude_artifact_types": sorted(args.exclude_artifact_type),
        "depth": args.depth,
        "platforms": sorted(args.platform),
    }
    text = json.dumps(selection, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _norm_repo(text: str) -> str:
    try:
        return str(parse_repository(text))
    except (UsageError, InputError):
        return text  # reported properly when the jobs are built


def _norm_pair(src_text: str, dst_texts: list[str]) -> list[Any]:
    """Normalised source and destinations; a destination without tag takes the source's."""
    try:
        src = parse_reference(src_text)
    except (UsageError, InputError):
        return [src_text, dst_texts]
    dests = []
    for text in dst_texts:
        try:
            ref, tags = split_tags(text)
        except (UsageError, InputError):
            dests.append(text)
            continue
        if not tags and ref.digest is None and src.tag:
            ref, tags = ref.with_tag(src.tag), (src.tag,)
        dests.append(f"{ref}|{','.join(tags)}")
    return [str(src), dests]


def _command_record(args: argparse.Namespace) -> dict[str, Any]:
    """What the journal keeps of the command line (references and flags, no secrets)."""
    argv = [a for a in sys.argv[1:]]
    cleaned: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            cleaned.append("***")
            continue
        if a in ("--password", "-p"):
            skip = True
        elif a.startswith("--password="):
            a = "--password=***"
        cleaned.append(a)
    return {"argv": cleaned or ["copy", *args.refs]}


class _Stop:
    """SIGTERM/SIGINT during a copy: a graceful stop, then a hard one on a second signal."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        self.again = anyio.Event()
        self.signals: list[int] = []

    def __call__(self, signum: int) -> None:
        self.signals.append(int(signum))
        if self.requested.is_set():
            self.again.set()
        self.requested.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        done: list[int] = []
        for sig in (int(signal.SIGTERM), int(signal.SIGINT)):
            try:
                loop.add_signal_handler(sig, self, sig)
                done.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            yield
        finally:
            for sig in done:
                loop.remove_signal_handler(sig)


async def _run_engine(engine: CopyEngine, jobs: list[CopyJob], stop: _Stop) -> CopyReport | None:
    """Run the engine; on a signal stop it gracefully. None when interrupted."""
    interrupted = False
    async with anyio.create_task_group() as tg:

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal interrupted
            await stop.requested.wait()
            interrupted = True
            _log.warning("copy_stopping", signal=stop.signals[0])
            engine.request_stop()
            with anyio.move_on_after(STOP_GRACE_SECONDS):
                async with anyio.create_task_group() as inner:

                    async def second_signal() -> None:
                        await stop.again.wait()
                        inner.cancel_scope.cancel()

                    async def quiet() -> None:
                        await engine.wait_quiet()
                        inner.cancel_scope.cancel()

                    inner.start_soon(second_signal)
                    inner.start_soon(quiet)
            scope.cancel()

        with anyio.CancelScope() as scope:
            tg.start_soon(watch, scope)
            heap.settle()  # everything is imported and built: the copy starts
            report = await engine.run(jobs)
        tg.cancel_scope.cancel()
    return None if interrupted else report


async def _open_journal(args: argparse.Namespace, out: Any) -> Journal | None:
    if args.no_journal:
        return None
    journal = await Journal.open(args.journal or default_journal_path())
    if journal.set_aside is not None:
        message = (
            f"the journal {journal.path} was unreadable ({journal.problem}); it was set aside "
            f"as {journal.set_aside} and this run asks the destinations instead"
        )
        _log.warning("journal_set_aside", path=str(journal.path), moved_to=str(journal.set_aside))
        sys.stderr.write(f"Warning: {message}\n")
    return journal


def _counts(report: CopyReport) -> dict[str, int]:
    return {
        "manifests_pushed": report.manifests_pushed,
        "manifests_skipped": report.manifests_skipped,
        "blobs_uploaded": report.blobs_uploaded,
        "blobs_mounted": report.blobs_mounted,
        "blobs_skipped": report.blobs_skipped,
        "tags_set": report.tags_set,
        "failures": len(report.failures),
    }


async def _cancel_leftover_uploads(
    journal: Journal, run_id: str, jobs: list[CopyJob], ledger: JournalLedger
) -> int:
    """DELETE every upload session the run journalled and never completed."""
    targets = {}
    for job in jobs:
        for d in job.destinations:
            targets[d.endpoint.location] = d.endpoint.target
    cancelled = 0
    for up in journal.uploads(run_id):
        target = targets.get(up.location)
        cancel = getattr(target, "cancel_upload", None)
        if cancel is not None:
            await cancel(up.upload_url)
            cancelled += 1
            _log.info("upload_session_cancelled", location=up.location, digest=up.digest)
        journal.drop_upload(run_id, up.location, up.repository, up.digest)
    return cancelled


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Run the copy; print results and the summary; raise unless complete."""
    flt = _filter(args)
    key = run_key(args) if not args.no_journal else ""
    if args.all_tags:
        # Listing tags talks to registries: their garbage must stay collectable.
        heap.settle()
    jobs = await build_jobs(args, ctx)
    out = ctx.out
    if not jobs:
        out.write("Nothing to copy: the source repository has no tags\n")
        return 0
    settings = LimitSettings(
        concurrency=args.concurrency,
        meta_per_location=min(16, args.concurrency),
        blob_per_location=min(8, args.concurrency),
    )
    journal = await _open_journal(args, out)
    ledger: Ledger | None = None
    run_id = ""
    if journal is not None:
        run_id, resumed = journal.begin_run(key, _command_record(args), fresh=args.fresh)
        jl = JournalLedger(journal, run_id)
        ledger = jl
        if resumed:
            _log.info("run_resumed", run=run_id, confirmations=jl.resumed_entries)
            sys.stderr.write(
                f"Resuming run {run_id} ({jl.resumed_entries} confirmation(s) journalled)\n"
            )
    observer, display = _observer(ctx)
    engine = CopyEngine(
        CopyOptions(
            filter=flt,
            keep_going=args.keep_going,
            chunk_size=args.chunk_size,
            deep_check=args.deep_check,
        ),
        ledger=ledger,
        limits=Limits(settings),
        observer=observer,
    )
    stop = _Stop()
    report: CopyReport | None = None
    try:
        try:
            with display, stop.installed():
                report = await _run_engine(engine, jobs, stop)
        except BaseException as exc:
            # A bug, or a cancellation from outside: still leave what is known behind.
            if args.report:
                with contextlib.suppress(Exception):
                    _write_report(args.report, engine.report)
            if journal is not None:
                with anyio.CancelScope(shield=True):
                    state = INTERRUPTED if _is_cancel(exc) else FAILED
                    journal.finish_run(
                        run_id,
                        state,
                        counts=_counts(engine.report),
                        bytes_moved=engine.report.bytes_sent,
                        error=str(exc) or type(exc).__name__,
                    )
                    await journal.flush()
            raise
        if report is None:
            if args.report:
                _write_report(args.report, engine.report)
            if journal is not None:
                journal.finish_run(
                    run_id,
                    INTERRUPTED,
                    counts=_counts(engine.report),
                    bytes_moved=engine.report.bytes_sent,
                    error="interrupted by a signal",
                )
                await journal.flush()
                where = f"run {run_id}, journal {journal.path}"
            else:
                where = "no journal: --no-journal was given, a rerun starts over"
            sys.stderr.write(f"Interrupted: rerun the same command to resume ({where})\n")
            sys.stderr.flush()
            return EXIT_INTERRUPTED
        if journal is not None:
            if report.ok:
                assert isinstance(ledger, JournalLedger)
                await _cancel_leftover_uploads(journal, run_id, jobs, ledger)
            journal.finish_run(
                run_id,
                DONE if report.ok else FAILED,
                counts=_counts(report),
                bytes_moved=report.bytes_sent,
                error=None if report.ok else (report.failures[:1] or ["incomplete"])[0],
            )
            await journal.flush()
        _print_results(out, report)
        if args.report:
            _write_report(args.report, report)
        raise_for_report(report, first_root_error(engine))
        return 0
    finally:
        if journal is not None:
            with anyio.CancelScope(shield=True):
                await journal.close()


def _is_cancel(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancel(e) for e in exc.exceptions)
    return isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))


def _print_results(out: Any, report: CopyReport) -> None:
    for job in report.jobs:
        if job.status != "copied":
            continue
        for dst in job.destinations:
            out.write(f"Copied {job.source} => {dst}\n")
        if job.note:
            out.write(f"Note: {job.note}\n")
        out.write(f"Digest: {job.digest}\n")
    for warning in report.warnings:
        out.write(f"Warning: {warning}\n")
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
        v
        for counts in report.requests.values()
        for k, v in counts.items()
        if k not in ("bytes_sent", "bytes_received", "retries")
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


def _write_report(path: str, report: CopyReport) -> None:
    try:
        Path(path).expanduser().write_text(
            json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        raise InputError(f"--report {path}: cannot write ({exc.strerror})") from None
