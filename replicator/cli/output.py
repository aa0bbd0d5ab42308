"""Formatting helpers shared by the commands: sizes, short digests, ORAS-style lines.

Pure functions over strings and descriptors; nothing here does I/O except
:func:`write_json` and :func:`write_line`, which only write to the stream they
are given.  ``human_size`` and ``human_rate`` are re-exported from
:mod:`replicator.observe.units`, which the live progress display uses too.  Output formats mirror ORAS where a user would compare them
(``Uploaded  2d2ab2f4f2b5 readme.md``, ``Pushed [registry] host/repo:tag``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from replicator.observe.units import human_rate as human_rate
from replicator.observe.units import human_size as human_size
from replicator.oci.descriptor import Descriptor
from replicator.oci.reference import Reference

#: Width of the verb column in status lines (``Uploading`` is the longest common verb).
VERB_WIDTH = 9


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
