"""The feeds an operator has paused (`catalyst-supervisor pause FEED`), kept in
``<data_dir>/paused-feeds.json`` so a pause outlives a restart of the fetcher and of the
whole supervisor.

The supervisor is the only writer (its pause and resume commands), replacing the file in
one step (a temporary file, then os.replace), mode 0600. Fetchers read it at start. A
missing file means nothing is paused; a file that cannot be read or is not what this
module writes is logged as a warning and also means nothing is paused: a pause is an
operator's convenience, never a reason for a process not to start. Names that are not
configured feeds (one a reload removed) are ignored when read.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catalyst_config.schema import Config

log = logging.getLogger("catalyst.config")

PAUSES_FILE = "paused-feeds.json"
FILE_MODE = 0o600
MAX_PAUSED_FEEDS = 10_000  # names in the file or in one pause_feeds (a protocol list's bound)
MAX_FEED_NAME_CHARS = 2048  # a name longer than this is no configured feed's (protocol ShortText)
# The largest file read: every name at its longest, as JSON. A larger one is not ours.
MAX_FILE_BYTES = MAX_PAUSED_FEEDS * (MAX_FEED_NAME_CHARS + 4) + 64


def pauses_path(config: Config) -> Path:
    return config.path(config.data_dir) / PAUSES_FILE


def read_paused(config: Config) -> set[str]:
    """The configured feeds that are paused; an empty set when none is, when the file is
    missing, and (with a warning) when it cannot be read or is not a list of names."""
    path = pauses_path(config)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return set()
    except OSError as exc:
        log.warning("paused feeds: cannot read %s (%s); treating no feed as paused",
                    path, exc.strerror or type(exc).__name__)
        return set()
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        names = json.loads(data).get("paused")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError('"paused" is not a list of names')
    except (ValueError, AttributeError, RecursionError) as exc:
        # ValueError covers bad JSON and bad UTF-8; AttributeError a document not an object.
        log.warning("paused feeds: %s is not a list of paused feeds (%s); treating no feed "
                    "as paused", path, str(exc)[:200])
        return set()
    return set(names) & {feed.name for feed in config.feeds}


def write_paused(config: Config, names: Iterable[str]) -> None:
    """Replaces the file with these names (sorted), in one step: a reader sees the old
    set or the new one, never half of either. Raises OSError when it cannot be written."""
    path = pauses_path(config)
    tmp = path.with_name(f".{PAUSES_FILE}.{os.getpid()}.tmp")
    text = json.dumps({"paused": sorted(set(names))}, indent=1) + "\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # a leftover temporary file may be wider
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself durable, as the file's contents are
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
