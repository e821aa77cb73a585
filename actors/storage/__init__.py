"""Durable files: the one way this project opens and writes its SQLite files, and the
single-owner file lock. Shared by every actor that owns a file (and the supervisor's lock)."""

from actors.storage.lock import FileLock
from actors.storage.sqlite import connect, move_aside, open_checked, transaction

__all__ = ["FileLock", "connect", "move_aside", "open_checked", "transaction"]
