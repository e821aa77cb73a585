"""Classifier providers behind one interface: classify(item) -> Analysis."""

from __future__ import annotations

from typing import Protocol

from actors import protocol, rules


class Classifier(Protocol):
    def classify(self, item: protocol.Item) -> protocol.Analysis: ...


class RulesClassifier:
    """The offline keyword classifier: free, instant, deterministic."""

    def classify(self, item: protocol.Item) -> protocol.Analysis:
        return rules.classify(item)


def make_classifier(config) -> Classifier:
    if config.llm.provider == "rules":
        return RulesClassifier()
    from actors.gemini import GeminiClassifier  # imported only where it is used

    return GeminiClassifier(config)
