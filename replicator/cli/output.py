"""Formatting helpers shared by the commands: sizes, short digests, ORAS-style lines.

Pure functions over strings and descriptors; nothing here does I/O except
:func:`write_json` and :func:`write_line`, which only write to the stream they
are given.  Output formats mirror ORAS where a user would compare them
(``Uploaded  2d2ab2f4f2b5 readme.md``, ``Pushed [registry] host/repo:tag``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import Reference

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")

#: Width of the verb column in status lines (``Uploading`` is the longest common verb).
VERB_WIDTH = 9


def human_size(size: int | float, *, binary: bool = True) -> str:
    """``size`` bytes for humans: ``0 B``, ``512 B``, ``1.50 KiB``, ``3.21 GiB``.

    Binary (1024) units by default, decimal (1000) with ``binary=False``.
    Whole bytes have no decimals; larger units get two (three significant
    digits from 100 on).  Negative sizes keep their sign.
    """
    sign = "-" if size < 0 else ""
    value = float(abs(size))
    base = 1024.0 if binary else 1000.0
    units = _BINARY_UNITS if binary else _DECIMAL_UNITS
    index = 0
    while value >= base and index < len(units) - 1:
        value /= base
        index += 1
    if index == 0:
        return f"{sign}{int(value)} {units[0]}"
    if value >= 100:
        return f"{sign}{value:.1f} {units[index]}"
    return f"{sign}{value:.2f} {units[index]}"


def human_rate(bytes_per_second: float) -> str:
    """A transfer rate, e.g. ``12.40 MiB/s``."""
    return f"{human_size(bytes_per_second)}/s"


def human_duration(seconds: float) -> str:
    """A duration for humans: ``850ms``, ``4.2s``, ``3m05s``, ``1h02m``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def short_digest(digest: str) -> str:
    """The first 12 hex digits of a digest (``sha256:`` dropped), as ORAS prints them."""
    return digest.split(":", 1)[-1][:12]


def descriptor_name(desc: Descriptor) -> str:
    """What to call a node in a status line: its file title, else its media type."""
    return desc.title or desc.media_type


def status_line(verb: str, desc: Descriptor, name: str | None = None) -> str:
    """An ORAS-style progress line: ``Uploaded  2d2ab2f4f2b5 readme.md``.

    ``name`` overrides the title / media type shown after the short digest.
    """
    shown = name if name is not None else descriptor_name(desc)
    return f"{verb:<{VERB_WIDTH}} {desc.short} {shown}"


def target_kind(ref: Reference) -> str:
    """``[registry]`` or ``[oci-layout]``, as ORAS labels a reference's storage."""
    return "[oci-layout]" if ref.scheme == "ocidir" else "[registry]"


def reference_line(verb: str, ref: Reference | str) -> str:
    """``Pushed [registry] host/repo:tag`` (plain ``Pushed host/repo`` for a string)."""
    if isinstance(ref, Reference):
        return f"{verb} {target_kind(ref)} {ref}"
    return f"{verb} {ref}"


def field_line(label: str, value: str) -> str:
    """A ``Label: value`` summary line (``Digest: sha256:...``, ``ArtifactType: ...``)."""
    return f"{label}: {value}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, gap: int = 2) -> str:
    """A left-aligned plain-text table; cells are ``str()``-ed, no trailing spaces.

    Returns the lines joined by ``\\n`` without a final newline; just the
    header line when there are no rows.
    """
    table = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    columns = max(len(r) for r in table)
    for row in table:
        row.extend([""] * (columns - len(row)))
    widths = [max(len(row[i]) for row in table) for i in range(columns)]
    pad = " " * gap
    lines = [
        pad.join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    ]
    return "\n".join(lines)


def to_json_text(value: Any, *, pretty: bool = True) -> str:
    """``value`` as JSON text: indented with ``pretty``, else compact, keys in given order."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def write_json(out: TextIO, value: Any, *, pretty: bool = True) -> None:
    """Write ``value`` as JSON plus a newline to ``out``."""
    out.write(to_json_text(value, pretty=pretty) + "\n")


def write_line(out: TextIO, text: str = "") -> None:
    """Write ``text`` plus a newline to ``out`` (commands' results go to stdout)."""
    out.write(text + "\n")


def pluralize(count: int, singular: str, plural: str | None = None) -> str:
    """``1 blob``, ``3 blobs``, ``2 indexes`` (with an explicit plural)."""
    word = singular if count == 1 else (plural or singular + "s")
    return f"{count} {word}"
