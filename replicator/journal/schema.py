"""The journal's tables and the words stored in them.

Version 1.  Tables added later (``sources``) are created by ``CREATE TABLE IF
NOT EXISTS`` when a journal is opened, so a journal written by an earlier
release keeps its version and its runs, and an earlier release still reads a
journal holding them.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    counts TEXT NOT NULL DEFAULT '{}',
    bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs (key, state);
CREATE TABLE IF NOT EXISTS confirmations (
    run_id TEXT NOT NULL,
    location TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    PRIMARY KEY (run_id, location, repository, digest, kind, detail)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    run_id TEXT NOT NULL,
    location TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    upload_url TEXT NOT NULL,
    offset INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (run_id, location, repository, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sources (
    run_id TEXT NOT NULL,
    source TEXT NOT NULL,
    digest TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (run_id, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_cache (
    location TEXT NOT NULL,
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (location, digest, repository)
) WITHOUT ROWID;
"""

#: Kinds of confirmation.
BLOB = "blob"
MANIFEST = "manifest"
REFERRERS = "referrers"
TAG = "tag"

RUNNING = "running"
INTERRUPTED = "interrupted"
FAILED = "failed"
DONE = "done"
