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
