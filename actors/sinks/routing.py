"""Which alerts a sink takes: per-sink filters, so an 8-K desk and a biotech desk can share
one service. A filter left unset takes everything; set ones must all agree."""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors import protocol

if TYPE_CHECKING:
    from catalyst_config import SinkConfig


class Route:
    """A sink's filter, from its config entry; min_score falls back to alerts.min_score."""

    def __init__(self, sink_cfg: SinkConfig, default_min_score: float):
        self.min_score = default_min_score if sink_cfg.min_score is None else sink_cfg.min_score
        self.kinds = _upper(sink_cfg.kinds)
        self.forms = _upper(sink_cfg.forms)
        self.categories = set(sink_cfg.categories) if sink_cfg.categories is not None else None
        self.tickers = _upper(sink_cfg.tickers)

    def accepts(self, msg: protocol.Classified) -> bool:
        item, analysis = msg.item, msg.analysis
        if analysis.score < self.min_score:
            return False
        if self.kinds is not None and item.kind.upper() not in self.kinds:
            return False
        # A form matches its amendments too: "8-K" takes "8-K/A".
        if self.forms is not None and not any(
                (item.form or "").upper().split("/")[0] == f.split("/")[0] for f in self.forms):
            return False
        if self.categories is not None and analysis.category not in self.categories:
            return False
        tickers = analysis.tickers or item.tickers
        return self.tickers is None or any(t.upper() in self.tickers for t in tickers)


def _upper(values: list[str] | None) -> set[str] | None:
    return None if values is None else {v.upper() for v in values}
