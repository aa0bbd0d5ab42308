"""What ``copy`` says about a run, through the real console script and real registries:
up to date or copied, resumed or not, a source tag that moved between an
interrupted run and its rerun, JSON-only stderr with ``--log-format json``,
every bad ``--from-file`` line; and the run layer's Python entry point as
docs/CLI.md shows it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio

from replicator.oci.descriptor import Descriptor
from replicator.targets.registry.client import RegistryTarget
from tests.faults.resume_support import journal_runs
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, push_tiny_image, run_cli
from tests.integration.graphs import GraphBuilder, SignedImage

ROOT = Path(__file__).resolve().parents[2]


def _target(instance: Any) -> RegistryTarget:
    return RegistryTarget(instance.host, instance.options())


def _signed(instance: RegistryInstance, repo: str) -> SignedImage:
    async def build() -> SignedImage:
        async with _target(instance) as t:
            return await GraphBuilder(t, repo).signed_image(repo, tags=["v1"])

    return anyio.run(build)


def _image(instance: Any, repo: str, name: str) -> Descriptor:
    async def build() -> Descriptor:
        async with _target(instance) as t:
            return await GraphBuilder(t, repo).image(name, tags=["v1"], layers=2, layer_size=4096)

    return anyio.run(build)


def _events(result: CliResult) -> list[dict[str, Any]]:
    """Every stderr line as a JSON event; fails on any line that is not one."""
    events = []
    for line in result.stderr.splitlines():
        event = json.loads(line)
        assert isinstance(event, dict) and isinstance(event.get("event"), str), line
        events.append(event)
    return events


def test_a_copy_with_nothing_to_do_says_up_to_date(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    signed = _signed(registry_open, unique_repo)
    src = f"{registry_open.host}/{unique_repo}:v1"
    dst = f"{registry_open.host}/{unique_repo}-dst:v1"
    first = run_cli("copy", "-r", src, dst, "--report", str(tmp_path / "1.json"), home=tmp_path)
    assert first.code == 0, first.stderr
    assert f"Copied {src} => {dst}" in first.stdout
    again = run_cli("copy", "-r", src, dst, "--report", str(tmp_path / "2.json"), home=tmp_path)
    assert again.code == 0, again.stderr
    assert again.stdout.splitlines()[:2] == [
        f"Up to date: {src} => {dst}",
        f"Digest: {signed.image.digest}",
    ]
    assert "Copied" not in again.stdout
    report = json.loads((tmp_path / "2.json").read_text())
    assert report["status"] == "up-to-date" and report["ok"] is True
    assert [j["status"] for j in report["jobs"]] == ["up-to-date"]
    assert json.loads((tmp_path / "1.json").read_text())["status"] == "copied"


def test_a_rerun_of_a_run_that_confirmed_nothing_does_not_say_resuming(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.sqlite"
    src = f"{registry_open.host}/{unique_repo}:v1"
    argv = ["copy", "--journal", str(journal), src, f"{registry_open.host}/{unique_repo}-dst:v1"]
    missing = run_cli(*argv, home=tmp_path)
    assert missing.code == 3, missing.stderr
    [(run_id, state)] = journal_runs(journal)
    assert state == "failed"
    push_tiny_image(registry_open, unique_repo, "v1")
    rerun = run_cli(*argv, "--report", str(tmp_path / "r.json"), home=tmp_path)
    assert rerun.code == 0, rerun.stderr
    assert "Resuming" not in rerun.stderr and "resum" not in rerun.stdout.lower()
    assert journal_runs(journal) == [(run_id, "done")]
    assert json.loads((tmp_path / "r.json").read_text())["run"]["resumed"] is False


def test_a_source_tag_that_moved_before_the_rerun_is_reported(
    registry_open: RegistryInstance, fault_proxy: Any, unique_repo: str, tmp_path: Path
) -> None:
    first_image = _image(registry_open, unique_repo, "first")
    proxy = fault_proxy(registry_open)
    proxy.status("PUT", r"/manifests/", 400, times=None)  # blobs land, manifests are refused
    journal = tmp_path / "journal.sqlite"
    src = f"{registry_open.host}/{unique_repo}:v1"
    argv = ["copy", "--journal", str(journal), src, f"{proxy.host}/{unique_repo}-dst:v1"]
    failed = run_cli(*argv, home=tmp_path)
    assert failed.code not in (0, 8), failed.stderr
    [(run_id, _)] = journal_runs(journal)
    proxy.clear()
    moved_to = _image(registry_open, unique_repo, "second")  # v1 moves
    report_path = tmp_path / "r.json"
    rerun = run_cli(*argv, "--report", str(report_path), home=tmp_path)
    assert rerun.code == 0, rerun.stderr
    assert f"Resuming run {run_id}" in rerun.stderr
    warning = (
        f"Warning: {src} now points to {moved_to.digest}, not to {first_image.digest} "
        f"as when run {run_id} began: this run copies {moved_to.digest}"
    )
    assert warning in rerun.non_log_stderr_lines()
    assert f"Digest: {moved_to.digest}" in rerun.stdout and "Warning" not in rerun.stdout
    report = json.loads(report_path.read_text())
    assert report["sources_moved"] == [
        {"source": src, "was": first_image.digest, "now": moved_to.digest}
    ]
    assert any("now points to" in w for w in report["warnings"])


def test_json_logs_leave_no_plain_line_on_stderr(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    host = registry_open.host
    missing = run_cli(
        "--log-format", "json", "copy", f"{host}/{unique_repo}:nope", f"{host}/x:1", home=tmp_path
    )
    events = _events(missing)
    assert missing.code == 3
    (failed,) = [e for e in events if e["event"] == "cli.failed"]
    assert failed["exit_code"] == 3 and failed["level"] == "error" and "exception" not in failed
    assert events[-1] == {**events[-1], "event": "cli.exited", "exit_code": 3}

    usage = run_cli("--log-format", "json", "copy", "--no-such-flag", "a", "b", home=tmp_path)
    events = _events(usage)
    assert usage.code == 2
    (bad,) = [e for e in events if e["event"] == "cli.usage_error"]
    assert "--no-such-flag" in bad["error"] and "usage:" in bad["usage"]
    assert events[-1]["event"] == "cli.exited" and events[-1]["exit_code"] == 2

    secret = "S3cret-value-99"
    ambiguous = run_cli(
        "copy", "--log-format=json", f"--pass={secret}", "a.example/x:1", "b/x:1", home=tmp_path
    )
    assert ambiguous.code == 2 and secret not in ambiguous.output
    assert _events(ambiguous)[-1]["exit_code"] == 2

    debug = run_cli("--log-format", "json", "--debug", "resolve", "127.0.0.1:9/x:1", home=tmp_path)
    events = _events(debug)
    assert debug.code == 5
    (failed,) = [e for e in events if e["event"] == "cli.failed"]
    assert "Traceback" in failed["exception"]
    assert events[-1]["event"] == "cli.exited" and events[-1]["exit_code"] == 5

    nothing = run_cli("--log-format", "json", home=tmp_path)
    assert nothing.code == 2 and _events(nothing)[-1]["exit_code"] == 2

    ok = run_cli("--log-format", "json", "repo", "tags", f"{host}/{unique_repo}", home=tmp_path)
    assert _events(ok)[-1] == {**_events(ok)[-1], "event": "cli.exited", "exit_code": ok.code}


def test_console_logs_keep_the_one_error_line(tmp_path: Path) -> None:
    result = run_cli("--log-format", "console", "resolve", "127.0.0.1:9/x:1", home=tmp_path)
    assert result.code == 5
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: ")
    assert "cli.exited" not in result.stderr and "Traceback" not in result.stderr


def test_from_file_errors_name_every_bad_line_without_class_names(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "a.example/x:1 b.example/x:1\nlonely\na.example/y:1 'b.example/y\nc UPPER/Bad\n"
    )
    result = run_cli("copy", "--from-file", str(pairs), home=tmp_path)
    assert result.code == 2
    (line,) = result.non_log_stderr_lines()
    for number in (2, 3, 4):
        assert f"pairs.txt:{number}: " in line, line
    assert "pairs.txt:1:" not in line and "a line is 'SRC DST [DST...]'" in line
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"a.example/x:1 b\xff\n")
    result = run_cli("copy", "--from-file", str(binary), home=tmp_path)
    assert result.code == 2
    (line,) = result.non_log_stderr_lines()
    assert "not UTF-8 text" in line and not re.search(r"[A-Z][a-z]+Error", line), line


def test_the_python_example_of_cli_md_runs_against_a_registry(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    section = (ROOT / "docs" / "CLI.md").read_text().split("## From Python: the run layer", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "no python example in the 'From Python' section of docs/CLI.md"
    digest = push_tiny_image(registry_open, unique_repo, "v1")
    host = registry_open.host
    script = (
        code.group(1)
        .replace("localhost:5000/mirror/app:v1", f"{host}/{unique_repo}-mirror:v1")
        .replace("localhost:5000/app:v1", f"{host}/{unique_repo}:v1")
    )
    assert host in script
    path = tmp_path / "example.py"
    path.write_text(script)
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"copied 1 {digest}"

    async def check() -> str:
        async with _target(registry_open) as t:
            return (await t.resolve(f"{unique_repo}-mirror", "v1")).digest

    assert anyio.run(check) == digest
