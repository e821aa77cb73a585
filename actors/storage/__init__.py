"""Durable files: the one way this project opens and writes its SQLite files, how an owner
lives with one that is away (disk full, locked), private files and directories, and the
single-owner file lock. Shared by every actor that owns a file (and the supervisor's lock)."""

from actors.storage.lock import FileLock
from actors.storage.outage import StoreOutage
from actors.storage.private import private_dir, private_file
from actors.storage.sqlite import (
    connect,
    fault_reason,
    faults_as_unavailable,
    is_corrupt,
    move_aside,
    open_checked,
    probe,
    transaction,
)

__all__ = ["FileLock", "StoreOutage", "connect", "fault_reason", "faults_as_unavailable",
           "is_corrupt", "move_aside", "open_checked", "private_dir", "private_file", "probe",
           "transaction"]
