"""Credential precedence, Docker config variants and real credential helpers.

Helpers are real executables (``docker-credential-test``) written into a temp
directory that the tests put on PATH; they keep their store in a JSON file.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from replicator.errors import ConfigError, UsageError
from replicator.targets.registry.credentials import (
    CredentialHelperError,
    registry_key,
    remove_login,
    resolve_credentials,
    server_address,
    store_login,
)
from replicator.targets.registry.options import Credentials

HELPER = """#!{python}
import json, os, sys
store_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}-store.json")
log_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{name}-calls.log")
store = json.load(open(store_path)) if os.path.exists(store_path) else {{}}
action = sys.argv[1]
data = sys.stdin.read()
with open(log_path, "a") as log:
    log.write(action + " " + (data.strip() if action != "store" else json.loads(data)["ServerURL"]) + "\\n")
if action == "get":
    server = data.strip()
    if {fail}:
        print("helper exploded", file=sys.stderr); sys.exit(3)
    if server not in store:
        print("credentials not found in native keychain"); sys.exit(1)
    entry = store[server]
    print(json.dumps({{"ServerURL": server, "Username": entry[0], "Secret": entry[1]}}))
elif action == "store":
    doc = json.loads(data)
    store[doc["ServerURL"]] = [doc["Username"], doc["Secret"]]
    json.dump(store, open(store_path, "w"))
elif action == "erase":
    server = data.strip()
    if server not in store:
        print("credentials not found in native keychain"); sys.exit(1)
    del store[server]
    json.dump(store, open(store_path, "w"))
"""


def write_helper(bin_dir: Path, name: str, *, fail: bool = False) -> Path:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(HELPER.format(python=sys.executable, name=name, fail=fail))
    path.chmod(0o755)
    return path


def helper_store(bin_dir: Path, name: str) -> dict[str, list[str]]:
    path = bin_dir / f"{name}-store.json"
    return json.loads(path.read_text()) if path.exists() else {}


def seed_helper(bin_dir: Path, name: str, entries: dict[str, list[str]]) -> None:
    (bin_dir / f"{name}-store.json").write_text(json.dumps(entries))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


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


def write_config(config_dir: Path, doc: object) -> Path:
    path = config_dir / "config.json"
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------- precedence


def test_flags_beat_environment_and_config(config_dir: Path, bin_dir: Path) -> None:
    write_config(config_dir, {"auths": {"reg.test": {"auth": b64("cfg:cfgpw")}}})
    env = env_for(config_dir, bin_dir, REPLICATOR_USERNAME="envu", REPLICATOR_PASSWORD="envpw")
    creds = resolve_credentials("reg.test", username="flag", password="flagpw", env=env)
    assert creds == Credentials(username="flag", password="flagpw")


def test_environment_beats_config(config_dir: Path, bin_dir: Path) -> None:
    write_config(config_dir, {"auths": {"reg.test": {"auth": b64("cfg:cfgpw")}}})
    env = env_for(config_dir, bin_dir, REPLICATOR_USERNAME="envu", REPLICATOR_PASSWORD="envpw")
    assert resolve_credentials("reg.test", env=env) == Credentials("envu", "envpw")


def test_environment_registry_token(config_dir: Path, bin_dir: Path) -> None:
    env = env_for(config_dir, bin_dir, REPLICATOR_REGISTRY_TOKEN="ready-token")
    assert resolve_credentials("reg.test", env=env) == Credentials(registry_token="ready-token")


def test_flag_user_with_environment_password(config_dir: Path, bin_dir: Path) -> None:
    env = env_for(config_dir, bin_dir, REPLICATOR_PASSWORD="envpw")
    assert resolve_credentials("reg.test", username="flag", env=env) == Credentials("flag", "envpw")


def test_user_without_password_is_a_usage_error(config_dir: Path, bin_dir: Path) -> None:
    env = env_for(config_dir, bin_dir)
    with pytest.raises(UsageError, match="need a password"):
        resolve_credentials("reg.test", username="someone", env=env)
    with pytest.raises(UsageError, match="REPLICATOR_PASSWORD"):
        resolve_credentials("reg.test", env={**env, "REPLICATOR_USERNAME": "u"})


def test_nothing_configured_is_anonymous(config_dir: Path, bin_dir: Path) -> None:
    env = env_for(config_dir, bin_dir)
    assert resolve_credentials("reg.test", env=env) is None
    write_config(config_dir, {"auths": {"other.test": {"auth": b64("a:b")}}})
    assert resolve_credentials("reg.test", env=env) is None


# --------------------------------------------------------------------------- config variants


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("reg.test:5000", "reg.test:5000"),
        ("https://reg.test:5000/", "reg.test:5000"),
        ("http://REG.test:5000/v1/", "reg.test:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://index.docker.io/v1/", "registry-1.docker.io"),
        ("docker.io", "index.docker.io"),
        ("registry-1.docker.io", "https://index.docker.io/v1/"),
    ],
)
def test_auths_keys_match_urls_and_docker_hub_aliases(
    config_dir: Path, bin_dir: Path, key: str, host: str
) -> None:
    write_config(config_dir, {"auths": {key: {"auth": b64("user:pa:ss")}}})
    creds = resolve_credentials(host, env=env_for(config_dir, bin_dir))
    assert creds == Credentials(username="user", password="pa:ss")


def test_identity_token_in_auths(config_dir: Path, bin_dir: Path) -> None:
    write_config(
        config_dir,
        {"auths": {"reg.test": {"auth": b64("<token>:"), "identitytoken": "refresh-1"}}},
    )
    creds = resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))
    assert creds is not None
    assert creds.identity_token == "refresh-1"


def test_docker_config_argument_names_file_or_directory(tmp_path: Path, bin_dir: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write_config(elsewhere, {"auths": {"reg.test": {"auth": b64("u:p")}}})
    env = {"PATH": str(bin_dir)}
    assert resolve_credentials("reg.test", env=env, docker_config=path) == Credentials("u", "p")
    assert resolve_credentials("reg.test", env=env, docker_config=elsewhere) == Credentials(
        "u", "p"
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "invalid JSON at line 1"),
        ("[1, 2]", "not a JSON object"),
        ('{"auths": []}', "'auths' is not an object"),
        ('{"auths": {"reg.test": {"auth": "@@not-base64@@"}}}', "is not base64"),
        ('{"auths": {"reg.test": {"auth": "' + b64("nocolon") + '"}}}', "not 'user:password'"),
        ('{"auths": {"reg.test": "x"}}', "is not an object"),
        ('{"credsStore": 5}', "'credsStore' is not a string"),
    ],
)
def test_malformed_config_is_a_config_error_naming_the_file(
    config_dir: Path, bin_dir: Path, content: str, match: str
) -> None:
    path = config_dir / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- helpers


def test_cred_helper_for_host_wins_over_store_and_auths(config_dir: Path, bin_dir: Path) -> None:
    write_helper(bin_dir, "test")
    write_helper(bin_dir, "other")
    seed_helper(bin_dir, "test", {"reg.test": ["helperuser", "helperpw"]})
    seed_helper(bin_dir, "other", {"reg.test": ["storeuser", "storepw"]})
    write_config(
        config_dir,
        {
            "credHelpers": {"reg.test": "test"},
            "credsStore": "other",
            "auths": {"reg.test": {"auth": b64("cfg:cfgpw")}},
        },
    )
    creds = resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))
    assert creds == Credentials("helperuser", "helperpw")


def test_creds_store_used_for_every_host(config_dir: Path, bin_dir: Path) -> None:
    write_helper(bin_dir, "test")
    seed_helper(bin_dir, "test", {"https://index.docker.io/v1/": ["hubuser", "hubpw"]})
    write_config(config_dir, {"credsStore": "test"})
    creds = resolve_credentials("docker.io", env=env_for(config_dir, bin_dir))
    assert creds == Credentials("hubuser", "hubpw")


def test_helper_token_user_means_identity_token(config_dir: Path, bin_dir: Path) -> None:
    write_helper(bin_dir, "test")
    seed_helper(bin_dir, "test", {"reg.test": ["<token>", "refresh-xyz"]})
    write_config(config_dir, {"credHelpers": {"reg.test": "test"}})
    creds = resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))
    assert creds == Credentials(identity_token="refresh-xyz")


def test_helper_not_found_falls_back_to_auths(config_dir: Path, bin_dir: Path) -> None:
    write_helper(bin_dir, "test")
    write_config(
        config_dir,
        {"credsStore": "test", "auths": {"reg.test": {"auth": b64("cfg:cfgpw")}}},
    )
    creds = resolve_credentials("reg.test", env=env_for(config_dir, bin_dir))
    assert creds == Credentials("cfg", "cfgpw")
    assert (bin_dir / "test-calls.log").read_text() == "get reg.test\n"


def test_failing_or_missing_helper_is_an_error_not_anonymous(
    config_dir: Path, bin_dir: Path
) -> None:
    write_helper(bin_dir, "broken", fail=True)
    write_config(config_dir, {"credHelpers": {"reg.test": "broken", "b.test": "absent"}})
    env = env_for(config_dir, bin_dir)
    with pytest.raises(CredentialHelperError, match=r"docker-credential-broken .*helper exploded"):
        resolve_credentials("reg.test", env=env)
    with pytest.raises(CredentialHelperError, match=r"docker-credential-absent .*not installed"):
        resolve_credentials("b.test", env=env)


# --------------------------------------------------------------------------- store / remove


def test_store_login_writes_auth_atomically_and_keeps_other_keys(
    config_dir: Path, bin_dir: Path
) -> None:
    write_config(
        config_dir,
        {
            "auths": {"https://reg.test/": {"auth": b64("old:old")}, "keep.test": {"auth": "x"}},
            "psFormat": "table {{.ID}}",
        },
    )
    env = env_for(config_dir, bin_dir)
    path = store_login("reg.test", "new", "newpw", env=env)
    assert path == config_dir / "config.json"
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table {{.ID}}"
    assert doc["auths"] == {"keep.test": {"auth": "x"}, "reg.test": {"auth": b64("new:newpw")}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in config_dir.iterdir()] == ["config.json"]
    assert resolve_credentials("reg.test", env=env) == Credentials("new", "newpw")


def test_store_login_creates_missing_config(tmp_path: Path, bin_dir: Path) -> None:
    config_dir = tmp_path / "fresh" / "docker"
    env = env_for(config_dir, bin_dir)
    store_login("docker.io", "hub", "hubpw", env=env)
    doc = json.loads((config_dir / "config.json").read_text())
    assert doc == {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:hubpw")}}}
    assert resolve_credentials("registry-1.docker.io", env=env) == Credentials("hub", "hubpw")


def test_store_and_remove_through_helper(config_dir: Path, bin_dir: Path) -> None:
    write_helper(bin_dir, "test")
    write_config(config_dir, {"credsStore": "test"})
    env = env_for(config_dir, bin_dir)
    store_login("reg.test", "hu", "hpw", env=env)
    assert helper_store(bin_dir, "test") == {"reg.test": ["hu", "hpw"]}
    doc = json.loads((config_dir / "config.json").read_text())
    assert doc == {"credsStore": "test", "auths": {"reg.test": {}}}
    assert "hpw" not in (config_dir / "config.json").read_text()
    assert resolve_credentials("reg.test", env=env) == Credentials("hu", "hpw")

    assert remove_login("reg.test", env=env) is True
    assert helper_store(bin_dir, "test") == {}
    assert json.loads((config_dir / "config.json").read_text())["auths"] == {}
    assert resolve_credentials("reg.test", env=env) is None


def test_remove_login_removes_every_alias_and_reports(config_dir: Path, bin_dir: Path) -> None:
    write_config(
        config_dir,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("a:b")},
                "docker.io": {"auth": b64("c:d")},
                "keep.test": {"auth": b64("e:f")},
            }
        },
    )
    env = env_for(config_dir, bin_dir)
    assert remove_login("index.docker.io", env=env) is True
    doc = json.loads((config_dir / "config.json").read_text())
    assert doc == {"auths": {"keep.test": {"auth": b64("e:f")}}}
    assert remove_login("index.docker.io", env=env) is False


def test_registry_key_and_server_address() -> None:
    assert registry_key("https://Index.Docker.io/v1/") == "docker.io"
    assert registry_key("localhost:5000") == "localhost:5000"
    assert server_address("registry-1.docker.io") == "https://index.docker.io/v1/"
    assert server_address("https://reg.test:443/") == "reg.test:443"
