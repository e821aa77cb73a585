"""Resilience helpers any actor's helpers may share (they import nothing of the actors)."""

from actors.resilience.breaker import BreakerState, CircuitBreaker
from actors.resilience.silence import SilenceWatch

__all__ = ["BreakerState", "CircuitBreaker", "SilenceWatch"]
