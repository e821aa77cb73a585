"""Classifier providers behind one interface, for the llm actor.

submit() answers at once (the keyword classifier, or a cache hit) or returns None, and
the answer comes out of answers() later (a model call). Each provider keeps a bounded
cache of what it answered, so a redelivered item is answered again for free
(invariant 4).
"""

from __future__ import annotations

import collections
from typing import NamedTuple, Protocol

import cachetools

from actors import protocol, rules
from actors.llm_cache import content_hash


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


class RulesClassifier:
    """The offline keyword classifier: free, instant, deterministic."""

    wake_fd = None

    def __init__(self, llm):
        self.cache: cachetools.TTLCache = cachetools.TTLCache(maxsize=llm.cache_size,
                                                              ttl=llm.cache_ttl_s)
        self.counters: collections.Counter[str] = collections.Counter()

    def submit(self, item: protocol.Item, attempt: int) -> protocol.Analysis:
        cache_key = (item.key, content_hash(item))
        analysis = self.cache.get(cache_key)
        if analysis is not None:
            self.counters["cache_hits"] += 1
            return analysis
        analysis = rules.classify(item)
        self.counters["classified_rules"] += 1
        self.cache[cache_key] = analysis
        return analysis

    def answers(self) -> list[Answer]:
        return []

    def tick(self, now: float) -> None:
        pass

    def next_deadline(self, now: float) -> float:
        return float("inf")

    def saturated(self) -> bool:
        return False

    def busy(self) -> bool:
        return False

    def stats(self) -> dict:
        return {**self.counters, "cache_size": len(self.cache)}

    def close(self) -> None:
        pass


def make_classifier(config, *, name: str = "llm-0", admin=None) -> Classifier:
    if config.llm.provider == "rules":
        return RulesClassifier(config.llm)
    from actors.gemini import GeminiClassifier  # imported only where it is used

    return GeminiClassifier(config, name=name, admin=admin)
