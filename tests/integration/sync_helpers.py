"""Helpers for the ``replicator sync`` / ``verify`` integration tests.

Everything here talks to real registries (or OCI layouts on disk) through the
product's own targets or plain HTTP: seeding source graphs, reading back what a
destination holds, making differences out of band, and running the real
console script on a config file with a JSON report.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio

from replicator.errors import NotFoundError
from replicator.sync.selection import is_digest_like
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.integration.cli_helpers import CliResult, run_cli

T = TypeVar("T")

#: What writes: any request with one of these methods changes a registry.
WRITING_METHODS = ("PUT", "POST", "PATCH", "DELETE")


class Reachable(Protocol):
    """A registry the tests can talk to: a RegistryInstance or a FaultProxy."""

    @property
    def host(self) -> str:
        """``HOST:PORT`` as clients name it."""
        ...

    @property
    def url(self) -> str:
        """The base URL (``http://HOST:PORT``)."""
        ...

    def options(self, user: str | None = None, **overrides: Any) -> RegistryOptions:
        """Connection settings that work for it (as ``user`` when given)."""
        ...

    def basic_auth_header(self, user: str | None = None) -> dict[str, str]:
        """``Authorization: Basic`` for ``user`` ({} when it needs none)."""
        ...


def with_target(reg: Reachable, work: Callable[[RegistryTarget], Awaitable[T]]) -> T:
    """Run ``work(target)`` against ``reg`` in a fresh event loop; return its result."""

    async def main() -> T:
        async with RegistryTarget(reg.host, reg.options()) as target:
            return await work(target)

    return anyio.run(main)


def plain_tags(reg: Reachable, repository: str) -> set[str]:
    """The tags of ``repository`` that are not digest-like (fallback tags left out)."""

    async def work(t: RegistryTarget) -> set[str]:
        try:
            return {tag for tag in await t.tags(repository) if not is_digest_like(tag)}
        except NotFoundError:
            return set()

    return with_target(reg, work)


def all_tags(reg: Reachable, repository: str) -> set[str]:
    """Every tag of ``repository`` (empty when it does not exist)."""

    async def work(t: RegistryTarget) -> set[str]:
        try:
            return set(await t.tags(repository))
        except NotFoundError:
            return set()

    return with_target(reg, work)


def digest_at(reg: Reachable, repository: str, tag: str) -> str | None:
    """The digest ``repository:tag`` points at, or None when absent."""

    async def work(t: RegistryTarget) -> str | None:
        try:
            return (await t.resolve(repository, tag)).digest
        except NotFoundError:
            return None

    return with_target(reg, work)


def http(
    reg: Reachable,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """One raw HTTP request to ``reg`` (``path`` from ``/v2/``); the status code."""
    all_headers = {**(headers or {}), **reg.basic_auth_header()}
    req = urllib.request.Request(reg.url + path, data=body, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass(frozen=True)
class SyncRun:
    """One run of ``replicator sync``/``verify``: the CLI result and its JSON report."""

    cli: CliResult
    report: dict[str, Any]

    @property
    def code(self) -> int:
        """The exit code."""
        return self.cli.code

    @property
    def stdout(self) -> str:
        """What the command printed on stdout."""
        return self.cli.stdout

    def results(self, job: str) -> list[dict[str, Any]]:
        """The engine results of config job ``job``."""
        return list(self.report["jobs"][job]["results"])

    def selected(self, job: str) -> list[str]:
        """The tags job ``job`` selected, over all its repositories."""
        return [
            t["tag"]
            for repo in self.report["jobs"][job]["repositories"]
            for t in repo["tags"]
            if t["selected"]
        ]

    def reasons(self, job: str) -> dict[str, str]:
        """``tag -> reason`` of every tag job ``job`` decided about."""
        return {
            t["tag"]: t["reason"]
            for repo in self.report["jobs"][job]["repositories"]
            for t in repo["tags"]
        }


def run_sync(
    command: str, config: Path, *args: str, home: Path, report_name: str | None = None
) -> SyncRun:
    """``replicator COMMAND CONFIG ARGS --report FILE``; the result and the parsed report."""
    report = config.parent / (report_name or f"{command}-report.json")
    if report.exists():
        report.unlink()
    result = run_cli(command, str(config), *args, "--report", str(report), home=home, timeout=120)
    parsed = json.loads(report.read_text()) if report.exists() else {}
    return SyncRun(result, parsed)


def write_config(path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path.write_text(text)
    return path
