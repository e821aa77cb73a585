"""Resilience helpers any actor's helpers may share (they import nothing of the actors)."""

from actors.resilience.breaker import BreakerState, CircuitBreaker

__all__ = ["BreakerState", "CircuitBreaker"]
