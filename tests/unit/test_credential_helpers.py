"""Broken credential helpers fail loudly; the not-found answer still means "no credentials".

Every helper here is a real executable ``docker-credential-<name>`` written into
a temporary directory put on ``PATH``; each misbehaves in one known way.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import pytest

from replicator.errors import ConfigError, ReplicatorError
from replicator.observe.logging import MASK, register_secret
from replicator.targets.registry.credential_helpers import (
    DEFAULT_HELPER_TIMEOUT,
    ENV_HELPER_TIMEOUT,
    CredentialHelperError,
    helper_timeout,
)
from replicator.targets.registry.credentials import (
    LoginNotStoredError,
    remove_login,
    resolve_credentials,
    store_login,
)
from replicator.targets.registry.options import Credentials

PROGRAM = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
action = sys.argv[1]
data = sys.stdin.read()
with open(os.path.join(here, "{name}-calls.log"), "a") as calls:
    calls.write(action + "\\n")
{body}
"""


def write_program(bin_dir: Path, name: str, body: str) -> Path:
    """A helper ``docker-credential-<name>`` whose behaviour is the Python ``body``."""
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(PROGRAM.format(python=sys.executable, name=name, body=body))
    path.chmod(0o755)
    return path


def calls(bin_dir: Path, name: str) -> list[str]:
    path = bin_dir / f"{name}-calls.log"
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    path = tmp_path / "docker"
    path.mkdir()
    return path


def env_for(config_dir: Path, bin_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "DOCKER_CONFIG": str(config_dir),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def use_store(config_dir: Path, name: str, **more: object) -> Path:
    path = config_dir / "config.json"
    path.write_text(json.dumps({"credsStore": name, **more}))
    return path


def resolve_error(config_dir: Path, bin_dir: Path, **extra: str) -> CredentialHelperError:
    with pytest.raises(CredentialHelperError) as info:
        resolve_credentials("reg.test", env=env_for(config_dir, bin_dir, **extra))
    return info.value


# --------------------------------------------------------------------------- get


def test_missing_helper_program_is_an_error_naming_it_and_the_config_entry(
    config_dir: Path, bin_dir: Path
) -> None:
    path = use_store(config_dir, "absent")
    error = resolve_error(config_dir, bin_dir)
    text = str(error)
    assert "docker-credential-absent" in text
    assert "not installed" in text
    assert f"credsStore in {path}" in text
    assert error.exit_code == 1
    assert "login" not in text


def test_missing_cred_helper_for_one_host_names_that_entry(config_dir: Path, bin_dir: Path) -> None:
    (config_dir / "config.json").write_text(json.dumps({"credHelpers": {"reg.test": "gone"}}))
    text = str(resolve_error(config_dir, bin_dir))
    assert "docker-credential-gone" in text and "credHelpers['reg.test']" in text
    # Another host is not concerned by that helper.
    assert resolve_credentials("other.test", env=env_for(config_dir, bin_dir)) is None


@pytest.mark.parametrize(
    "output",
    [
        "this is not json",
        "[1, 2, 3]",
        '{"Username": "u", "Secret": 5}',
        '{"Username": ["u"], "Secret": "s"}',
    ],
    ids=["garbage", "json-list", "secret-not-a-string", "username-not-a-string"],
)
def test_helper_output_that_is_not_its_json_answer_is_an_error(
    config_dir: Path, bin_dir: Path, output: str
) -> None:
    write_program(bin_dir, "garbage", f"print({output!r})")
    use_store(config_dir, "garbage")
    text = str(resolve_error(config_dir, bin_dir))
    assert "docker-credential-garbage" in text
    assert "not the expected JSON" in text
    assert output not in text


def test_helper_exit_status_and_first_stderr_line_are_reported_with_secrets_masked(
    config_dir: Path, bin_dir: Path
) -> None:
    known = "kn0wn-" + secrets.token_hex(6)
    register_secret(known)
    body = (
        f"sys.stderr.write('unlock failed for {known}: access_token=abc123def456\\n')\n"
        "sys.stderr.write('second line stays out\\n')\n"
        "sys.exit(5)"
    )
    write_program(bin_dir, "failing", body)
    use_store(config_dir, "failing")
    text = str(resolve_error(config_dir, bin_dir))
    assert "docker-credential-failing" in text
    assert "exit status 5" in text
    assert "unlock failed for" in text
    assert known not in text and "abc123def456" not in text
    assert MASK in text
    assert "second line" not in text


def test_helper_error_printed_on_stdout_is_quoted(config_dir: Path, bin_dir: Path) -> None:
    write_program(bin_dir, "dbus", "print('cannot reach the secret service'); sys.exit(1)")
    use_store(config_dir, "dbus")
    text = str(resolve_error(config_dir, bin_dir))
    assert "exit status 1: cannot reach the secret service" in text


def test_failing_helper_answer_holding_a_secret_is_never_quoted(
    config_dir: Path, bin_dir: Path
) -> None:
    secret = "half-" + secrets.token_hex(8)
    answer = json.dumps({"Username": "u", "Secret": secret})
    write_program(bin_dir, "half", f"print({answer!r}); sys.exit(2)")
    use_store(config_dir, "half")
    text = str(resolve_error(config_dir, bin_dir))
    assert "exit status 2, no message" in text
    assert secret not in text


def test_hanging_helper_is_stopped_at_the_configured_limit(config_dir: Path, bin_dir: Path) -> None:
    write_program(bin_dir, "slow", "time.sleep(60)")
    use_store(config_dir, "slow")
    started = time.monotonic()
    text = str(resolve_error(config_dir, bin_dir, **{ENV_HELPER_TIMEOUT: "0.5"}))
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed
    assert "docker-credential-slow" in text
    assert "did not answer 'get' within 0.5 s" in text
    assert ENV_HELPER_TIMEOUT in text


def test_helper_time_limit_defaults_to_ten_seconds_and_rejects_nonsense() -> None:
    assert DEFAULT_HELPER_TIMEOUT == 10.0
    assert helper_timeout({}) == 10.0
    assert helper_timeout({ENV_HELPER_TIMEOUT: " 2.5 "}) == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match=ENV_HELPER_TIMEOUT):
            helper_timeout({ENV_HELPER_TIMEOUT: bad})


def test_not_found_answer_still_means_no_credentials(config_dir: Path, bin_dir: Path) -> None:
    body = "print('credentials not found in native keychain'); sys.exit(1)"
    write_program(bin_dir, "empty", body)
    use_store(config_dir, "empty", auths={"other.test": {}})
    assert resolve_credentials("reg.test", env=env_for(config_dir, bin_dir)) is None
    assert calls(bin_dir, "empty") == ["get"]


def test_helper_name_with_a_path_is_a_config_error(config_dir: Path, bin_dir: Path) -> None:
    use_store(config_dir, "../../bin/sh")
    with pytest.raises(ConfigError, match="not a credential helper name"):
        resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))


def test_secret_from_a_helper_is_registered_for_redaction(config_dir: Path, bin_dir: Path) -> None:
    from replicator.observe.logging import redact_text

    secret = "fromhelper-" + secrets.token_hex(8)
    answer = json.dumps({"ServerURL": "reg.test", "Username": "u", "Secret": secret})
    write_program(bin_dir, "good", f"print({answer!r})")
    use_store(config_dir, "good")
    creds = resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))
    assert creds == Credentials("u", secret)
    assert redact_text(f"x {secret} y") == f"x {MASK} y"


# --------------------------------------------------------------------------- store / erase

STORE_THEN_GARBAGE = """
if action == "store":
    open(os.path.join(here, "stored.json"), "w").write(data)
elif action == "get":
    print("garbage")
"""

STORE_MANGLED = """
store = os.path.join(here, "stored.json")
if action == "store":
    doc = json.loads(data)
    doc["Secret"] = doc["Secret"][::-1]
    open(store, "w").write(json.dumps(doc))
elif action == "get":
    print(open(store).read())
"""


def test_store_login_through_a_helper_whose_get_prints_garbage_fails(
    config_dir: Path, bin_dir: Path
) -> None:
    write_program(bin_dir, "liar", STORE_THEN_GARBAGE)
    path = use_store(config_dir, "liar")
    before = path.read_text()
    with pytest.raises(LoginNotStoredError) as info:
        store_login("reg.test", "alice", "pa55-word-1", env=env_for(config_dir, bin_dir))
    text = str(info.value)
    assert "docker-credential-liar" in text and "not the expected JSON" in text
    assert "pa55-word-1" not in text
    assert calls(bin_dir, "liar") == ["store", "get"]
    assert path.read_text() == before


def test_store_login_through_a_helper_that_changes_the_secret_fails(
    config_dir: Path, bin_dir: Path
) -> None:
    write_program(bin_dir, "mangler", STORE_MANGLED)
    path = use_store(config_dir, "mangler")
    with pytest.raises(LoginNotStoredError, match="gives back a different password") as info:
        store_login("reg.test", "alice", "pa55-word-2", env=env_for(config_dir, bin_dir))
    assert "pa55-word-2" not in str(info.value) and "2-drow-55ap" not in str(info.value)
    assert json.loads(path.read_text()) == {"credsStore": "mangler"}


def test_store_login_through_a_failing_helper_reports_it(config_dir: Path, bin_dir: Path) -> None:
    body = "sys.stderr.write('keychain is read-only\\n'); sys.exit(1)"
    write_program(bin_dir, "readonly", body)
    use_store(config_dir, "readonly")
    with pytest.raises(CredentialHelperError, match="failed to store") as info:
        store_login("reg.test", "alice", "pa55-word-3", env=env_for(config_dir, bin_dir))
    assert "keychain is read-only" in str(info.value)
    assert "pa55-word-3" not in str(info.value)


def test_remove_login_with_a_failing_helper_fails_and_keeps_the_config(
    config_dir: Path, bin_dir: Path
) -> None:
    body = "sys.stderr.write('erase refused\\n'); sys.exit(4)"
    write_program(bin_dir, "sticky", body)
    path = use_store(config_dir, "sticky", auths={"reg.test": {}})
    before = path.read_text()
    with pytest.raises(CredentialHelperError, match=r"failed to erase .*exit status 4"):
        remove_login("reg.test", env=env_for(config_dir, bin_dir))
    assert path.read_text() == before


def test_remove_login_when_the_helper_holds_nothing(config_dir: Path, bin_dir: Path) -> None:
    body = "print('credentials not found in native keychain'); sys.exit(1)"
    write_program(bin_dir, "empty", body)
    use_store(config_dir, "empty")
    assert remove_login("reg.test", env=env_for(config_dir, bin_dir)) is False


def test_helper_errors_are_replicator_errors() -> None:
    assert issubclass(CredentialHelperError, ReplicatorError)
    assert issubclass(LoginNotStoredError, ReplicatorError)
