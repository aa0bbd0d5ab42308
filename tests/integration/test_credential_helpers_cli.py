"""Credential helpers through the real console script, against a real Basic-auth registry.

A broken ``docker-credential-*`` helper (missing, garbage, failing, hanging) is
one clear error naming it, not an anonymous request that ends in "log in";
``login`` reads back what it stored and prints ``Login Succeeded`` only when
it reads back the same; ``logout`` does not claim success when the helper
could not erase.  No secret reaches stdout or stderr, ``--debug`` included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import (
    REPLICATOR,
    CliResult,
    isolated_env,
    push_tiny_image,
)

HELPER = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
store_path = os.path.join(here, "{name}-store.json")
store = json.load(open(store_path)) if os.path.exists(store_path) else {{}}
action = sys.argv[1]
data = sys.stdin.read()
{body}
"""

#: A helper that works as the protocol says (its store is a JSON file beside it).
WORKING = """
if action == "get":
    if data.strip() not in store:
        print("credentials not found in native keychain"); sys.exit(1)
    user, secret = store[data.strip()]
    print(json.dumps({"ServerURL": data.strip(), "Username": user, "Secret": secret}))
elif action == "store":
    doc = json.loads(data)
    store[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
    json.dump(store, open(store_path, "w"))
elif action == "erase":
    if store.pop(data.strip(), None) is None:
        print("credentials not found in native keychain"); sys.exit(1)
    json.dump(store, open(store_path, "w"))
"""

BROKEN = {
    "garbage": "print('<html>login page</html>')",
    "failing": "sys.stderr.write('the keyring is locked\\nmore detail\\n'); sys.exit(3)",
    "hanging": "time.sleep(120)",
}


def write_helper(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(HELPER.format(python=sys.executable, name=name, body=body))
    path.chmod(0o755)


def run(
    home: Path, bin_dir: Path, *args: str, stdin: str = "", timeout: float = 60, **env: str
) -> CliResult:
    """Run the console script with the helpers of ``bin_dir`` on PATH."""
    full = isolated_env(home)
    full["PATH"] = f"{bin_dir}{os.pathsep}{full.get('PATH', '')}"
    full.update(env)
    proc = subprocess.run(
        [REPLICATOR, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def config_path(home: Path) -> Path:
    return home / ".docker" / "config.json"


def write_config(home: Path, doc: object) -> None:
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def error_line(result: CliResult) -> str:
    assert "Traceback" not in result.output, result.stderr
    lines = [line for line in result.non_log_stderr_lines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def image(registry_basic: RegistryInstance, unique_repo: str) -> str:
    push_tiny_image(registry_basic, unique_repo, "v1")
    return f"{registry_basic.host}/{unique_repo}:v1"


@pytest.mark.parametrize("kind", ["missing", "garbage", "failing", "hanging"])
def test_broken_helper_is_one_clear_error_naming_it(
    registry_basic: RegistryInstance, image: str, home: Path, bin_dir: Path, kind: str
) -> None:
    if kind != "missing":
        write_helper(bin_dir, kind, BROKEN[kind])
    write_config(home, {"credsStore": kind})
    started = time.monotonic()
    result = run(
        home, bin_dir, "resolve", image, REPLICATOR_CREDENTIAL_HELPER_TIMEOUT="1", timeout=90
    )
    elapsed = time.monotonic() - started
    line = error_line(result)
    assert result.code == 1, result.stderr
    assert f"docker-credential-{kind}" in line
    assert f"credsStore in {config_path(home)}" in line
    assert "login" not in line
    expected = {
        "missing": "is not installed",
        "garbage": "not the expected JSON",
        "failing": "exit status 3: the keyring is locked",
        "hanging": "did not answer 'get' within 1 s",
    }[kind]
    assert expected in line
    assert "more detail" not in line
    assert elapsed < 30, elapsed


def test_helper_not_found_answer_still_means_anonymous(
    registry_basic: RegistryInstance, image: str, home: Path, bin_dir: Path
) -> None:
    write_helper(bin_dir, "empty", WORKING)
    write_config(home, {"credsStore": "empty"})
    result = run(home, bin_dir, "resolve", image)
    assert result.code == 4, result.stderr
    assert "authentication required" in error_line(result)


def test_login_through_a_working_helper_reads_back_and_is_used(
    registry_basic: RegistryInstance, image: str, home: Path, bin_dir: Path
) -> None:
    user, password = registry_basic.username, registry_basic.password
    assert user is not None and password is not None
    write_helper(bin_dir, "keep", WORKING)
    write_config(home, {"credsStore": "keep"})
    host = registry_basic.host
    result = run(
        home, bin_dir, "--debug", "login", host, "-u", user, "--password-stdin", stdin=password
    )
    assert result.code == 0, result.stderr
    assert result.stdout == "Login Succeeded\n"
    assert password not in result.output
    assert json.loads((bin_dir / "keep-store.json").read_text()) == {host: [user, password]}
    assert json.loads(config_path(home).read_text()) == {"credsStore": "keep", "auths": {host: {}}}

    resolved = run(home, bin_dir, "resolve", image)
    assert resolved.code == 0, resolved.stderr

    out = run(home, bin_dir, "logout", host)
    assert (out.code, out.stdout) == (0, f"Removed login credentials for {host}\n")
    assert json.loads((bin_dir / "keep-store.json").read_text()) == {}


#: ``store`` succeeds, ``get`` answers garbage.
STORE_THEN_GARBAGE = """
if action == "store":
    json.dump(json.loads(data), open(store_path, "w"))
else:
    print("OK")
"""

#: ``store`` keeps a truncated secret (as a helper with a length limit might).
STORE_TRUNCATED = WORKING.replace('doc["Secret"]]', 'doc["Secret"][:4]]')


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (STORE_THEN_GARBAGE, "reading them back failed"),
        (STORE_TRUNCATED, "gives back a different password"),
    ],
    ids=["get-prints-garbage", "get-gives-other-secret"],
)
def test_login_through_a_helper_that_does_not_give_back_the_credentials_fails(
    registry_basic: RegistryInstance, home: Path, bin_dir: Path, body: str, expected: str
) -> None:
    user, password = registry_basic.username, registry_basic.password
    assert user is not None and password is not None
    write_helper(bin_dir, "odd", body)
    write_config(home, {"credsStore": "odd"})
    result = run(
        home,
        bin_dir,
        "--debug",
        "login",
        registry_basic.host,
        "-u",
        user,
        "--password-stdin",
        stdin=password,
    )
    assert result.code == 1, result.stderr
    assert "Login Succeeded" not in result.stdout
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: login ") and expected in line, result.stderr
    assert "docker-credential-odd" in line or "different password" in line
    assert password not in result.output and password[:4] not in line
    assert json.loads(config_path(home).read_text()) == {"credsStore": "odd"}


def test_logout_through_a_helper_that_cannot_erase_fails(
    registry_basic: RegistryInstance, home: Path, bin_dir: Path
) -> None:
    write_helper(bin_dir, "failing", BROKEN["failing"])
    host = registry_basic.host
    write_config(home, {"credsStore": "failing", "auths": {host: {}}})
    before = config_path(home).read_text()
    result = run(home, bin_dir, "logout", host)
    assert result.code == 1, result.stderr
    assert result.stdout == ""
    line = error_line(result)
    assert "docker-credential-failing" in line and "failed to erase" in line
    assert config_path(home).read_text() == before
