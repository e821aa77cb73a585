"""One exception taxonomy: callers catch meaning, not Exception."""


class CatalystError(Exception):
    """Base of every error this project raises on purpose."""


class ProtocolError(CatalystError):
    """A message on a socket was malformed, too large or of the wrong version."""


class ConfigError(CatalystError):
    """A configuration key or value is wrong; ``path`` names the key."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class StoreLockedError(CatalystError):
    """Another process already owns this database file."""


class StoreUnavailableError(CatalystError):
    """A database file cannot be used now (disk full, I/O error, read-only, locked by
    another program, cannot be opened) but is not corrupt: it stays where it is, and its
    owner tries again later. ``reason`` is one of disk_full, io_error, read_only, locked,
    cant_open; ``event`` the admin event it raises (disk_full or store_unavailable)."""

    def __init__(self, message: str, reason: str):
        self.reason = reason
        super().__init__(message)

    @property
    def event(self) -> str:
        return "disk_full" if self.reason == "disk_full" else "store_unavailable"


class FeedError(CatalystError):
    """A feed answered with something that is not a usable feed."""


class SinkError(CatalystError):
    """A sink failed to deliver; ``retry_after`` says when to try again, if ever."""

    def __init__(self, message: str, retry_after: float | None = None, permanent: bool = False):
        self.retry_after = retry_after
        self.permanent = permanent
        super().__init__(message)


class CommandError(CatalystError):
    """An operator's command could not be done (unknown, or bad arguments)."""
