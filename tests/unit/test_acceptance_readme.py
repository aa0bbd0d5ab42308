"""The README's promises: two Quick start commands, CI calling the test command, real output.

The demo command itself runs in
tests/integration/test_acceptance_foundation.py::test_demo_script_ends_well_and_leaves_no_registry_running.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REPLICATOR = str(Path(sys.executable).with_name("replicator"))


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section in README.md"
    return match.group(1)


def _blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)


def test_quick_start_is_exactly_the_demo_and_the_test_command() -> None:
    quick = _section(README.read_text(), "Quick start")
    blocks = _blocks(quick)
    assert len(blocks) == 1, blocks
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for script in ("scripts/demo.sh", "scripts/test.sh", "scripts/setup.sh"):
        assert (ROOT / script).is_file(), script
    assert "scripts/setup.sh" in (ROOT / "scripts/demo.sh").read_text()
    assert "scripts/setup.sh" in (ROOT / "scripts/test.sh").read_text()


def test_ci_runs_the_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^(exec )?bash scripts/test\.sh\b", ci, re.M), ci
    test_sh = (ROOT / "scripts/test.sh").read_text()
    for stage in (r"ruff check\b", r"ruff format\b.*--check", r"\bmypy\b", r"-m pytest\b"):
        assert re.search(stage, test_sh), stage


def test_walkthrough_shows_real_push_and_three_level_tree_output() -> None:
    walk = _section(README.read_text(), "The seed walkthrough")
    captured = (ROOT / "docs" / "walkthrough-output.md").read_text()
    blocks = _blocks(walk)
    text = "\n".join(blocks)
    assert re.search(r"^\$ replicator push ", text, re.M)
    assert re.search(r"^Uploaded  [0-9a-f]{12} readme\.md$", text, re.M)
    assert re.search(r"^Pushed \[registry\] ", text, re.M)
    assert re.search(r"^Digest: sha256:[0-9a-f]{64}$", text, re.M)
    assert re.search(r"^\$ replicator discover -o tree ", text, re.M)
    assert re.search(r"^│       └── signature/example$", text, re.M), "no three-level tree"
    # Real captured output: every console session shown is part of the captured run.
    for block in blocks:
        for session in re.split(r"\n(?=\$ )", block.strip()):
            assert session.strip() in captured, session[:200]


def test_every_command_the_readme_shows_exists() -> None:
    text = README.read_text()
    shown = set(re.findall(r"^\$ replicator ([a-z]+)", text, re.M))
    shown |= set(re.findall(r"^\| `replicator ([a-z]+)", text, re.M))
    assert {"push", "attach", "discover", "copy", "pull", "manifest", "repo"} <= shown
    for command in sorted(shown):
        proc = subprocess.run(
            [REPLICATOR, command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, (command, proc.stderr)
