"""Helpers for the service tests: a ``sync --watch`` process, its logs and its ``/metrics``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families

from replicator.oci.descriptor import Descriptor
from replicator.targets.registry import RegistryTarget
from tests.infra.process import free_port
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import REPLICATOR, isolated_env
from tests.integration.graphs import GraphBuilder

#: Generous: the machine is shared, a process start costs seconds there.
PATIENCE = 90.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """``(sample name, sorted labels) -> value``, parsed by prometheus-client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError naming what exists when it is missing)."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        near = sorted(k for k in samples if k[0] == name)
        raise KeyError(f"{key} not among {near}")
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def wait_until(check: Callable[[], Any], what: str, timeout: float = PATIENCE) -> Any:
    """Poll ``check`` until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def push_image(
    instance: RegistryInstance, repository: str, tag: str, *, layer_size: int = 2048
) -> Descriptor:
    """Push a two-layer image tagged ``tag``; its manifest's descriptor."""

    async def main() -> Descriptor:
        async with RegistryTarget(instance.host, instance.options()) as t:
            return await GraphBuilder(t, repository).image(
                f"{repository}:{tag}", tags=[tag], layer_size=layer_size
            )

    return anyio.run(main)


def tags_of(instance: RegistryInstance, repository: str) -> list[str]:
    """The tags of ``repository`` (empty when it does not exist)."""

    async def main() -> list[str]:
        async with RegistryTarget(instance.host, instance.options()) as t:
            try:
                return list(await t.tags(repository))
            except Exception:
                return []

    return anyio.run(main)


class ServiceProcess:
    """A ``replicator`` process with JSON logs in files (so a test reads them while it runs)."""

    def __init__(self, args: Iterable[str], home: Path, name: str = "proc") -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.stdout_path = home / f"{name}.stdout"
        self.stderr_path = home / f"{name}.stderr"
        self._out = self.stdout_path.open("w")
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [REPLICATOR, "--log-format", "json", *args],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=isolated_env(home),
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.stderr_path.read_text()

    def stdout(self) -> str:
        """Everything the process wrote to stdout so far."""
        return self.stdout_path.read_text()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log events so far (named ``name`` when given)."""
        out = []
        for line in self.stderr().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (name is None or record.get("event") == name):
                out.append(record)
        return out

    def wait_event(self, name: str, count: int = 1, timeout: float = PATIENCE) -> list[Any]:
        """Wait until ``count`` events named ``name`` were logged; all of them."""

        def check() -> list[Any] | None:
            if self.proc.poll() is not None and len(self.events(name)) < count:
                raise AssertionError(
                    f"exited {self.proc.returncode} before {count} {name}:\n{self.stderr()[-4000:]}"
                )
            found = self.events(name)
            return found if len(found) >= count else None

        return wait_until(check, f"{count} x {name}", timeout)  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        """Send ``sig``."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float = PATIENCE) -> int:
        """Wait for the exit; the exit code."""
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        """Kill the process if it still runs; close the log files."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WatchProcess(ServiceProcess):
    """``replicator sync CONFIG --watch --metrics-addr 127.0.0.1:PORT ...``."""

    def __init__(self, config: Path, journal: Path, home: Path, *extra: str, name: str = "watch"):
        self.port = free_port()
        super().__init__(
            [
                "sync",
                str(config),
                "--watch",
                "--journal",
                str(journal),
                "--metrics-addr",
                f"127.0.0.1:{self.port}",
                *extra,
            ],
            home,
            name,
        )

    def get(self, path: str) -> tuple[int, str]:
        """``GET path`` on the metrics endpoint: status and body (0, "" when nobody answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> Samples:
        """``/metrics``, parsed."""
        status, body = self.get("/metrics")
        assert status == 200, (status, body)
        return parse_metrics(body)

    def wait_ready(self, timeout: float = PATIENCE) -> None:
        """Wait until ``/readyz`` says ready (the first pass is done)."""

        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.stderr()[-4000:]}")
            return self.get("/readyz")[0] == 200

        wait_until(check, "/readyz", timeout)

    def terminate(self, timeout: float = PATIENCE) -> int:
        """SIGTERM, then the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)
