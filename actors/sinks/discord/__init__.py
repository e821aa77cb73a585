"""The Discord webhook sink: embeds (embed.py), pacing by Discord's rate-limit headers
(pacing.py), delivery with retries and self-disabling on a dead webhook (sink.py)."""

from actors.sinks.discord.sink import DiscordSink, discord_sink_from_config

__all__ = ["DiscordSink", "discord_sink_from_config"]
