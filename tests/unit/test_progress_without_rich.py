"""The CLI and its progress display work without rich installed (it is no dependency)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import io
    import sys

    sys.modules["rich"] = None  # as if rich were not installed: importing it fails

    import replicator.cli.cmd_copy
    import replicator.cli.main
    from replicator.observe.progress import TerminalProgress
    from replicator.oci import mediatype as mt
    from replicator.oci.descriptor import Descriptor


    class FakeTTY(io.StringIO):
        def isatty(self):
            return True


    now = [0.0]
    stream = FakeTTY()
    blob = Descriptor(
        mt.OCI_LAYER_GZIP,
        "sha256:" + "1" * 64,
        100,
        annotations={"org.opencontainers.image.title": "file1.txt"},
    )
    with TerminalProgress(stream, clock=lambda: now[0], width=80, height=24) as progress:
        progress.blob_started(blob, 1)
        now[0] += 1
        progress.blob_advanced(blob, 100)
        progress.blob_finished(blob, "uploaded", "dst")
        now[0] += 1
        progress.warning("done")
    text = stream.getvalue()
    assert "Copied  111111111111 file1.txt" in text, text
    assert "\\x1b[" in text, text  # the live area was drawn
    assert sys.modules["rich"] is None
    leaked = sorted(m for m in sys.modules if m.startswith(("rich.", "pygments")))
    assert not leaked, leaked
    print("ok")
    """
)


def test_the_cli_and_the_progress_display_import_and_run_without_rich() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
