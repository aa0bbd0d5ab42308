"""What every faulted run must satisfy, as functions returning findings (no asserts).

A *finding* is one sentence saying what was wrong; an empty list means the run
held.  They are collected rather than asserted so that one run reports
everything it broke, and so that the summary of a randomized suite counts
them.

* :func:`cli_findings` — the run's own output: exit code documented (never 1, an
  internal error), no traceback, on failure exactly one ``Error:`` line, on
  success none, no secret anywhere.
* :func:`secret_findings` — no password or token in any text or file given.
* :func:`destination_findings` — every destination tag names the source's
  digest and a graph equal to the source's (byte for byte, referrers included);
  after a success every copied tag is there.
* :func:`every_tag_findings` — every tag of the destination repository
  (referrers fallback tags included) names a graph whose manifests and blobs
  are all there, with no listed referrer missing.
* :func:`layout_findings` — every blob file of an OCI layout hashes to its
  name; after a success no temporary file is left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from replicator.errors import NotFoundError, ReplicatorError
from replicator.graph.walk import snapshot_graph
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Target
from tests.integration.cli_helpers import CliResult
from tests.integration.graphs import assert_same_graph

#: Exit codes a faulted run may end with (docs/CLI.md): found nothing (3), auth
#: (4), unreachable (5), integrity (6), registry (7), journal (8), incomplete (9).
FAILURE_CODES = frozenset({3, 4, 5, 6, 7, 8, 9})
#: Plain lines a run may print on stderr besides its JSON log records.
MESSAGE_PREFIXES = ("Warning: ", "Resuming run ", "Note: ")


def cli_findings(label: str, result: CliResult, secrets: Iterable[str]) -> list[str]:
    """Findings about one run of the console script (``label``: "first run", "rerun")."""
    found: list[str] = []
    if "Traceback" in result.output:
        found.append(f"{label}: a traceback was printed without --debug")
    if result.code != 0 and result.code not in FAILURE_CODES:
        found.append(f"{label}: exit code {result.code} is not a documented failure code")
    lines = result.non_log_stderr_lines()
    errors = [line for line in lines if line.startswith("Error: ")]
    others = [line for line in lines if not line.startswith(("Error: ", *MESSAGE_PREFIXES))]
    if result.code == 0 and errors:
        found.append(f"{label}: exit 0 but an error line: {errors[0]!r}")
    if result.code != 0 and len(errors) != 1:
        found.append(f"{label}: exit {result.code} with {len(errors)} Error: lines (want one)")
    if any("internal error" in line for line in errors):
        found.append(f"{label}: an internal error: {errors[0]!r}")
    if others:
        found.append(f"{label}: unexpected stderr lines: {others[:3]!r}")
    found += secret_findings(label, {"stdout": result.stdout, "stderr": result.stderr}, secrets)
    return found


def secret_findings(
    label: str, texts: Mapping[str, str | bytes], secrets: Iterable[str]
) -> list[str]:
    """Findings for every secret found in one of ``texts`` (named by key, never shown)."""
    found = []
    for name, text in texts.items():
        data = text.encode() if isinstance(text, str) else text
        for i, secret in enumerate(sorted(set(secrets))):
            if secret and secret.encode() in data:
                kind = "token" if secret.count(".") == 2 else "password"
                found.append(f"{label}: a {kind} (secret #{i}) appears in {name}")
    return found


def journal_texts(journal: Path) -> dict[str, bytes]:
    """The bytes of a journal and its WAL/SHM files, by file name."""
    out = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(journal) + suffix)
        if path.exists():
            out[f"journal{suffix}"] = path.read_bytes()
    return out


async def destination_findings(
    label: str,
    src: Target,
    src_repo: str,
    dst: Target,
    dst_repo: str,
    roots: Mapping[str, Descriptor],
    *,
    complete: bool,
) -> list[str]:
    """Every destination tag among ``roots`` names the source's complete graph.

    ``complete``: the run succeeded, so every tag must be there too.
    """
    found = []
    for tag, root in roots.items():
        try:
            there = await dst.resolve(dst_repo, tag)
        except NotFoundError:
            if complete:
                found.append(f"{label}: tag {tag} is missing at the destination")
            continue
        if there.digest != root.digest:
            found.append(f"{label}: tag {tag} names {there.digest}, not {root.digest}")
            continue
        try:
            await assert_same_graph(src, src_repo, tag, dst, dst_repo, tag)
        except AssertionError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            found.append(f"{label}: tag {tag} names a graph unlike the source's: {first}")
        except NotFoundError as exc:
            found.append(f"{label}: tag {tag} names an incomplete graph: {exc}")
    return found


async def every_tag_findings(label: str, dst: Target, dst_repo: str) -> list[str]:
    """Every tag of ``dst_repo`` names a whole graph: manifests, blobs, listed referrers."""
    found: list[str] = []
    try:
        tags = await dst.tags(dst_repo)
    except NotFoundError:
        return found
    for tag in sorted(tags):
        try:
            snap = await snapshot_graph(dst, dst_repo, tag)
            for blob in snap.blobs.values():
                if not await dst.blob_exists(dst_repo, blob):
                    found.append(f"{label}: tag {tag} names a graph missing blob {blob.digest}")
        except ReplicatorError as exc:
            found.append(f"{label}: tag {tag} names an incomplete graph: {exc}")
            continue
        found += [f"{label}: tag {tag}: {w}" for w in snap.warnings]
    return found


def layout_findings(label: str, layout: Path, *, complete: bool) -> list[str]:
    """Blob files hash to their names; after a success no temporary file is left."""
    found: list[str] = []
    blobs = layout / "blobs"
    if not blobs.exists():
        return found
    for path in sorted(blobs.rglob("*")):
        if path.is_dir():
            continue
        name = path.name
        if ".tmp-" in name or name.startswith("."):
            if complete:
                found.append(f"{label}: temporary file left in the layout: {path.name}")
            continue
        algorithm = path.parent.name
        if algorithm != "sha256":
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != name:
            found.append(f"{label}: layout blob {name[:12]} does not hash to its name")
    return found
