"""No password or token ever reaches the output, even with ``--debug``.

Runs the real console script with ``--debug --log-format json`` against the
basic-auth and token-auth registries, with right and wrong passwords and with
``login``, and scans everything written to stdout and stderr.  The token
server's log records no secrets, so issued tokens are caught by shape: any JWT
(``eyJ...eyJ...``) or a ``refresh_token`` value that is not masked fails.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, push_tiny_image, run_cli

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.")
UNMASKED_REFRESH = re.compile(
    r"refresh_token\\?\"?'?\s*[:=]\s*\\?\"?'?(?!\*\*\*)[A-Za-z0-9_-]{16,}"
)


def assert_no_secrets(result: CliResult, instance: RegistryInstance) -> None:
    """Neither a password, its Basic encoding, a JWT nor a refresh token appears."""
    text = result.output
    for user, password in instance.users.items():
        assert password not in text, f"password of {user} leaked"
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert basic not in text, f"Basic credentials of {user} leaked"
    assert not JWT.search(text), "a JWT leaked"
    assert not UNMASKED_REFRESH.search(text), "a refresh token leaked"


def debug_records(result: CliResult) -> list[dict[str, object]]:
    """The JSON log records on stderr (proof that debug logging was on)."""
    records = []
    for line in result.stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@pytest.fixture(params=["basic", "token"])
def auth_registry(
    request: pytest.FixtureRequest,
    registry_basic: RegistryInstance,
    registry_token: RegistryInstance,
) -> RegistryInstance:
    """The basic-auth and the token-auth registry in turn."""
    return registry_basic if request.param == "basic" else registry_token


def _existing_ref(instance: RegistryInstance, repo: str) -> str:
    """A reference that exists: pushed by hand on basic, anything on token (a 404 is fine)."""
    if instance.name == "basic":
        push_tiny_image(instance, repo, "v1")
    return f"{instance.host}/{repo}:v1"


def test_right_password_with_debug_leaks_nothing(
    auth_registry: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert auth_registry.username is not None and auth_registry.password is not None
    ref = _existing_ref(auth_registry, unique_repo)
    for how in ("stdin", "flag"):
        secret_args = (
            ["--password-stdin"] if how == "stdin" else ["--password", auth_registry.password]
        )
        result = run_cli(
            "--debug",
            "--log-format",
            "json",
            "resolve",
            "-u",
            auth_registry.username,
            *secret_args,
            ref,
            stdin=auth_registry.password if how == "stdin" else None,
            home=tmp_path,
        )
        # Authenticated: found (basic, pushed) or not found (token, empty repo), never 4.
        assert result.code in (0, 3), result.stderr
        assert debug_records(result), "expected debug log records on stderr"
        assert_no_secrets(result, auth_registry)


def test_wrong_password_with_debug_leaks_nothing(
    auth_registry: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert auth_registry.username is not None and auth_registry.password is not None
    wrong = "Wr0ng-" + auth_registry.password[::-1]
    result = run_cli(
        "--debug",
        "--log-format",
        "json",
        "resolve",
        "-u",
        auth_registry.username,
        "--password",
        wrong,
        f"{auth_registry.host}/{unique_repo}:v1",
        home=tmp_path,
    )
    assert result.code == 4, result.stderr
    assert "Traceback" in result.stderr  # --debug shows it, redacted
    assert wrong not in result.output
    assert_no_secrets(result, auth_registry)


def test_env_password_with_debug_leaks_nothing(
    registry_token: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    """A token fetched for a user and used for several requests never shows."""
    assert registry_token.username is not None and registry_token.password is not None
    ref = f"{registry_token.host}/{unique_repo}:v1"
    result = run_cli(
        "resolve",
        ref,
        "--debug",
        "--log-format=json",
        "--username",
        registry_token.username,
        "--password-stdin",
        stdin=registry_token.password + "\n",
        home=tmp_path,
    )
    assert result.code == 3, result.stderr  # authenticated, the tag does not exist
    issued = [e for e in registry_token.token_log() if e.get("user") == registry_token.username]
    assert issued, "the token server issued no token, so the test proved nothing"
    assert_no_secrets(result, registry_token)


def test_login_with_debug_leaks_nothing(
    auth_registry: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert auth_registry.username is not None and auth_registry.password is not None
    login = run_cli(
        "--debug",
        "--log-format",
        "json",
        "login",
        auth_registry.host,
        "-u",
        auth_registry.username,
        "--password-stdin",
        stdin=auth_registry.password + "\n",
        home=tmp_path,
    )
    assert login.code == 0, login.stderr
    assert_no_secrets(login, auth_registry)
    # The stored login is used without flags, and still nothing leaks.
    ref = _existing_ref(auth_registry, unique_repo)
    after = run_cli("--debug", "--log-format", "json", "resolve", ref, home=tmp_path)
    assert after.code in (0, 3), after.stderr
    assert_no_secrets(after, auth_registry)
    wrong = run_cli(
        "--debug",
        "login",
        auth_registry.host,
        "-u",
        auth_registry.username,
        "--password-stdin",
        stdin="nope-" + auth_registry.password,
        home=tmp_path,
    )
    assert wrong.code == 4, wrong.stderr
    assert "nope-" not in wrong.output
    assert_no_secrets(wrong, auth_registry)


def test_password_echoed_in_an_error_is_masked(
    registry_basic: RegistryInstance, tmp_path: Path
) -> None:
    """Input that happens to contain the password is masked in the one error line."""
    assert registry_basic.username is not None and registry_basic.password is not None
    password = registry_basic.password
    result = run_cli(
        "--debug",
        "resolve",
        "-u",
        registry_basic.username,
        "--password-stdin",
        f"{registry_basic.host}/t/x:{password} oops",
        stdin=password,
        home=tmp_path,
    )
    assert result.code == 2, result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith("Error: invalid reference")
    assert "***" in last
    assert_no_secrets(result, registry_basic)
