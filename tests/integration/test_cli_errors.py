"""The CLI error contract, through the real console script and real registries.

Every failure is one ``Error: ...`` line on stderr, the documented exit code and
no traceback; ``--debug`` adds the traceback.  The commands run are the hidden
``resolve`` and, once it exists, ``manifest fetch``.
"""

from __future__ import annotations

import importlib.util
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from replicator.errors import (
    EXIT_AUTH,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
)
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import (
    REPLICATOR,
    CliResult,
    isolated_env,
    push_tiny_image,
    run_cli,
)

_COMMANDS: list[tuple[str, ...]] = [("resolve",)]
if importlib.util.find_spec("replicator.cli.cmd_manifest") is not None:
    _COMMANDS.append(("manifest", "fetch"))


@pytest.fixture(params=_COMMANDS, ids=[" ".join(c) for c in _COMMANDS])
def command(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """The command that reads one manifest: ``resolve`` and ``manifest fetch``."""
    cmd: tuple[str, ...] = request.param
    return cmd


def assert_one_error(result: CliResult, code: int, *fragments: str) -> str:
    """Exactly one non-log line on stderr, ``Error: ...`` with ``fragments``, exit ``code``."""
    assert "Traceback" not in result.output, result.stderr
    lines = result.non_log_stderr_lines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert "internal error" not in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert result.code == code, (result.code, result.stderr)
    assert result.stdout == ""
    return line


def test_malformed_reference_is_a_usage_error(command: tuple[str, ...], tmp_path: Path) -> None:
    result = run_cli(*command, "localhost:5000/Bad Repo:v1", home=tmp_path)
    assert_one_error(result, EXIT_USAGE, "Bad Repo")


def test_unknown_host_is_a_network_error(command: tuple[str, ...], tmp_path: Path) -> None:
    result = run_cli(*command, "nonexistent.invalid/x:1", home=tmp_path)
    assert_one_error(result, EXIT_NETWORK, "nonexistent.invalid")


def test_refused_connection_is_a_network_error(command: tuple[str, ...], tmp_path: Path) -> None:
    result = run_cli(*command, "127.0.0.1:9/x:1", home=tmp_path)
    assert_one_error(result, EXIT_NETWORK, "127.0.0.1:9")


def test_missing_tag_is_not_found(
    command: tuple[str, ...], registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    push_tiny_image(registry_open, unique_repo, "v1")
    result = run_cli(*command, f"{registry_open.host}/{unique_repo}:nope", home=tmp_path)
    assert_one_error(result, EXIT_NOT_FOUND)


def test_wrong_password_is_an_auth_error(
    command: tuple[str, ...], registry_basic: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert registry_basic.username is not None and registry_basic.password is not None
    ref = f"{registry_basic.host}/{unique_repo}:v1"
    result = run_cli(
        *command,
        "-u",
        registry_basic.username,
        "--password-stdin",
        ref,
        stdin="wrong-" + registry_basic.password + "\n",
        home=tmp_path,
    )
    line = assert_one_error(result, EXIT_AUTH)
    assert registry_basic.password not in result.output
    assert registry_basic.password not in line


def test_no_credentials_on_auth_registry_is_an_auth_error(
    command: tuple[str, ...], registry_basic: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    result = run_cli(*command, f"{registry_basic.host}/{unique_repo}:v1", home=tmp_path)
    assert_one_error(result, EXIT_AUTH)


def test_right_password_after_the_command_name_works(
    registry_basic: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert registry_basic.username is not None and registry_basic.password is not None
    digest = push_tiny_image(registry_basic, unique_repo, "v1")
    result = run_cli(
        "resolve",
        f"{registry_basic.host}/{unique_repo}:v1",
        "--username",
        registry_basic.username,
        "--password-stdin",
        stdin=registry_basic.password,
        home=tmp_path,
    )
    assert result.code == EXIT_OK, result.stderr
    assert result.stdout.strip() == digest


def test_tls_registry_without_ca_file_fails_cleanly(
    command: tuple[str, ...], registry_tls: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    """Without --ca-file a loopback host is spoken to over HTTP, which a TLS registry refuses."""
    push_tiny_image(registry_tls, unique_repo, "v1")
    result = run_cli(*command, f"{registry_tls.host}/{unique_repo}:v1", home=tmp_path)
    assert_one_error(result, EXIT_NETWORK, registry_tls.host)


@pytest.fixture
def foreign_ca(tmp_path: Path) -> str:
    """A CA bundle that did not sign the TLS registry's certificate."""
    path = tmp_path / "foreign-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_certificate_that_does_not_verify_is_a_network_error(
    command: tuple[str, ...],
    registry_tls: RegistryInstance,
    unique_repo: str,
    foreign_ca: str,
    tmp_path: Path,
) -> None:
    push_tiny_image(registry_tls, unique_repo, "v1")
    ref = f"{registry_tls.host}/{unique_repo}:v1"
    result = run_cli(*command, "--ca-file", foreign_ca, ref, home=tmp_path)
    line = assert_one_error(result, EXIT_NETWORK, registry_tls.host)
    assert "certificate" in line.lower()


def test_tls_with_ca_file_verifies(
    registry_tls: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert registry_tls.ca_file is not None
    digest = push_tiny_image(registry_tls, unique_repo, "v1")
    ref = f"{registry_tls.host}/{unique_repo}:v1"
    before = run_cli("--ca-file", registry_tls.ca_file, "resolve", ref, home=tmp_path)
    after = run_cli("resolve", ref, "--ca-file", registry_tls.ca_file, home=tmp_path)
    for result in (before, after):
        assert result.code == EXIT_OK, result.stderr
        assert result.stdout.strip() == digest
    missing = run_cli(
        "resolve",
        f"{registry_tls.host}/{unique_repo}:nope",
        "--ca-file",
        registry_tls.ca_file,
        home=tmp_path,
    )
    assert_one_error(missing, EXIT_NOT_FOUND)


def test_insecure_skips_certificate_verification(
    registry_tls: RegistryInstance, unique_repo: str, foreign_ca: str, tmp_path: Path
) -> None:
    digest = push_tiny_image(registry_tls, unique_repo, "v1")
    ref = f"{registry_tls.host}/{unique_repo}:v1"
    result = run_cli("resolve", "--insecure", "--ca-file", foreign_ca, ref, home=tmp_path)
    assert result.code == EXIT_OK, result.stderr
    assert result.stdout.strip() == digest


def test_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(
        "resolve", "--ca-file", str(tmp_path / "none.pem"), "a.example/x:1", home=tmp_path
    )
    assert_one_error(result, EXIT_USAGE, "none.pem")


def test_debug_adds_a_traceback_and_keeps_the_error_line(tmp_path: Path) -> None:
    result = run_cli("--debug", "resolve", "127.0.0.1:9/x:1", home=tmp_path)
    assert result.code == EXIT_NETWORK
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: ")


def test_argparse_errors_exit_2(tmp_path: Path) -> None:
    result = run_cli("resolve", home=tmp_path)
    assert result.code == EXIT_USAGE
    assert "Traceback" not in result.output
    assert "usage:" in result.stderr
    unknown = run_cli("no-such-command", home=tmp_path)
    assert unknown.code == EXIT_USAGE


def test_version_and_help(tmp_path: Path) -> None:
    version = run_cli("--version", home=tmp_path)
    assert version.code == 0
    assert version.stdout.strip() == "replicator 0.1.0"
    helped = run_cli("--help", home=tmp_path)
    assert helped.code == 0
    assert "exit codes:" in helped.stdout
    assert "--plain-http" in helped.stdout


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [
        (signal.SIGINT, 130, "Error: interrupted"),
        (signal.SIGTERM, EXIT_INTERRUPTED, "Error: stopped by SIGTERM; rerun to resume"),
    ],
    ids=["SIGINT", "SIGTERM"],
)
def test_signals_stop_a_command_with_one_line(
    signum: int, code: int, message: str, tmp_path: Path
) -> None:
    """A command stuck waiting for a registry stops cleanly on Ctrl-C and on SIGTERM."""
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen(
            [REPLICATOR, "resolve", f"{host}/x:1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=isolated_env(tmp_path),
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # wait until the request is in flight
                ready, _, _ = select.select([silent], [], [], 0.1)
                if ready:
                    break
            time.sleep(0.3)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == code, err
    assert out == ""
    assert err.strip().splitlines() == [message]
