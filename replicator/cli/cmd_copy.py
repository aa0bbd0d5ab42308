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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

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
from replicator.engine.limits import Limits, LimitSettings
from replicator.engine.report import CopyReport
from replicator.errors import ConfigError, InputError, UsageError
from replicator.graph.filters import GraphFilter
from replicator.oci.descriptor import Platform
from replicator.oci.reference import (
    Reference,
    is_referrers_tag,
    parse_reference,
    parse_repository,
    split_tags,
)

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
    p.set_defaults(handler=run)


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
                words = shlex.split(line)
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
        from replicator.observe.progress import RichProgress

        progress = RichProgress()
        return progress, progress
    return LogObserver(), contextlib.nullcontext()


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Run the copy; print results and the summary; raise unless complete."""
    flt = _filter(args)
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
    observer, display = _observer(ctx)
    engine = CopyEngine(
        CopyOptions(filter=flt, keep_going=args.keep_going, chunk_size=args.chunk_size),
        limits=Limits(settings),
        observer=observer,
    )
    try:
        with display:
            report = await engine.run(jobs)
    except BaseException:
        # Interrupted (SIGTERM/SIGINT) or a bug: still leave what is known behind.
        if args.report:
            with contextlib.suppress(Exception):
                _write_report(args.report, engine.report)
        raise
    _print_results(out, report)
    if args.report:
        _write_report(args.report, report)
    raise_for_report(report, first_root_error(engine))
    return 0


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
