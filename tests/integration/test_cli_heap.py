"""The console script turns the garbage collector back on once start-up is over.

Through the real ``replicator`` script against a real registry: ``copy`` settles
right before its engine runs (``--all-tags`` before listing tags), every other
command before its handler, each exactly once (the DEBUG event
``startup.heap_settled``).
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
    copy_frozen = _settled(copy.stderr)[0]["frozen_objects"]
    resolve_frozen = _settled(resolve.stderr)[0]["frozen_objects"]
    assert isinstance(copy_frozen, int) and isinstance(resolve_frozen, int)
    assert copy_frozen > resolve_frozen
    # --all-tags lists tags (network) before the engine: it settles before that.
    all_tags = run_cli(
        "--debug",
        "copy",
        "--all-tags",
        f"{registry_open.host}/{unique_repo}",
        f"{registry_open.host}/{unique_repo}-all",
        home=tmp_path,
    )
    assert all_tags.code == EXIT_OK, all_tags.stderr
    settled = _settled(all_tags.stderr)
    assert len(settled) == 1, all_tags.stderr
    all_tags_frozen = settled[0]["frozen_objects"]
    assert isinstance(all_tags_frozen, int) and all_tags_frozen < copy_frozen
