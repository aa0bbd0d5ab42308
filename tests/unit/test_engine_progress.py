"""The live progress display shows ORAS-like lines and keeps its bars bounded."""

from __future__ import annotations

import io
import json
import logging

import structlog

from replicator.engine.events import LogObserver
from replicator.observe.logging import configure_logging
from replicator.observe.progress import RichProgress
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor


def test_progress_prints_oras_like_lines_and_drops_finished_bars() -> None:
    stream = io.StringIO()
    blobs = [
        Descriptor(
            mt.OCI_LAYER_GZIP,
            "sha256:" + f"{i:x}" * 64,
            100,
            annotations={"org.opencontainers.image.title": f"file{i}.txt"},
        )
        for i in range(1, 11)
    ]
    with RichProgress(stream, max_bars=3) as progress:
        for b in blobs:
            progress.blob_started(b, 1)
        assert len(progress._bars) == 3
        for b in blobs:
            progress.blob_advanced(b, 100)
            progress.blob_finished(b, "uploaded", "dst")
        progress.manifest_finished(
            Descriptor(mt.OCI_MANIFEST, "sha256:" + "f" * 64, 10), "exists", "dst"
        )
        progress.warning("something skipped")
        assert progress._bars == {}
        assert progress.bytes == 1000 and progress.blobs == 10 and progress.manifests == 1
    text = stream.getvalue()
    assert "Copied  111111111111 file1.txt" in text
    assert "Exists  ffffffffffff application/vnd.oci.image.manifest.v1+json" in text
    assert "something skipped" in text


def _json_lines(debug: bool) -> list[dict[str, object]]:
    stream = io.StringIO()
    configure_logging(debug=debug, fmt="json", stream=stream)
    try:
        observer = LogObserver()
        blob = Descriptor(
            mt.OCI_LAYER_GZIP,
            "sha256:" + "1" * 64,
            100,
            annotations={"org.opencontainers.image.title": "file1.txt"},
        )
        observer.blob_started(blob, 1)
        observer.blob_advanced(blob, 100)
        observer.blob_finished(blob, "uploaded", "r.example/x")
        observer.manifest_finished(
            Descriptor(mt.OCI_MANIFEST, "sha256:" + "f" * 64, 10), "exists", "r.example/x"
        )
        observer.warning("something skipped")
    finally:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "stream", None) is stream:
                root.removeHandler(handler)
        structlog.reset_defaults()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_observer_writes_one_line_per_node_and_the_start_only_with_debug() -> None:
    lines = _json_lines(debug=False)
    assert [line["event"] for line in lines] == ["copied", "exists", "skipped"]
    assert lines[0] | {"timestamp": ""} == {
        "digest": "111111111111",
        "name": "file1.txt",
        "size": 100,
        "destination": "r.example/x",
        "event": "copied",
        "level": "info",
        "logger": "replicator.engine",
        "timestamp": "",
    }
    debug = _json_lines(debug=True)
    assert [line["event"] for line in debug] == ["copying", "copied", "exists", "skipped"]
    assert debug[0]["size"] == 100 and debug[0]["to"] == 1
