"""Where alerts and admin events go: console, JSONL files, Discord; and the alert actor's
delivery journal (sinks.journal). build_sink() is the factory the alert actor and the
supervisor's admin notifier share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.errors import SinkError
from actors.sinks.base import Sink, SinkWorker, UnavailableSink, sink_name
from actors.sinks.files import ConsoleSink, JsonlSink
from actors.sinks.routing import Route

if TYPE_CHECKING:
    from catalyst_config import Config, SinkConfig

__all__ = ["ConsoleSink", "JsonlSink", "Route", "Sink", "SinkWorker", "UnavailableSink",
           "build_sink", "sink_name"]


def build_sink(sink_cfg: SinkConfig, config: Config, *, role: str = "alerts",
               give_up_after_s: float | None = None) -> Sink:
    """A sink from its config entry; ``role`` names it in errors. A blocking sink waits at
    most ``give_up_after_s`` for one delivery (None: as long as it takes)."""
    if sink_cfg.type == "console":
        return ConsoleSink()
    if sink_cfg.type == "jsonl":
        return JsonlSink(config.path(sink_cfg.path), name=sink_name(sink_cfg))
    if sink_cfg.type == "discord":
        from actors.sinks.discord import discord_sink_from_config

        url = config.secrets.get(sink_cfg.webhook_url_env)
        if not url:
            raise SinkError(f"{role}: discord sink needs ${sink_cfg.webhook_url_env} "
                            "in the environment", permanent=True)
        return discord_sink_from_config(sink_cfg, url, name=sink_name(sink_cfg),
                                        give_up_after_s=give_up_after_s)
    raise SinkError(f"unknown sink type {sink_cfg.type!r}", permanent=True)
