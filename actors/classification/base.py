"""The interface every classifier provider offers the llm actor.

submit() answers at once (the keyword classifier, or a cache hit) or returns None, and
the answer comes out of answers() later (a model call). Each provider keeps a bounded
cache of what it answered, so a redelivered item is answered again for free
(invariant 4 in docs/architecture.md).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from actors import protocol


class Answer(NamedTuple):
    """An analysis that finished after submit() returned."""

    item: protocol.Item
    analysis: protocol.Analysis
    attempt: int


class Classifier(Protocol):
    wake_fd: int | None  # readable when answers() has something; None: never

    def submit(self, item: protocol.Item, attempt: int) -> protocol.Analysis | None: ...

    def answers(self) -> list[Answer]: ...

    def tick(self, now: float) -> None: ...

    def next_deadline(self, now: float) -> float: ...

    def saturated(self) -> bool: ...  # True: stop reading input for now

    def busy(self) -> bool: ...  # True: answers are still to come

    def stats(self) -> dict: ...

    def close(self) -> None: ...
