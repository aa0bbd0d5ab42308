"""The live progress display shows ORAS-like lines and keeps its bars bounded."""

from __future__ import annotations

import io

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
