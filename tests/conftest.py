"""Shared fixtures: real registries on loopback ports, fault proxies, fresh names.

Registry fixtures are session-scoped and start lazily (the first test that asks
for one starts it); everything is stopped at the end of the session.  Their
values are :class:`tests.infra.registry.RegistryInstance`.  When docker-registry
is missing every test that needs a registry *fails* with a message saying how
to install it — nothing is skipped silently.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import pytest

from tests.infra.process import log_tail
from tests.infra.registry import (
    VARIANTS,
    RegistryBinaryMissing,
    RegistryInstance,
    RunningRegistry,
    Variant,
    registry_binary,
    start_registry,
)

if TYPE_CHECKING:
    from tests.infra.proxy import FaultProxy

REGISTRY_FIXTURES = frozenset(
    {
        "registry_open",
        "registry_basic",
        "registry_token",
        "registry_tls",
        "registry_referrers",
        "registry_variant",
        "registries",
        "registry_factory",
    }
)


class _Registries:
    """Starts each variant once per session, on first use."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._running: dict[str, RunningRegistry] = {}
        self._failed: dict[str, str] = {}

    def get(self, variant: Variant) -> RegistryInstance:
        """The running ``variant`` (started now if needed; restarted if it died)."""
        if variant in self._failed:
            pytest.fail(self._failed[variant], pytrace=False)
        running = self._running.get(variant)
        if running is None:
            try:
                running = start_registry(variant, self._base / variant)
            except Exception as exc:
                self._failed[variant] = f"could not start the {variant} registry: {exc}"
                pytest.fail(self._failed[variant], pytrace=False)
            self._running[variant] = running
        elif not all(proc.alive() for proc in running.processes):
            # A crashed session registry is brought back (same port and storage).
            try:
                running.start()
            except Exception as exc:
                pytest.fail(f"the {variant} registry died and did not restart: {exc}")
        return running.instance

    def log_tails(self, lines: int = 25) -> list[tuple[str, str]]:
        """(title, tail) of the log of every running registry, for failure reports."""
        out = []
        for variant, running in self._running.items():
            for proc in running.processes:
                out.append((f"{variant}: {proc.name} log", log_tail(proc.log_path, lines)))
        return out

    def stop_all(self) -> None:
        """Stop every registry started this session."""
        for running in self._running.values():
            running.stop()
        self._running.clear()


@pytest.fixture(scope="session")
def registries(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[_Registries]:
    """The session's registry manager (use the per-variant fixtures instead)."""
    manager = _Registries(tmp_path_factory.mktemp("registries"))
    pytestconfig.stash[_MANAGER_KEY] = manager
    try:
        yield manager
    finally:
        manager.stop_all()
        del pytestconfig.stash[_MANAGER_KEY]


@pytest.fixture(scope="session")
def registry_open(registries: _Registries) -> RegistryInstance:
    """An open registry over plain HTTP."""
    return registries.get("open")


@pytest.fixture(scope="session")
def registry_basic(registries: _Registries) -> RegistryInstance:
    """A registry with htpasswd basic auth (``.users``: alice, bob)."""
    return registries.get("basic")


@pytest.fixture(scope="session")
def registry_token(registries: _Registries) -> RegistryInstance:
    """A registry with token auth (``.users``: admin, reader, limited)."""
    return registries.get("token")


@pytest.fixture(scope="session")
def registry_tls(registries: _Registries) -> RegistryInstance:
    """An open registry over HTTPS (``.ca_file`` is the CA that signed it)."""
    return registries.get("tls")


@pytest.fixture(scope="session")
def registry_referrers(registries: _Registries) -> RegistryInstance:
    """An open registry behind the referrers-API shim."""
    return registries.get("referrers")


@pytest.fixture(params=VARIANTS, ids=list(VARIANTS))
def registry_variant(request: pytest.FixtureRequest, registries: _Registries) -> RegistryInstance:
    """Each of the five variants in turn."""
    variant: Variant = request.param
    return registries.get(variant)


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RunningRegistry]]:
    """Factory for private registries: ``registry_factory("open") -> RunningRegistry``.

    ``registry_factory("token", token_ttl=3)`` makes short-lived tokens.

    For tests that need an empty registry of their own or that stop, kill or
    restart it (``.stop()``, ``.start()``, ``.restart()``, ``.kill()``); the
    client side is ``.instance``.  Everything is stopped when the test ends.
    """
    made: list[RunningRegistry] = []

    def make(variant: Variant = "open", **kwargs: Any) -> RunningRegistry:
        try:
            running = start_registry(variant, tmp_path / f"{variant}-{len(made)}", **kwargs)
        except Exception as exc:
            pytest.fail(f"could not start a {variant} registry: {exc}", pytrace=False)
        made.append(running)
        return running

    try:
        yield make
    finally:
        for running in made:
            running.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``fault_proxy(instance) -> FaultProxy`` in front of ``instance``.

    Every proxy made is stopped when the test ends.
    """
    from tests.infra.proxy import FaultProxy

    made: list[FaultProxy] = []

    def make(instance: RegistryInstance, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(instance, **kwargs)
        proxy.start()
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.stop()


_MANAGER_KEY = pytest.StashKey["_Registries"]()
_NAME_CLEAN = re.compile(r"[^a-z0-9]+")


class RepoName(str):
    """A fresh repository name that can also mint more.

    ``unique_repo`` is usable directly as a string (``f"{host}/{unique_repo}:v1"``)
    and as a factory: ``unique_repo()`` gives another fresh name,
    ``unique_repo("lim")`` one under ``lim/`` (for the token variant's limited user).
    """

    _stem: str

    def __new__(cls, stem: str, prefix: str = "t") -> RepoName:
        obj = super().__new__(cls, f"{prefix}/{stem}-{secrets.token_hex(4)}")
        obj._stem = stem
        return obj

    def __call__(self, prefix: str = "t") -> RepoName:
        """Another fresh name (under ``prefix/``)."""
        clean = "/".join(p for p in (_clean(part) for part in prefix.split("/")) if p) or "t"
        return RepoName(self._stem, clean)


def _clean(text: str) -> str:
    return _NAME_CLEAN.sub("-", text.lower()).strip("-")


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> RepoName:
    """A repository name no other test uses (``t/<test-name>-<random>``)."""
    stem = _clean(request.node.name)[:40].strip("-") or "test"
    return RepoName(stem)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a registry fixture as ``integration``."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & (REGISTRY_FIXTURES | {"fault_proxy"}):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    """Attach the registries' log tails to the report of a failed integration test."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or not (set(getattr(item, "fixturenames", ())) & REGISTRY_FIXTURES):
        return
    manager = item.config.stash.get(_MANAGER_KEY, None)
    if manager is not None:
        for title, tail in manager.log_tails():
            report.sections.append((title, tail))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail (never skip) integration tests when docker-registry is missing."""
    names = set(getattr(item, "fixturenames", ()))
    if names & REGISTRY_FIXTURES:
        try:
            registry_binary()
        except RegistryBinaryMissing as exc:
            pytest.fail(str(exc), pytrace=False)


def pytest_report_header(config: pytest.Config) -> str:
    """Say which docker-registry the integration tests use."""
    try:
        path = registry_binary()
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError, RegistryBinaryMissing) as exc:
        return f"docker-registry: MISSING ({exc}); integration tests will fail"
    return f"docker-registry: {out}"
