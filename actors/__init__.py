"""Actor processes of Catalyst Supervisor, and the one table of actor kinds.

The supervisor knows the pipeline only through KINDS: what to start, in which order, what
the fork server preloads, what a kind is told at spawn, which kind must drain before a stop.
A new kind is one entry here plus its module (tests add their own kinds the same way).

Public contract of this package for the supervisor (enforced by import-linter, see
pyproject.toml): this table, ``actors.base.actor_main``, ``actors.protocol``,
``actors.errors``, ``actors.logsetup``, ``actors.sinks`` (its admin notifier) and
``actors.storage`` (its single-instance lock). Nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from catalyst_config import Config

__all__ = ["COMMON_PRELOAD", "KINDS", "Kind", "preload_modules"]


@dataclass(frozen=True)
class Kind:
    """One kind of actor, as the supervisor sees it."""

    name: str
    actor_class: str  # "module:Class"
    start_rank: int  # started in rank order; each rank once the one before heartbeats
    stop_rank: int  # stopped in rank order; rank 0 (the sources) stops before the drain
    preload: tuple[str, ...] = ()  # modules the fork server imports for this kind
    preload_if: Callable[[Config], tuple[str, ...]] | None = None  # more, by configuration
    holds_ledger: bool = False  # owns the delivery ledger: drained on stop, asked for it
    counts_cycles: bool = False  # told --cycles N; the run ends when all its instances finish
    # Told the whole set of paused feeds ("pause_feeds") when an operator pauses or resumes
    # one; it reads the persisted set at start (catalyst_config/pauses.py).
    follows_feed_pauses: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # static spawn options
    # The config paths the kind reads: a reload restarts it when one of them changed (the
    # fetcher takes feed changes in place: supervisor/reload.py).
    reads: tuple[str, ...] = ("log_level", "log_format")
    # The SQLite files in data_dir the kind owns (backup asks an instance to copy them),
    # and a predicate saying whether a configuration has them at all.
    files: tuple[str, ...] = ()
    files_if: Callable[[Any], bool] | None = None

    def files_in(self, config: Config) -> tuple[str, ...]:
        return self.files if self.files_if is None or self.files_if(config) else ()
    instances: int = 1  # used when the config has no actors.<name> block
    max_rss_mb: float = 400.0  # likewise


def _uses_gemini(config: Config) -> bool:
    return config.llm.provider == "gemini"


def _local_state(config: Config) -> bool:
    """The ledger and the delivery journal are SQLite files here, not in PostgreSQL (whose
    copies are pg_dump's job)."""
    return config.dedupe.backend != "postgres"


def _gemini_preload(config: Config) -> tuple[str, ...]:
    return ("google.genai", "actors.classification.gemini") \
        if config.llm.provider == "gemini" else ()


# Stop order: fetchers first (no new items), then the drain, then llm, alert, dedupe last
# (docs/architecture.md, "Supervision").
_LOGS = ("log_level", "log_format")
KINDS: tuple[Kind, ...] = (
    Kind("dedupe", "actors.dedupe:DedupeActor", start_rank=0, stop_rank=3,
         preload=("actors.dedupe",), holds_ledger=True, files=("seen.db",),
         files_if=_local_state,
         reads=("dedupe", "feeds", "fetch.first_poll", *_LOGS)),
    Kind("llm", "actors.llm:LLMActor", start_rank=1, stop_rank=1,
         preload=("actors.llm", "actors.classification"), preload_if=_gemini_preload,
         files=("llm_cache.db",), files_if=_uses_gemini, reads=("llm", *_LOGS)),
    Kind("alert", "actors.alert:AlertActor", start_rank=2, stop_rank=2,
         preload=("matplotlib.figure", "matplotlib.backends.backend_agg", "actors.alert",
                  "actors.charts.render"),
         files=("alerts.db",), files_if=_local_state,
         reads=("alerts.sinks", "alerts.min_score", "alerts.charts", "alerts.max_backlog",
                "alerts.sqlite", "dedupe.ttl_days", "dedupe.backend", "dedupe.postgres",
                *_LOGS)),
    Kind("fetcher", "actors.fetcher:FetcherActor", start_rank=3, stop_rank=0,
         preload=("requests", "feedparser", "actors.fetcher"), counts_cycles=True,
         follows_feed_pauses=True,
         reads=("feeds", "poll_interval_s", "sec_user_agent", "fetch", *_LOGS)),
)

# What every actor imports, loaded once in the fork server so an actor starts in
# milliseconds. The config package is there because a child unpickles its config first.
COMMON_PRELOAD = ("zmq", "msgspec", "psutil", "cachetools", "yaml", "actors.base",
                  "actors.protocol", "actors.logsetup", "catalyst_config")


def preload_modules(config: Config, kinds: tuple[Kind, ...] = KINDS) -> list[str]:
    """The fork server's preload list for these kinds under this configuration."""
    modules = list(COMMON_PRELOAD)
    for kind in kinds:
        modules += kind.preload
        if kind.preload_if is not None:
            modules += kind.preload_if(config)
    return list(dict.fromkeys(modules))
