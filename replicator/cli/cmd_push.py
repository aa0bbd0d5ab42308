"""``replicator push``: push files and directories as an OCI artifact (ORAS-compatible).

``replicator push REF [FILE[:MEDIATYPE] | DIR]... [--artifact-type T]
[-a KEY=VALUE]... [--annotation-file F] [--concurrency N]``

Output, one line per blob then a summary, as ``oras push`` prints it::

    Uploading 2fdeac43552b readme.md
    Uploaded  2fdeac43552b readme.md
    Pushed [registry] 127.0.0.1:5000/samples/artifact:readme
    ArtifactType: readme/example
    Digest: sha256:...

This module also holds the argument and event plumbing ``attach`` shares.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from replicator.artifacts.files import (
    DEFAULT_ARTIFACT_TYPE,
    MANIFEST_KEY,
    load_annotation_file,
    merge_annotations,
    parse_annotation,
    parse_file_arg,
)
from replicator.artifacts.push import (
    DEFAULT_PUSH_CONCURRENCY,
    ArtifactSpec,
    check_artifact_type,
    push_artifact,
)
from replicator.cli.context import CliContext
from replicator.cli.output import field_line, status_line, target_kind, write_line
from replicator.errors import UsageError
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import split_tags


class _IntermixedMixin(argparse.ArgumentParser):
    """Let positionals and options interleave (``push REF --artifact-type T FILE...``).

    Plain argparse consumes all positionals of one contiguous run at once, so
    files given after an option would be rejected; the intermixed parse reads
    options first, then every positional.
    """

    _intermixed_active = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixed_active:
            return super().parse_known_args(args, namespace)
        self._intermixed_active = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed_active = False


def allow_intermixed(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` accept positionals after options (see :class:`_IntermixedMixin`)."""
    base = type(parser)
    parser.__class__ = type(f"Intermixed{base.__name__}", (_IntermixedMixin, base), {})


def add_artifact_arguments(parser: argparse.ArgumentParser, *, files_required: bool) -> None:
    """The flags ``push`` and ``attach`` share: files, annotations, concurrency."""
    parser.add_argument(
        "files",
        nargs="+" if files_required else "*",
        metavar="FILE[:MEDIATYPE]|DIR",
        help="files (one layer each) and directories (one tar+gzip layer each)",
    )
    parser.add_argument(
        "-a",
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="manifest annotation (repeatable)",
    )
    parser.add_argument(
        "--annotation-file",
        metavar="PATH",
        help='ORAS annotation file: {"$manifest": {...}, "$config": {...}, "<title>": {...}}',
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_PUSH_CONCURRENCY,
        metavar="N",
        help=f"blobs uploaded at once (default {DEFAULT_PUSH_CONCURRENCY})",
    )


def build_spec(
    args: argparse.Namespace, *, artifact_type: str, subject: Descriptor | None = None
) -> ArtifactSpec:
    """Turn the shared arguments into an :class:`ArtifactSpec`.

    Raises :class:`UsageError` for an ``--artifact-type`` that is not a media
    type or a bad ``--concurrency``, :class:`InputError` for bad files.
    """
    check_artifact_type(artifact_type, label="--artifact-type")
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    files = [parse_file_arg(text) for text in args.files]
    flags = dict(parse_annotation(text) for text in args.annotation)
    from_file = load_annotation_file(args.annotation_file) if args.annotation_file else {}
    return ArtifactSpec(
        files=files,
        artifact_type=artifact_type,
        annotations=merge_annotations(from_file.get(MANIFEST_KEY), flags),
        annotation_file=from_file,
        subject=subject,
    )


def printer(ctx: CliContext) -> Callable[[str, Descriptor, str], None]:
    """An event callback writing ORAS-style ``Uploading``/``Uploaded`` lines to ``ctx.out``."""

    def on_event(action: str, desc: Descriptor, name: str) -> None:
        write_line(ctx.out, status_line(action, desc, name))
        ctx.out.flush()

    return on_event


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``push`` command."""
    parser = subparsers.add_parser(
        "push",
        help="push files and directories as an OCI artifact",
        description=(
            "Push files (one layer each, titled with their base name) and directories\n"
            "(one deterministic tar+gzip layer each, unpacked again by `pull`) as an\n"
            "OCI image manifest with an artifactType and the empty config.\n"
            "REF may name several tags: host/repo:t1,t2."
        ),
    )
    parser.add_argument("reference", metavar="REF", help="host/repository:tag[,tag...]")
    parser.add_argument(
        "--artifact-type",
        default=DEFAULT_ARTIFACT_TYPE,
        metavar="TYPE",
        help=f"artifact type of the manifest (default {DEFAULT_ARTIFACT_TYPE})",
    )
    add_artifact_arguments(parser, files_required=False)
    allow_intermixed(parser)
    parser.set_defaults(handler=run)


async def run(args: argparse.Namespace, ctx: CliContext) -> int:
    """Push the artifact; print blob lines, ``Pushed [...] REF`` and its digest."""
    ref, tags = split_tags(args.reference)
    if not tags and ref.digest is None:
        tags = ("latest",)
    spec = build_spec(args, artifact_type=args.artifact_type)
    target = ctx.open_target(ref, create=True)
    result = await push_artifact(
        target,
        ref.repository,
        spec,
        tags=tags,
        expected_digest=ref.digest if not tags else None,
        concurrency=args.concurrency,
        on_event=printer(ctx),
    )
    write_line(ctx.out, f"Pushed {target_kind(ref)} {args.reference}")
    write_line(ctx.out, field_line("ArtifactType", spec.artifact_type))
    write_line(ctx.out, field_line("Digest", result.descriptor.digest))
    return 0
