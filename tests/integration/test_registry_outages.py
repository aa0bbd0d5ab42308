"""Registries that stop answering: time-outs, retry deadlines, restarts mid-copy.

* A registry that accepts connections and never answers fails a request within
  about the read time-out plus the retry deadline (``--timeout``,
  ``--retry-deadline``), with exit 5 and one clear line.
* A registry that answered before and then refuses connections (a restart) is
  waited for, within the retry deadline; one that never answered fails fast.
* A destination registry stopped for 5 seconds in the middle of a chunked copy
  and started again on the same port, storage and ``http.secret``: the copy
  finishes in the same run, continuing its upload session where the registry
  had it, and the graph arrives complete and byte exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replicator.errors import EXIT_NETWORK, EXIT_OK, ConnectionFailedError
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import parse_manifest
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions, RetryPolicy
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance, RunningRegistry, upload_patches
from tests.integration.cli_helpers import REPLICATOR, CliResult, isolated_env, run_cli
from tests.integration.graphs import GraphBuilder, SignedImage, assert_same_graph
from tests.integration.test_registry_client import run

MiB = 1024 * 1024


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte back."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._held.append(conn)  # kept open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


# -- time-outs ------------------------------------------------------------------------------


def test_stalled_registry_fails_within_read_timeout_plus_deadline(
    silent_server: SilentServer,
) -> None:
    options = RegistryOptions(plain_http=True, read_timeout=0.5, retry_deadline=1.5)

    async def scenario() -> tuple[float, ConnectionFailedError]:
        async with RegistryTarget(silent_server.host, options) as target:
            started = time.monotonic()
            with pytest.raises(ConnectionFailedError) as info:
                await target.resolve("app", "v1")
            return time.monotonic() - started, info.value

    elapsed, error = run(scenario)
    # First failure after the read time-out (0.5 s), then retries for 1.5 s.
    assert 1.9 <= elapsed < 3.5, elapsed
    message = str(error)
    assert message.startswith(f"cannot reach {silent_server.host}: timed out waiting for an answer")
    assert "gave up after" in message
    assert silent_server.accepted >= 3  # retried, not given up at the first time-out


@pytest.mark.parametrize("command", ["resolve", "copy"])
def test_stalled_registry_on_the_command_line_is_exit_5_with_one_line(
    silent_server: SilentServer, command: str, tmp_path: Path
) -> None:
    source = f"{silent_server.host}/app:v1"
    args = [source] if command == "resolve" else [source, "127.0.0.1:9/app:v1"]
    started = time.monotonic()
    result = run_cli("--timeout", "1", "--retry-deadline", "2", command, *args, home=tmp_path)
    elapsed = time.monotonic() - started
    assert result.code == EXIT_NETWORK, result.stderr
    lines = result.non_log_stderr_lines()
    assert len(lines) == 1, result.stderr
    side = "source: " if command == "copy" else ""
    expected = f"Error: {side}cannot reach {silent_server.host}: timed out waiting for an answer"
    assert lines[0].startswith(expected), lines[0]
    assert "gave up after" in lines[0]
    assert "Traceback" not in result.stderr
    # About --timeout + --retry-deadline (3 s) plus the start of the process.
    assert elapsed < 12, elapsed


def test_time_out_flags_reach_the_registry_options(tmp_path: Path) -> None:
    from replicator.cli.context import CliContext
    from replicator.cli.main import build_parser

    args = build_parser().parse_args(
        ["--connect-timeout", "2.5", "resolve", "--timeout", "7", "--retry-deadline", "90", "x/y:1"]
    )
    options = CliContext.from_args(args).registry_options("reg.example")
    assert (options.connect_timeout, options.read_timeout, options.retry_deadline) == (2.5, 7, 90)
    defaults = CliContext.from_args(build_parser().parse_args(["resolve", "x/y:1"]))
    plain = defaults.registry_options("reg.example")
    assert (plain.connect_timeout, plain.read_timeout, plain.retry_deadline) == (10, 30, 60)
    bad = run_cli("--timeout", "0", "resolve", "x/y:1", home=tmp_path)
    assert bad.code == 2 and "positive number of seconds" in bad.stderr


# -- refused connections ------------------------------------------------------------------


def test_registry_that_answered_before_is_waited_for_while_it_restarts(
    registry_factory: Callable[..., RunningRegistry], unique_repo: str
) -> None:
    running = registry_factory("open")
    instance = running.instance
    fast = RetryPolicy(base_delay=0.05)

    async def scenario() -> tuple[list[str], float, int]:
        async with RegistryTarget(instance.host, instance.options(retry=fast)) as target:
            await target.ping()
            running.stop()
            # Down for 2 s: five times what the old two quick retries waited.
            restart = threading.Timer(2.0, running.start)
            restart.start()
            started = time.monotonic()
            try:
                tags = await target.tags_within(unique_repo, 1)
            finally:
                restart.join()
            return tags or [], time.monotonic() - started, target.stats.retries

    tags, elapsed, retries = run(scenario)
    assert tags == []
    assert elapsed >= 1.5
    assert retries >= 3


def test_refused_connection_of_a_host_that_never_answered_fails_fast() -> None:
    options = RegistryOptions(plain_http=True, retry=RetryPolicy(base_delay=0.05))

    async def scenario() -> tuple[float, int]:
        async with RegistryTarget("127.0.0.1:9", options) as target:
            started = time.monotonic()
            with pytest.raises(ConnectionFailedError, match=r"cannot reach 127\.0\.0\.1:9: "):
                await target.resolve("app", "v1")
            return time.monotonic() - started, target.stats.manifest_head

    elapsed, sent = run(scenario)
    assert elapsed < 2
    assert sent == 3


# -- a destination restarted in the middle of a copy ---------------------------------------

LAYER = 6 * MiB
CHUNK = 256 * 1024


def _build_source(instance: Any, repository: str) -> SignedImage:
    async def scenario() -> SignedImage:
        async with RegistryTarget(instance.host, instance.options()) as target:
            builder = GraphBuilder(target, repository)
            return await builder.signed_image("outage", tags=["v1"], layers=1, layer_size=LAYER)

    return run(scenario)


def _layer_of(instance: Any, repository: str, image: SignedImage) -> Descriptor:
    async def scenario() -> Descriptor:
        async with RegistryTarget(instance.host, instance.options()) as target:
            _, raw = await target.fetch_manifest(repository, image.image)
        return parse_manifest(raw).layers[0]

    return run(scenario)


def _wait_for_patches(log_file: Path, count: int, copy: subprocess.Popen[str]) -> None:
    """Until the destination has taken ``count`` chunks of the layer's upload."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [p for p in upload_patches(log_file) if p.status == 202 and p.offset > 0]
        if len(done) >= count:
            return
        assert copy.poll() is None, "the copy ended before the destination went down"
        time.sleep(0.02)
    raise AssertionError(f"the destination never took {count} chunks")


def test_destination_restarted_mid_copy_continues_its_chunked_upload(
    registry_open: RegistryInstance,
    registry_factory: Callable[..., RunningRegistry],
    fault_proxy: Callable[..., FaultProxy],
    unique_repo: str,
    tmp_path: Path,
) -> None:
    signed = _build_source(registry_open, unique_repo)
    layer = _layer_of(registry_open, unique_repo, signed)
    assert layer.size == LAYER
    # The source is read through a proxy that pauses after every chunk's worth of
    # the layer, so the upload takes a few seconds: long enough to stop the
    # destination in the middle of it.
    source = fault_proxy(registry_open)
    for k in range(1, LAYER // CHUNK):
        source.delay("GET", f"/blobs/{layer.digest}", 0.12, after_bytes=k * CHUNK)
    # The destination stops gracefully (requests in flight finish, as a registry
    # deployed for rolling restarts does), keeps port, storage and http.secret.
    destination = registry_factory("open", drain_timeout=10)
    dst = destination.instance
    assert dst.log_file is not None
    copy = subprocess.Popen(
        [
            REPLICATOR,
            "copy",
            "-r",
            "--chunk-size",
            str(CHUNK),
            f"{source.host}/{unique_repo}:v1",
            f"{dst.host}/{unique_repo}:v1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=isolated_env(tmp_path),
    )
    try:
        _wait_for_patches(dst.log_file, 6, copy)
        before = len(upload_patches(dst.log_file))
        destination.restart(downtime=5.0)
        stdout, stderr = copy.communicate(timeout=180)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.communicate()
    result = CliResult(copy.returncode, stdout, stderr)
    assert result.code == EXIT_OK, result.stderr
    assert '"registry.request_retried"' in result.stderr  # it did meet the outage

    # One upload session for the layer, continued after the restart: every chunk
    # offset was sent once, at most the chunk in flight at the stop twice.
    patches = [p for p in upload_patches(dst.log_file) if p.repository == unique_repo]
    layer_uploads = {p.upload for p in patches if p.offset > 0}
    assert len(layer_uploads) == 1, patches
    offsets = [p.offset for p in patches if p.upload in layer_uploads and p.status == 202]
    assert sorted(set(offsets)) == list(range(0, LAYER, CHUNK))
    assert len(offsets) - len(set(offsets)) <= 1
    assert before < len(patches)  # chunks went up after the restart too
    # The source was read once, plus at most one chunk read again.
    read = sum(
        r.bytes_down for r in source.stats().log if r.method == "GET" and layer.digest in r.path
    )
    assert LAYER <= read <= LAYER + CHUNK

    async def verify() -> None:
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(dst.host, dst.options()) as out,
        ):
            await assert_same_graph(src, unique_repo, "v1", out, unique_repo, "v1")
            digest = hashlib.sha256()
            async for chunk in out.fetch_blob(unique_repo, layer):
                digest.update(chunk)
            assert f"sha256:{digest.hexdigest()}" == layer.digest

    asyncio.run(verify())
