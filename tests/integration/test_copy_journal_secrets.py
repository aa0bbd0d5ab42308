"""No form of ``--password`` on the command line puts the password in the journal
or in any output of ``copy`` and ``journal list/show``.

The journal keeps what the run was asked to do, built from the parsed request,
so credential flags never reach it whatever way argparse accepted them.  Forms
argparse refuses (the abbreviations of ``--password`` also abbreviate
``--password-stdin``) exit 2 without echoing the password in the usage error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import CliResult, push_tiny_image, run_cli

#: Every way to hand argparse the password (``{pw}`` stands for it), and whether it parses.
FORMS: list[tuple[str, tuple[str, ...], bool]] = [
    ("attached-short", ("-p{pw}",), True),
    ("separate-short", ("-p", "{pw}"), True),
    ("separate-long", ("--password", "{pw}"), True),
    ("equals-long", ("--password={pw}",), True),
    ("combined-short", ("-rp{pw}",), True),
    ("combined-short-separate", ("-rp", "{pw}"), True),
    ("abbreviated-equals", ("--pass={pw}",), False),
    ("abbreviated-separate", ("--passw", "{pw}"), False),
    ("abbreviated-long-equals", ("--passwor={pw}",), False),
]


def _journal_bytes(journal: Path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(journal) + suffix)
        if path.exists():
            data += path.read_bytes()
    return data


@pytest.mark.parametrize(("form", "words", "parses"), FORMS, ids=[f[0] for f in FORMS])
def test_password_never_reaches_the_journal_nor_any_output(
    form: str,
    words: tuple[str, ...],
    parses: bool,
    registry_basic: RegistryInstance,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    assert registry_basic.username is not None and registry_basic.password is not None
    password = registry_basic.password
    push_tiny_image(registry_basic, unique_repo, "v1")
    journal = tmp_path / "journal.sqlite"
    secret_words = [w.format(pw=password) for w in words]
    host = registry_basic.host
    copy = run_cli(
        "copy",
        "-u",
        registry_basic.username,
        *secret_words,
        "--journal",
        str(journal),
        f"{host}/{unique_repo}:v1",
        f"{host}/{unique_repo}-dst:v1",
        home=tmp_path,
    )
    results: list[CliResult] = [copy]
    if parses:
        assert copy.code == 0, copy.stderr[-2000:]
        listed = run_cli("journal", "--journal", str(journal), "list", home=tmp_path)
        as_json = run_cli("journal", "--journal", str(journal), "list", "--json", home=tmp_path)
        assert listed.code == 0 and as_json.code == 0, listed.stderr + as_json.stderr
        run_id = listed.stdout.splitlines()[1].split()[0]
        shown = run_cli("journal", "--journal", str(journal), "show", run_id, home=tmp_path)
        assert shown.code == 0, shown.stderr
        # The record says what was copied, and nothing of the credentials.
        assert f"{host}/{unique_repo}:v1" in shown.stdout
        assert "--password" not in shown.stdout and '"-p' not in shown.stdout
        results += [listed, as_json, shown]
        assert password.encode() not in _journal_bytes(journal)
    else:
        assert copy.code == 2, copy.stderr
        assert "ambiguous option" in copy.stderr
        assert not journal.exists()
    for result in results:
        assert password not in result.output, f"{form}: the password leaked"
