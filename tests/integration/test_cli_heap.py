"""The console script turns the garbage collector back on once start-up is over.

Through the real ``replicator`` script against a real registry: ``copy`` settles
right before its engine runs, every other command before its handler, each
exactly once (the DEBUG event ``startup.heap_settled``).
"""

from __future__ import annotations

import json
from pathlib import Path

from replicator.errors import EXIT_OK
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import push_tiny_image, run_cli


def _settled(stderr: str) -> list[dict[str, object]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "startup.heap_settled":
                events.append(event)
    return events


def test_copy_and_other_commands_settle_once(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    digest = push_tiny_image(registry_open, unique_repo, "v1")
    src = f"{registry_open.host}/{unique_repo}:v1"
    copy = run_cli(
        "--debug", "copy", src, f"{registry_open.host}/{unique_repo}-copy:v1", home=tmp_path
    )
    resolve = run_cli("--debug", "resolve", src, home=tmp_path)
    for result in (copy, resolve):
        assert result.code == EXIT_OK, result.stderr
        settled = _settled(result.stderr)
        assert len(settled) == 1, result.stderr
        frozen = settled[0]["frozen_objects"]
        assert isinstance(frozen, int) and frozen > 10_000
    assert resolve.stdout.strip() == digest
    # copy settles after its targets are opened: aiohttp and the engine are frozen too.
    assert (
        _settled(copy.stderr)[0]["frozen_objects"] > _settled(resolve.stderr)[0]["frozen_objects"]
    )  # type: ignore[operator]
