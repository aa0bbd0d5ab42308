"""What a journal may keep of a command: never a credential.

Runs record the command they were asked for, built by the front end from what
it parsed (no credential flag can be part of it).  Journals written before that
kept ``sys.argv`` with only some password forms masked (``-pSECRET`` stayed in
clear); :func:`scrub_argv` removes every credential flag and its value from
such a record, and :func:`scrub_recorded_commands` applies it once to every run
of an older journal when it is opened for writing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

#: Long credential flags that take a value (abbreviations count too).
_LONG_WITH_VALUE = ("--password", "--username")
#: Short credential flags that take a value.
_SHORT_WITH_VALUE = frozenset("pu")
_MARK = "commands_scrubbed"


def _long_credential(word: str) -> bool:
    name = word.split("=", 1)[0]
    return len(name) > 3 and any(flag.startswith(name) for flag in _LONG_WITH_VALUE)


def scrub_argv(words: Sequence[str]) -> list[str]:
    """``words`` without ``-u``/``-p``/``--username``/``--password`` (any form) and their values.

    Combined short flags keep the letters before the credential flag
    (``-rpSECRET`` becomes ``-r``).  ``--password-stdin`` carries no secret and stays.
    """
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--password-stdin" or not word.startswith("-") or word == "--":
            out.append(word)
        elif word.startswith("--"):
            if _long_credential(word):
                skip = "=" not in word
            else:
                out.append(word)
        else:
            letters = word[1:]
            cut = min((i for i, c in enumerate(letters) if c in _SHORT_WITH_VALUE), default=None)
            if cut is None:
                out.append(word)
                continue
            if cut:
                out.append("-" + letters[:cut])
            skip = cut == len(letters) - 1
    return out


def scrub_recorded_commands(conn: sqlite3.Connection) -> int:
    """Scrub every run's recorded command once per journal; how many records changed."""
    done = conn.execute("SELECT value FROM meta WHERE key = ?", (_MARK,)).fetchone()
    if done is not None:
        return 0
    changed = 0
    conn.execute("PRAGMA secure_delete = ON")  # the old record's bytes are zeroed, not freed
    conn.execute("BEGIN IMMEDIATE")
    try:
        for run_id, text in conn.execute("SELECT id, command FROM runs").fetchall():
            command = json.loads(text)
            argv = command.get("argv") if isinstance(command, dict) else None
            if isinstance(argv, list):
                clean = scrub_argv([str(w) for w in argv])
                if clean != argv:
                    command["argv"] = clean
                    conn.execute(
                        "UPDATE runs SET command = ? WHERE id = ?",
                        (json.dumps(command, sort_keys=True), run_id),
                    )
                    changed += 1
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, '1')", (_MARK,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if changed:
        # Old pages may linger in the write-ahead log: copy it back and empty it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return changed
