"""Pairs files: ``SRC DST [DST...]`` per line, ``#`` comments, shell-like quoting.

:func:`read_pairs` turns a pairs file (``copy --from-file``) into jobs.  Lines
are split like a shell splits words (``shlex``, taken only where quotes or
backslashes occur: a plain line is split at blanks directly, with the same
result); everything from ``#`` on is a comment; blank lines are skipped.

Guarantees: every bad line is reported, not only the first, each as
``FILE:LINE: what is wrong`` followed once by what a line may hold, in one
:class:`~replicator.errors.ConfigError`; a file that cannot be read is an
:class:`~replicator.errors.InputError` saying why in words.  No Python class
name appears in either.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from replicator.errors import ConfigError, InputError, UsageError
from replicator.sync.jobs import JobSpec, reference_job, repository_job

_QUOTING = re.compile(r"[\"'\\]")
_SHLEX_BLANKS = re.compile(r"[ \t\r\n]+")
#: At most this many bad lines are listed in the error; the rest are counted.
MAX_LISTED = 20

_REFERENCES = (
    "a line is 'SRC DST [DST...]', each a reference: host/repo:tag, host/repo@sha256:<hex> "
    "or ocidir://PATH[:TAG|@DIGEST]; a DST may name several tags (host/repo:t1,t2)"
)
_REPOSITORIES = "a line is 'SRC DST [DST...]', each a repository: host/repo or ocidir://PATH"


def split_line(line: str) -> list[str]:
    """The words of one line (comment removed); raises ValueError for unbalanced quotes."""
    line = line.split("#", 1)[0].strip()
    if not line:
        return []
    if _QUOTING.search(line):
        return shlex.split(line)
    return [w for w in _SHLEX_BLANKS.split(line) if w]


def read_text(path: Path, label: str) -> str:
    """The file's text; :class:`InputError` (``label: cannot read (why)``) when it cannot be read."""
    try:
        data = path.expanduser().read_bytes()
    except OSError as exc:
        raise InputError(f"{label}: cannot read ({exc.strerror or 'unreadable'})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{label}: cannot read: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        ) from None


def read_pairs(
    path: Path, *, repositories: bool = False, label: str | None = None
) -> list[JobSpec]:
    """The jobs of a pairs file, in order (see the module doc).

    ``repositories``: the words name repositories (``copy --all-tags``), each
    line a :class:`~replicator.sync.jobs.RepositoryJob`.  ``label`` names the
    file in an unreadable-file error (default: the path).
    """
    text = read_text(path, label or str(path))
    jobs: list[JobSpec] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            words = split_line(line)
        except ValueError as exc:
            problems.append(f"{where}: {str(exc).lower()} (quote a word with '...' or \"...\")")
            continue
        if not words:
            continue
        if len(words) < 2:
            problems.append(f"{where}: only one word, {words[0]!r}: a destination is missing")
            continue
        try:
            build = repository_job if repositories else reference_job
            jobs.append(build(words[0], words[1:], origin=where))
        except (UsageError, InputError) as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ConfigError(_summary(path, problems, repositories))
    return jobs


def _summary(path: Path, problems: list[str], repositories: bool) -> str:
    listed = "; ".join(problems[:MAX_LISTED])
    more = len(problems) - MAX_LISTED
    if more > 0:
        listed += f"; and {more} more"
    count = f"{len(problems)} bad line{'s' if len(problems) > 1 else ''}"
    return f"{count} in {path}: {listed}. ({_REPOSITORIES if repositories else _REFERENCES})"
