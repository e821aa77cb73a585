"""Classification for the llm actor: the keyword classifier, Gemini, and the analysis cache.

make_classifier() is the factory; the Gemini provider is imported only when configured, so
the keyword path never loads google-genai.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.classification.base import Answer, Classifier
from actors.classification.rules import RulesClassifier

if TYPE_CHECKING:
    from catalyst_config import Config

__all__ = ["Answer", "Classifier", "RulesClassifier", "make_classifier"]


def make_classifier(config: Config, *, name: str = "llm-0", admin=None) -> Classifier:
    if config.llm.provider == "rules":
        return RulesClassifier(config.llm)
    from actors.classification.gemini import GeminiClassifier  # only where configured

    return GeminiClassifier(config, name=name, admin=admin)
