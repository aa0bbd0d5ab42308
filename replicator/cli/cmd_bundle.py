"""``replicator bundle create|verify|import|show``: air-gap bundles (docs/BUNDLES.md).

* ``bundle create CONFIG [--job NAME]... -o DIR`` (or ``bundle create -o DIR
  SRC...``) copies the selected graphs into a new bundle directory, in parts of
  at most ``--max-part-size``; ``--base RECEIPT`` makes it incremental;
  ``--sign-key KEY`` signs ``bundle.json``.  A killed create resumes when rerun.
* ``bundle verify DIR [--key PUBKEY]`` checks everything and writes nothing:
  exit 0, or 6 with every problem listed.
* ``bundle import DIR DEST [--key PUBKEY] [--receipt FILE]`` verifies first
  (nothing is written to DEST unless the bundle is sound), checks the base of
  an incremental bundle at DEST, copies every graph (tags last) and writes a
  receipt.  A killed import resumes when rerun.
* ``bundle show DIR`` prints what is inside.

Parsing and printing only: the work is in :mod:`replicator.bundle`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replicator.cli.context import CliContext
from replicator.cli.output import format_table, human_size, pluralize, short_digest
from replicator.errors import EXIT_INTERRUPTED, UsageError

if TYPE_CHECKING:
    from replicator.sync import JournalChoice, RunOutcome

# The copy machinery (sync, engine) is imported by ``create`` and ``import`` only:
# ``verify`` and ``show`` start without it.


def _size_arg(text: str) -> int:
    from replicator.cli.cmd_copy import _size_arg as size_arg

    return size_arg(text)


def _positive(text: str) -> int:
    from replicator.cli.cmd_copy import _positive as positive

    return positive(text)


def _default_journal() -> str:
    from replicator.journal.store import default_journal_path

    return str(default_journal_path())


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``bundle`` with its ``create``, ``verify``, ``import`` and ``show`` subcommands."""
    parser = subparsers.add_parser(
        "bundle",
        help="air-gap bundles: create, verify, import, show",
        description="Sealed, split, incremental bundles for air-gapped mirroring (docs/BUNDLES.md).",
    )
    sub = parser.add_subparsers(dest="bundle_command", metavar="<subcommand>", required=True)
    _register_create(sub)
    verify = sub.add_parser("verify", help="check a bundle completely; write nothing")
    verify.add_argument("directory", metavar="DIR", help="the bundle directory")
    verify.add_argument(
        "--key", metavar="PUBKEY", help="require a signature by this public key (PEM)"
    )
    verify.set_defaults(handler=run_verify)
    _register_import(sub)
    show = sub.add_parser("show", help="what a bundle holds: repositories, tags, sizes, base")
    show.add_argument("directory", metavar="DIR", help="the bundle directory")
    show.set_defaults(handler=run_show)


def _journal_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--journal",
        metavar="PATH",
        help="resume journal (default: the user's state directory); a rerun resumes",
    )
    p.add_argument("--no-journal", action="store_true", help="run without a journal")
    p.add_argument(
        "--concurrency",
        type=_positive,
        default=32,
        metavar="N",
        help="global cap on concurrent requests (default 32)",
    )


def _register_create(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "create",
        help="copy graphs into a new bundle (from a sync config or references)",
        description=(
            "Copy the graphs a sync config's jobs select (bundle create CONFIG -o DIR), or the "
            "references given (bundle create -o DIR SRC...), with their referrers, into a bundle."
        ),
    )
    p.add_argument(
        "inputs", nargs="+", metavar="CONFIG|SRC", help="a sync config file, or references"
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the bundle directory (new or empty)"
    )
    p.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="NAME",
        help="only this config job (repeatable)",
    )
    p.add_argument(
        "--max-part-size",
        type=_size_arg,
        default=4 * 1024**3,
        metavar="SIZE",
        help="largest part file (default 4GiB); larger blobs are split across parts",
    )
    p.add_argument(
        "--base", metavar="RECEIPT", help="leave out what this receipt (or bundle.json) holds"
    )
    p.add_argument("--base-key", metavar="PUBKEY", help="require the base to be signed by this key")
    p.add_argument("--sign-key", metavar="KEY", help="sign bundle.json with this private key (PEM)")
    p.add_argument(
        "--fresh", action="store_true", help="discard an unfinished create in DIR: start over"
    )
    _journal_flags(p)
    p.set_defaults(handler=run_create)


def _register_import(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "import",
        help="verify a bundle, then copy it into a registry or layout; write a receipt",
        description=(
            "Verify DIR (nothing is written when it fails), then copy every graph into DEST: "
            "HOST[/PREFIX] or ocidir://PATH. Writes a receipt for the next incremental bundle."
        ),
    )
    p.add_argument("directory", metavar="DIR", help="the bundle directory")
    p.add_argument("destination", metavar="DEST", help="HOST[/PREFIX] or ocidir://PATH")
    p.add_argument("--key", metavar="PUBKEY", help="require a signature by this public key (PEM)")
    p.add_argument(
        "--receipt", metavar="FILE", help="where to write the receipt (default DIR.receipt.json)"
    )
    p.add_argument("--sign-key", metavar="KEY", help="sign the receipt with this private key (PEM)")
    _journal_flags(p)
    p.set_defaults(handler=run_import)


def _journal_choice(args: argparse.Namespace, fresh: bool = False) -> JournalChoice:
    from replicator.sync import JournalChoice

    if args.no_journal:
        return JournalChoice.off()
    return JournalChoice.at(args.journal or _default_journal(), fresh=fresh)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def _directory(value: str) -> Path:
    return Path(value).expanduser().resolve()


# ------------------------------------------------------------------------ create


def _create_request(args: argparse.Namespace, ctx: CliContext) -> tuple[Any, Any]:
    """The create request and the registry settings per host (the config's over the flags')."""
    from replicator.bundle.create import CreateRequest
    from replicator.sync import concurrency_limits

    config = None
    references: tuple[str, ...] = ()
    options_for: Any = ctx.registry_options
    if len(args.inputs) == 1 and os.path.isfile(args.inputs[0]):
        from replicator.sync.config import load_config

        config = load_config(Path(args.inputs[0]).expanduser())

        def options_for(host: str) -> Any:
            return config.registry_options(host, base=ctx.registry_options(host))

    else:
        if args.job:
            raise UsageError("--job needs a sync config file (the first argument is not a file)")
        references = tuple(args.inputs)
    request = CreateRequest(
        output=Path(args.output).expanduser(),
        config=config,
        job_names=tuple(args.job),
        references=references,
        max_part_size=args.max_part_size,
        base=_path(args.base),
        base_key=_path(args.base_key),
        sign_key=_path(args.sign_key),
        journal=_journal_choice(args, args.fresh),
        limits=concurrency_limits(args.concurrency),
        fresh=args.fresh,
        command=("bundle", "create", *args.inputs, "-o", str(args.output)),
    )
    return request, options_for


async def run_create(args: argparse.Namespace, ctx: CliContext) -> int:
    """Create or resume a bundle; print what it holds."""
    from replicator.bundle.create import create_bundle
    from replicator.cli import heap
    from replicator.cli.cmd_copy import _message_printer, _observer
    from replicator.sync import StopRequest

    request, options_for = _create_request(args, ctx)
    observer, display = _observer(ctx)
    stop = StopRequest()
    with display, stop.on_signals():
        outcome = await create_bundle(
            request,
            options_for=options_for,
            observer=observer,
            stop=stop,
            on_message=_message_printer(ctx),
        )
    heap.settle()
    done = outcome.document is not None
    code = 0 if done else outcome.exit_code
    _report_run(ctx, outcome.run, code, lambda: _print_created(ctx, outcome), raise_error=not done)
    for source in outcome.refused:
        ctx.err.write(f"Refused by its promotion gate, left out: {source}\n")
    return outcome.exit_code


def _print_created(ctx: CliContext, outcome: Any) -> None:
    doc = outcome.document
    tags, manifests, blobs = doc.content.counts()
    out = ctx.out
    out.write(
        f"Bundled {pluralize(tags, 'tag')} of {pluralize(len(doc.content.repositories), 'repository', 'repositories')} "
        f"into {outcome.directory}: {pluralize(manifests, 'manifest')}, {pluralize(blobs, 'blob')}, "
        f"{pluralize(len(doc.parts), 'part')}, {human_size(doc.size)}\n"
    )
    if doc.base is not None:
        out.write(f"Incremental to {doc.base.kind} {doc.base.content_digest}\n")
    out.write(f"Content digest: {doc.content_digest}\n")


# ------------------------------------------------------------------------ verify


async def run_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    """Verify; print a summary, or raise the error listing every problem (exit 6)."""
    from replicator.bundle.importing import configured_key
    from replicator.bundle.signing import VerifyKey
    from replicator.bundle.verify import verify_bundle

    key_path = configured_key(_path(args.key))
    key = VerifyKey.load(key_path) if key_path else None
    directory = _directory(args.directory)
    result = await verify_bundle(directory, key)
    for note in result.notes:
        ctx.err.write(f"Note: {note}\n")
    if not result.ok:
        raise result.error()
    doc = result.document
    assert doc is not None
    tags, manifests, blobs = doc.content.counts()
    signature = f"verified with {key.path}" if result.signed and key else "not checked"
    ctx.out.write(
        f"Verified {directory}: {pluralize(len(doc.parts), 'part')}, {human_size(result.bytes_read)} read; "
        f"{pluralize(tags, 'tag')}, {pluralize(manifests, 'manifest')}, {pluralize(blobs, 'blob')}; "
        f"signature {signature}\n"
    )
    if doc.base is not None:
        ctx.out.write(
            f"Incremental: relies on {pluralize(len(result.base_needs), 'item')} of its base "
            f"({doc.base.kind} {doc.base.content_digest})\n"
        )
    ctx.out.write(f"Content digest: {doc.content_digest}\n")
    return 0


# ------------------------------------------------------------------------ import


async def run_import(args: argparse.Namespace, ctx: CliContext) -> int:
    """Verify, import, write the receipt; print the results."""
    from replicator.bundle.importing import ImportRequest, import_bundle
    from replicator.cli import heap
    from replicator.cli.cmd_copy import _message_printer, _observer
    from replicator.sync import StopRequest, concurrency_limits

    request = ImportRequest(
        bundle=_directory(args.directory),
        destination=args.destination,
        key=_path(args.key),
        receipt=_path(args.receipt),
        sign_key=_path(args.sign_key),
        journal=_journal_choice(args),
        limits=concurrency_limits(args.concurrency),
        command=("bundle", "import", args.directory, args.destination),
    )
    observer, display = _observer(ctx)
    stop = StopRequest()
    with display, stop.on_signals():
        outcome = await import_bundle(
            request,
            options_for=ctx.registry_options,
            observer=observer,
            stop=stop,
            on_message=_message_printer(ctx),
        )
    heap.settle()

    def printed() -> None:
        doc = outcome.verified.document
        assert doc is not None and outcome.receipt is not None
        tags, manifests, blobs = doc.content.counts()
        ctx.out.write(
            f"Imported {pluralize(tags, 'tag')}, {pluralize(manifests, 'manifest')} and "
            f"{pluralize(blobs, 'blob')} into {outcome.receipt.destination}\n"
        )
        ctx.out.write(f"Receipt: {outcome.receipt_path}\n")

    return _report_run(ctx, outcome.run, outcome.exit_code, printed)


def _report_run(
    ctx: CliContext, run: RunOutcome | None, code: int, success: Any, *, raise_error: bool = True
) -> int:
    """The run's summary; the result lines on success; the run's error raised otherwise."""
    from replicator.cli.cmd_copy import request_lines, summary_line

    if run is not None and run.status == "interrupted":
        return EXIT_INTERRUPTED
    if code == 0:
        success()
    if run is not None:
        ctx.out.write(summary_line(run.report) + "\n")
        for line in request_lines(run.report):
            ctx.out.write(line + "\n")
        if run.error is not None and raise_error:
            raise run.error
    return code


# -------------------------------------------------------------------------- show


async def run_show(args: argparse.Namespace, ctx: CliContext) -> int:
    """Print the bundle's repositories, tags, graph counts, sizes and base (no verification)."""
    from replicator.bundle.documents import load_bundle_document

    doc, _raw, actual = load_bundle_document(_directory(args.directory))
    out = ctx.out
    tags, manifests, blobs = doc.content.counts()
    blob_bytes = sum(b.size for b in doc.content.blobs.values())
    out.write(f"Bundle {doc.id}, created {doc.created} by {doc.tool}\n")
    out.write(
        f"{pluralize(len(doc.content.repositories), 'repository', 'repositories')}, {pluralize(tags, 'tag')}, "
        f"{pluralize(manifests, 'manifest')}, {pluralize(blobs, 'blob')} ({human_size(blob_bytes)})\n"
    )
    out.write(
        f"{pluralize(len(doc.parts), 'part')} of at most {human_size(doc.max_part_size)}, "
        f"{human_size(doc.size)} in all\n"
    )
    if doc.base is not None:
        where = f" at {doc.base.destination}" if doc.base.destination else ""
        out.write(f"Incremental to {doc.base.kind} {doc.base.content_digest}{where}\n")
    stated = doc.content_digest
    out.write(
        f"Content digest: {stated}{'' if stated == actual else ' (DOES NOT MATCH: run verify)'}\n"
    )
    rows = []
    for name, repo in sorted(doc.content.repositories.items()):
        for tag, digest in sorted(repo.tags.items()):
            rows.append((name, tag, short_digest(digest), len(repo.manifests), len(repo.blobs)))
        for digest in sorted(repo.roots):
            rows.append((name, "-", short_digest(digest), len(repo.manifests), len(repo.blobs)))
    if rows:
        out.write(
            "\n" + format_table(("REPOSITORY", "TAG", "ROOT", "MANIFESTS", "BLOBS"), rows) + "\n"
        )
    return 0
