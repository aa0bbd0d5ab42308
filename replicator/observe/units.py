"""Byte counts for humans, one way for every display: binary units (KiB, MiB, GiB).

The live progress display (:mod:`replicator.observe.progress`) and the
commands' summaries (:mod:`replicator.cli.output`, which re-exports
:func:`human_size`) both format sizes here, so the bytes a copy shows while it
runs and the bytes its summary reports are in the same units.  Pure functions,
standard library only.
"""

from __future__ import annotations

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")

__all__ = ["human_rate", "human_size", "human_size_pair"]


def _scale(size: float, binary: bool) -> tuple[float, int]:
    """``size`` divided down to its unit, and the unit's index."""
    value = float(abs(size))
    base = 1024.0 if binary else 1000.0
    index = 0
    while value >= base and index < len(_BINARY_UNITS) - 1:
        value /= base
        index += 1
    return value, index


def _decimals(value: float) -> int:
    """Two decimals below 100 of a unit, one from 100 on (three significant digits)."""
    return 1 if value >= 100 else 2


def human_size(size: int | float, *, binary: bool = True) -> str:
    """``size`` bytes for humans: ``0 B``, ``512 B``, ``1.50 KiB``, ``3.21 GiB``.

    Binary (1024) units by default, decimal (1000) with ``binary=False``.
    Whole bytes have no decimals; larger units get two (one from 100 on).
    Negative sizes keep their sign.
    """
    sign = "-" if size < 0 else ""
    value, index = _scale(size, binary)
    units = _BINARY_UNITS if binary else _DECIMAL_UNITS
    if index == 0:
        return f"{sign}{int(value)} {units[0]}"
    return f"{sign}{value:.{_decimals(value)}f} {units[index]}"


def human_rate(bytes_per_second: float) -> str:
    """A transfer rate in binary units, e.g. ``12.40 MiB/s``."""
    return f"{human_size(bytes_per_second)}/s"


def human_size_pair(done: int, total: int) -> str:
    """``done/total`` bytes in the binary unit of ``total``: ``1.50/3.00 MiB``, ``50/100 B``.

    Both numbers get the precision :func:`human_size` would give ``total``.
    """
    value, index = _scale(total, True)
    if index == 0:
        return f"{done}/{total} B"
    divisor = 1024.0**index
    decimals = _decimals(value)
    return f"{done / divisor:.{decimals}f}/{total / divisor:.{decimals}f} {_BINARY_UNITS[index]}"
