"""The Gemini provider: prompt, REST calls through google-genai, pacing, spend."""

from actors.classification.gemini.classifier import GeminiClassifier

__all__ = ["GeminiClassifier"]
