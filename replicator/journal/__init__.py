"""Durable resume journal (SQLite, WAL)."""
