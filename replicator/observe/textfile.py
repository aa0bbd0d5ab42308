"""The node-exporter textfile of a one-shot run: merged with the previous file, written atomically.

A CronJob runs ``replicator sync --metrics-file PATH`` once per period; the
node exporter's textfile collector (or anything that reads the Prometheus text
format) exposes PATH.  Every run rewrites the file, so a counter written as
"this run's figures" would never grow and a last-success timestamp would vanish
with the first failed run.  :func:`write_textfile` therefore carries the
previous file over:

* counters (``..._total``) are the previous file's value plus this run's;
* gauges are this run's value where this run set one (a failed run sets no
  ``last_success`` timestamp), else the previous file's;
* series only the previous file has (a job this run did not select) are kept.

The file is written to a temporary file in the same directory, synced, and
renamed over PATH (the collector never reads a half-written file); a lock file
beside it (``.NAME.lock``) keeps two processes from merging at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from replicator.errors import InputError

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def _series(families: Iterable[Metric]) -> dict[str, tuple[Metric, dict[SeriesKey, float]]]:
    """Per family name: the family and its samples by (sample name, sorted labels).

    ``_created`` samples are dropped: they describe this process, not the series.
    """
    out: dict[str, tuple[Metric, dict[SeriesKey, float]]] = {}
    for family in families:
        samples = out.setdefault(family.name, (family, {}))[1]
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def merge(current: Iterable[Metric], previous_text: str) -> list[Metric]:
    """This run's families merged with the previous file's text (see the module doc).

    Families that are neither counters nor gauges are taken from this run
    alone.  A previous text that does not parse is ignored.
    """
    now = _series(current)
    try:
        before = _series(text_string_to_metric_families(previous_text))
    except (ValueError, TypeError, IndexError):
        before = {}
    merged: list[Metric] = []
    for name in sorted(set(now) | set(before)):
        family, samples = now.get(name) or before[name]
        kind = family.type
        if kind not in ("counter", "gauge"):
            if name in now:
                merged.append(family)
            continue
        values = dict(samples) if name in now else {}
        prev = before.get(name)
        old = prev[1] if prev is not None and prev[0].type == kind else {}
        for key, value in old.items():
            if kind == "counter" and key in values:
                values[key] += value
            elif key not in values:
                values[key] = value
        merged.append(_family(name, kind, family.documentation, values))
    return merged


def _family(name: str, kind: str, help_text: str, values: dict[SeriesKey, float]) -> Metric:
    """A counter or gauge family of ``values`` keyed by (sample name, labels)."""
    labelnames = sorted({k for _, labels in values for k, _ in labels})
    family: Metric
    if kind == "counter":
        family = CounterMetricFamily(name, help_text, labels=labelnames)
    else:
        family = GaugeMetricFamily(name, help_text, labels=labelnames)
    for (_, labels), value in sorted(values.items()):
        given = dict(labels)
        family.add_metric([given.get(k, "") for k in labelnames], value)
    return family


class _Fixed:
    """A collector that hands out a fixed list of families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return list(self._families)


def render(families: list[Metric]) -> bytes:
    """The Prometheus text format of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


@contextlib.contextmanager
def _merge_lock(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_textfile(path: Path, families: Iterable[Metric]) -> None:
    """Merge ``families`` into the file at ``path`` and replace it atomically.

    Raises :class:`~replicator.errors.InputError` when the file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _merge_lock(path):
            try:
                previous = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                previous = ""
            data = render(merge(families, previous))
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(temporary, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            _sync_directory(path.parent)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise InputError(f"cannot write the metrics file {path} ({reason})") from None


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
