"""Secrets: values from the environment only, never printed."""

from __future__ import annotations

import os
import typing


class Secrets:
    """Values from the environment; repr never shows them."""

    NAMES = ("GEMINI_API_KEY", "DISCORD_WEBHOOK_URL", "DISCORD_ADMIN_WEBHOOK_URL",
             "CATALYST_CONSOLE_TOKEN", "CATALYST_PG_DSN")

    def __init__(self, values: dict[str, str]):
        self._values = dict(values)

    @classmethod
    def from_environment(cls, extra_names: typing.Iterable[str] = ()) -> Secrets:
        names = set(cls.NAMES) | set(extra_names)
        return cls({n: os.environ[n] for n in names if os.environ.get(n)})

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def all_values(self) -> list[str]:
        return [v for v in self._values.values() if v]

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._values)} set)"

    def __reduce__(self):  # survives the trip to an actor process, not into a repr
        return (Secrets, (self._values,))
