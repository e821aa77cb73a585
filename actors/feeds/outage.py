"""The all-feeds-silent outage detector."""

from __future__ import annotations


class OutageDetector:
    """Says "outage" once when N consecutive cycles brought no items from any feed,
    and "recovered" once when items come back."""

    def __init__(self, cycles: int):
        self.cycles = max(1, cycles)
        self.empty_cycles = 0
        self.in_outage = False

    def observe(self, total_items: int) -> str | None:
        if total_items > 0:
            self.empty_cycles = 0
            if self.in_outage:
                self.in_outage = False
                return "recovered"
            return None
        self.empty_cycles += 1
        if not self.in_outage and self.empty_cycles >= self.cycles:
            self.in_outage = True
            return "outage"
        return None
