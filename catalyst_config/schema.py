"""The shape of the configuration: one frozen dataclass per section, each field with its
default and bounds. config.yaml documents every key; loader.py checks a file against this.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from actors.errors import ConfigError
from catalyst_config.secrets import Secrets
from catalyst_config.webhooks import parse_webhook_url


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A config field with bounds, checked at load time."""
    meta = {"ge": ge, "gt": gt, "le": le}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FeedConfig:
    name: str
    url: str
    kind: Literal["pr", "sec"]
    enabled: bool = True
    interval_s: float | None = setting(None, gt=0)  # None: poll_interval_s
    first_poll: Literal["mark_seen", "alert"] | None = None  # None: fetch.first_poll
    stale_after_h: float | None = setting(None, gt=0)  # None: fetch.stale_after_h

    def poll_interval(self, default_s: float) -> float:
        return self.interval_s if self.interval_s is not None else default_s


@dataclass(frozen=True)
class FetchConfig:
    connect_timeout_s: float = setting(5.0, gt=0)
    read_timeout_s: float = setting(10.0, gt=0)
    max_bytes: int = setting(5_000_000, ge=1024)
    # Wall limit on one whole request, so a trickle is cut off; None: connect + 2 x read.
    request_deadline_s: float | None = setting(None, gt=0)
    max_workers: int = setting(64, ge=1, le=256)
    freshness_pr_s: float = setting(86400.0, gt=0)   # older items are dropped
    freshness_sec_s: float = setting(3 * 86400.0, gt=0)
    edgar_max_rps: float = setting(10.0, gt=0, le=10)  # shared by all fetcher instances
    breaker_failures: int = setting(3, ge=1)  # consecutive failures that open a feed's breaker
    breaker_backoff_initial_s: float = setting(30.0, gt=0)
    breaker_backoff_max_s: float = setting(900.0, gt=0)
    outage_cycles: int = setting(5, ge=1)  # cycles with no items from any feed = outage
    otc_tickers: bool = False  # also take OTC-market tickers
    company_tickers_url: str = "https://www.sec.gov/files/company_tickers.json"
    company_tickers_max_age_s: float = setting(7 * 86400.0, gt=0)
    # A feed's first poll ever (fresh install, or a feed added later): mark_seen records
    # what it finds as seen without alerting it; alert sends it all.
    first_poll: Literal["mark_seen", "alert"] = "mark_seen"
    # A feed's next poll comes one interval after its last began, minus up to this
    # fraction of it at random (jitter only ever shortens a wait), so feeds drift apart.
    jitter_fraction: float = setting(0.1, ge=0, le=0.5)
    # With dedupe.backend postgres (several hosts), a fetcher polls only the feeds whose
    # lease it holds, renewed every third of this; a dead host's feeds move within it.
    feed_lease_s: float = setting(30.0, ge=1, le=3600)
    # A feed with nothing new for this long while others had news raises feed_stale.
    stale_after_h: float = setting(72.0, gt=0)

    def first_poll_of(self, feed: FeedConfig) -> str:
        return feed.first_poll or self.first_poll

    def stale_after_s(self, feed: FeedConfig) -> float:
        return 3600.0 * (feed.stale_after_h or self.stale_after_h)


@dataclass(frozen=True)
class SqliteConfig:
    journal_mode: Literal["WAL"] = "WAL"
    synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    cache_size: int = -16000  # negative: KiB
    temp_store: Literal["DEFAULT", "FILE", "MEMORY"] = "MEMORY"
    mmap_size: int = setting(0, ge=0)  # lookups are in memory: a map only adds file pages to RSS
    busy_timeout_ms: int = setting(5000, ge=0)


@dataclass(frozen=True)
class PostgresConfig:
    """The shared PostgreSQL ledger (dedupe.backend: postgres)."""

    dsn_env: str = "CATALYST_PG_DSN"  # the NAME of the environment variable holding the DSN
    connect_timeout_s: int = setting(3, ge=2, le=60)  # libpq: whole seconds, at least 2
    statement_timeout_s: float = setting(10.0, gt=0)  # also the lock timeout
    due_poll_s: float = setting(1.0, gt=0)  # looks for leases other actors let lapse
    purge_batch: int = setting(5000, ge=1)  # rows one purge transaction deletes
    purge_max_batches: int = setting(20, ge=1)  # per purge run; the rest a second later
    # The alert journal's hold on a delivery under way, renewed every third of it: how long
    # a holder that died keeps others from it (actors/sinks/journal_postgres.py).
    delivery_lease_s: float = setting(120.0, ge=1)


@dataclass(frozen=True)
class DedupeConfig:
    ttl_days: float = setting(7.0, gt=0)
    lease_s: float = setting(120.0, gt=0)
    max_attempts: int = setting(5, ge=1)
    purge_interval_s: float = setting(3600.0, gt=0)
    redeliver_batch: int = setting(500, ge=1)
    busy_poll_us: float = setting(200.0, ge=0, le=10_000)
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite: SqliteConfig = setting(factory=SqliteConfig)
    postgres: PostgresConfig = setting(factory=PostgresConfig)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens; output includes thinking tokens, as Google bills them."""

    input_usd_per_mtok: float = setting(ge=0)
    output_usd_per_mtok: float = setting(ge=0)

    @classmethod
    def gemini_list_prices(cls) -> dict[str, ModelPrice]:
        # Gemini Developer API, paid tier, text input, prompts <= 200k tokens, as listed on
        # https://ai.google.dev/gemini-api/docs/pricing on 2026-10-07. gemini-3.8-flash is
        # at its list price; its launch price ($0.75 / $3.75 until 2026-12-31) is lower,
        # so a budget errs on the safe side.
        return {name: cls(i, o) for name, i, o in [
            ("gemini-2.5-flash-lite", 0.10, 0.40), ("gemini-2.5-flash", 0.30, 2.50),
            ("gemini-2.5-pro", 1.25, 10.00), ("gemini-3.5-flash-lite", 0.30, 2.50),
            ("gemini-3.5-flash", 1.50, 9.00), ("gemini-3.8-flash", 1.50, 7.50),
            ("gemini-3.1-pro-preview", 2.00, 12.00)]}


@dataclass(frozen=True)
class LLMConfig:
    provider: Literal["rules", "gemini"] = "rules"
    model: str = "gemini-2.5-flash"
    fallback_model: str | None = "gemini-2.5-flash-lite"  # once daily_budget_usd is spent
    base_url: str | None = None
    api_version: str = "v1beta"
    timeout_s: float = setting(30.0, gt=0)
    cache_size: int = setting(10_000, ge=1)
    cache_ttl_s: float = setting(72 * 3600.0, gt=0)
    cache_purge_interval_s: float = setting(3600.0, gt=0)
    max_concurrency: int = setting(4, ge=1, le=64)  # model calls in flight per instance
    requests_per_minute: float = setting(120.0, gt=0)  # shared by all llm instances
    batch_size: int = setting(8, ge=1, le=50)  # items per request, when several wait
    max_backlog: int = setting(200, ge=1)  # items waiting for a call; input pauses beyond
    max_queue_wait_s: float = setting(30.0, gt=0)  # then the keyword classifier answers
    max_retries: int = setting(2, ge=0, le=10)  # 429, 5xx, timeouts
    retry_backoff_initial_s: float = setting(1.0, ge=0)
    retry_backoff_max_s: float = setting(20.0, ge=0)
    invalid_answer_retries: int = setting(1, ge=0, le=5)
    breaker_failures: int = setting(3, ge=1)
    breaker_backoff_initial_s: float = setting(30.0, gt=0)
    breaker_backoff_max_s: float = setting(600.0, gt=0)
    max_input_chars: int = setting(1500, ge=100)  # of an item's summary, per request
    max_output_tokens_per_item: int = setting(400, ge=64)
    thinking_budget: int | None = setting(0, ge=0)  # 0: off; None: the model's default
    daily_budget_usd: float = setting(5.0, ge=0)  # per UTC day, for `model`
    fallback_daily_budget_usd: float = setting(1.0, ge=0)  # for `fallback_model`
    budget_warn_fraction: float = setting(0.8, gt=0, le=1)
    # One feed's spend a UTC day (all models) as a fraction of daily_budget_usd plus
    # fallback_daily_budget_usd; then keywords answer its items. feed_daily_budget_usd:
    # USD caps of named feeds instead.
    feed_daily_budget_fraction: float = setting(0.25, gt=0, le=1)
    feed_daily_budget_usd: dict[str, float] = setting(factory=dict)
    pricing: dict[str, ModelPrice] = setting(factory=ModelPrice.gemini_list_prices)
    sqlite: SqliteConfig = setting(factory=SqliteConfig)  # llm_cache.db: cache and spend


@dataclass(frozen=True)
class SinkConfig:
    type: Literal["console", "jsonl", "discord"]
    path: str | None = None  # jsonl
    webhook_url_env: str | None = None  # discord: the NAME of the environment variable
    # discord only, below
    username: str | None = None  # the poster's name; None: the webhook's own
    timeout_s: float = setting(10.0, gt=0)  # one HTTP request to the webhook
    rate_limit: int = setting(5, ge=1)  # posts per rate_window_s until Discord's headers say
    rate_window_s: float = setting(2.0, gt=0)
    retry_initial_s: float = setting(1.0, gt=0)  # 5xx / network errors: backoff, doubling
    retry_max_s: float = setting(60.0, gt=0)
    outage_after_s: float = setting(60.0, gt=0)  # failing this long: a "sink_outage" event
    # Routing (alert sinks): what this sink takes; unset takes everything.
    min_score: float | None = setting(None, ge=0, le=1)  # None: alerts.min_score
    kinds: list[Literal["pr", "sec"]] | None = None
    forms: list[str] | None = None  # SEC form types; "8-K" takes "8-K/A" too
    categories: list[str] | None = None  # classifier categories (fda_approval, offering...)
    tickers: list[str] | None = None  # a watchlist: alerts naming one of these


@dataclass(frozen=True)
class ChartsConfig:
    enabled: bool = True
    dir: str = "var/charts"
    # Where prices come from: replay (price_url), tiingo (IEX intraday) or alphavantage.
    provider: Literal["replay", "tiingo", "alphavantage"] = "replay"
    # Price bars over HTTP: "{ticker}" is replaced. None: no charts (no price data).
    price_url: str | None = None
    base_url: str | None = None  # tiingo / alphavantage API base; None: the vendor's own
    api_key_env: str | None = None  # None: TIINGO_API_KEY / ALPHAVANTAGE_API_KEY
    max_wait_s: float = setting(2.0, ge=0)
    cache_size: int = setting(256, ge=1)
    cache_ttl_s: float = setting(300.0, gt=0)
    keep_days: float = setting(7.0, gt=0)  # older chart files are removed

    def key_env(self) -> str | None:
        """The environment variable holding the price vendor's API key, if one is needed."""
        defaults = {"tiingo": "TIINGO_API_KEY", "alphavantage": "ALPHAVANTAGE_API_KEY"}
        return self.api_key_env or defaults.get(self.provider)


@dataclass(frozen=True)
class AlertsConfig:
    min_score: float = setting(0.5, ge=0, le=1)
    sinks: list[SinkConfig] = setting(factory=lambda: [SinkConfig(type="console")])
    admin: SinkConfig = setting(factory=lambda: SinkConfig(type="console"))
    charts: ChartsConfig = setting(factory=ChartsConfig)
    # Alerts held in memory (waiting for a chart or for a sink's turn); input pauses beyond,
    # and ZeroMQ holds the rest upstream. At Discord's 2.5 posts/s, 200 is 80 s of backlog.
    max_backlog: int = setting(200, ge=1)
    sqlite: SqliteConfig = setting(factory=SqliteConfig)  # alerts.db: the delivery journal

    def check(self, secrets: Secrets) -> None:
        """What the types cannot say: webhook URLs well formed when set, other URLs usable."""
        for i, sink in enumerate([*self.sinks, self.admin]):
            where = f"alerts.sinks[{i}]" if i < len(self.sinks) else "alerts.admin"
            if sink.type != "discord" or not sink.webhook_url_env:
                continue
            # Absent here is not an error: status and stop run from shells without secrets.
            # The process that needs it says so (admin event, sink disabled, alerts held).
            url = secrets.get(sink.webhook_url_env)
            if not url:
                continue
            try:
                parse_webhook_url(url)
            except ValueError as exc:  # the message never quotes the URL
                raise ConfigError(f"{where}.webhook_url_env",
                                  f"${sink.webhook_url_env}: {exc}") from None
            if sink.retry_max_s < sink.retry_initial_s:
                raise ConfigError(f"{where}.retry_max_s", "must be >= retry_initial_s")
        charts = self.charts
        if not charts.enabled:
            return
        if charts.provider == "replay" and charts.price_url and "{ticker}" not in charts.price_url:
            raise ConfigError("alerts.charts.price_url", 'must contain "{ticker}"')
        if charts.base_url is not None and not charts.base_url.startswith(("http://", "https://")):
            raise ConfigError("alerts.charts.base_url", "must be an http:// or https:// URL")


@dataclass(frozen=True)
class ActorKindConfig:
    instances: int = setting(1, ge=0, le=64)
    max_rss_mb: float = setting(400.0, gt=0)


@dataclass(frozen=True)
class ActorsConfig:
    fetcher: ActorKindConfig = setting(factory=ActorKindConfig)
    dedupe: ActorKindConfig = setting(factory=ActorKindConfig)
    llm: ActorKindConfig = setting(factory=ActorKindConfig)
    alert: ActorKindConfig = setting(factory=ActorKindConfig)

    def get(self, kind: str) -> ActorKindConfig | None:
        """The block of a kind, or None for a kind this file has no block for."""
        value = getattr(self, kind, None)
        return value if isinstance(value, ActorKindConfig) else None


@dataclass(frozen=True)
class LeakConfig:
    window_s: float = setting(300.0, gt=0)
    max_growth_mb_per_min: float = setting(5.0, gt=0)


@dataclass(frozen=True)
class RestartConfig:
    backoff_initial_s: float = setting(0.5, ge=0)
    backoff_max_s: float = setting(30.0, ge=0)
    max_restarts: int = setting(5, ge=0)
    period_s: float = setting(60.0, gt=0)
    on_give_up: Literal["keep_running", "shutdown"] = "keep_running"


@dataclass(frozen=True)
class SupervisorConfig:
    heartbeat_interval_s: float = setting(1.0, gt=0)
    heartbeat_timeout_s: float = setting(10.0, gt=0)
    memory_check_interval_s: float = setting(0.5, gt=0)
    stop_timeout_s: float = setting(10.0, gt=0)
    drain_timeout_s: float = setting(30.0, ge=0)
    samples_kept: int = setting(2000, ge=10)  # memory samples kept per actor
    leak: LeakConfig = setting(factory=LeakConfig)
    restart: RestartConfig = setting(factory=RestartConfig)
    # 19108: Prometheus's port allocations list has 9100-9999 all taken (9108 is
    # graphite_exporter's) and new exporters counting up from 10001; 19108 is not in it.
    metrics_port: int = setting(19108, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


@dataclass(frozen=True)
class ConsoleConfig:
    """The operator console: a page, /health, /ready and /metrics over HTTP."""

    port: int = setting(19109, ge=0, le=65535)  # 0: no console
    host: str = "127.0.0.1"
    # Host headers answered (a DNS-rebinding page cannot read the console); "*": any.
    allowed_hosts: list[str] = setting(factory=lambda: ["localhost", "127.0.0.1", "::1"])
    publish_interval_s: float = setting(1.0, gt=0, le=60)  # the loop's snapshot, this often
    # /ready wants a fetch that succeeded within this; None: 3 x the longest poll interval,
    # and at least 60 s.
    ready_fetch_within_s: float | None = setting(None, gt=0)
    # /health fails once the loop has published nothing for this long.
    live_within_s: float = setting(10.0, gt=0)
    requests_per_s: float = setting(20.0, gt=0)  # per client address, with a burst of 2 s
    max_connections: int = setting(32, ge=1, le=1024)
    max_streams: int = setting(8, ge=1, le=256)  # live pages at once (server-sent events)


@dataclass(frozen=True)
class EndpointsConfig:
    """Socket addresses; None means an ipc:// socket in run_dir."""

    control: str | None = None  # actors' DEALERs -> supervisor ROUTER
    cli: str | None = None  # CLI REQ -> supervisor ROUTER
    dedupe_acks: str | None = None
    dedupe_rpc: str | None = None
    llm_in: str | None = None
    alert_in: str | None = None


@dataclass(frozen=True)
class HostConfig:
    """This host, among several sharing one PostgreSQL (docs/multi-host.md)."""

    name: str | None = None  # in status, the console, leases and admin events; None: hostname
    roles: list[Literal["fetcher", "dedupe", "llm", "alert"]] | None = None  # None: all kinds
    # An admin event names a stage that answers nothing (no claim answered, no ack) this long.
    stage_silence_s: float = setting(60.0, gt=0)


@dataclass(frozen=True)
class PeersConfig:
    """Other hosts' endpoints this host's actors connect to as well as (or instead of) its
    own: fetchers claim at every dedupe_rpc, alert actors ack to every dedupe_acks, dedupe
    forwards to every llm_in, llm actors to every alert_in (one address per instance)."""

    dedupe_rpc: list[str] = setting(factory=list)
    dedupe_acks: list[str] = setting(factory=list)
    llm_in: list[str] = setting(factory=list)
    alert_in: list[str] = setting(factory=list)


@dataclass(frozen=True)
class CurveConfig:
    """CurveZMQ certificates, required by tcp:// endpoints (docs/multi-host.md). Paths
    resolve like other paths."""

    secret_key: str | None = None  # this host's NAME.key_secret (catalyst-supervisor keys)
    # Allowed peers' public NAME.key files; the server of tcp://HOST:PORT must be HOST.key.
    public_keys_dir: str | None = None


# Endpoints clients connect to: (the kind that binds it, one address per instance).
ENDPOINT_OWNERS = {"dedupe_rpc": ("dedupe", False), "dedupe_acks": ("dedupe", False),
                   "llm_in": ("llm", True), "alert_in": ("alert", True)}


@dataclass(frozen=True)
class Config:
    run_dir: str = "var/run"
    data_dir: str = "var/data"
    log_dir: str = "var/log"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    poll_interval_s: float = setting(10.0, gt=0)
    sec_user_agent: str | None = None
    feeds: list[FeedConfig] = setting(factory=list)
    fetch: FetchConfig = setting(factory=FetchConfig)
    dedupe: DedupeConfig = setting(factory=DedupeConfig)
    llm: LLMConfig = setting(factory=LLMConfig)
    alerts: AlertsConfig = setting(factory=AlertsConfig)
    actors: ActorsConfig = setting(factory=ActorsConfig)
    supervisor: SupervisorConfig = setting(factory=SupervisorConfig)
    console: ConsoleConfig = setting(factory=ConsoleConfig)
    endpoints: EndpointsConfig = setting(factory=EndpointsConfig)
    curve: CurveConfig = setting(factory=CurveConfig)
    host: HostConfig = setting(factory=HostConfig)
    peers: PeersConfig = setting(factory=PeersConfig)
    secrets: Secrets = field(default_factory=lambda: Secrets({}), compare=False)
    source: str | None = field(default=None, compare=False)  # the file it came from

    def path(self, value: str) -> Path:
        """A configured path, relative ones resolved against the config file's directory."""
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / value).resolve()

    def endpoint(self, name: str) -> str:
        configured = getattr(self.endpoints, name)
        return configured or f"ipc://{self.path(self.run_dir) / (name + '.sock')}"

    def instance_endpoint(self, name: str, index: int) -> str:
        """The inbox of one instance of a kind that may run several (llm_in, alert_in):
        ipc://DIR/NAME.sock -> ipc://DIR/NAME-<i>.sock; tcp://HOST:PORT -> tcp://HOST:<PORT+i>
        (the loader checks those ports are free of other endpoints')."""
        base = self.endpoint(name)
        if base.startswith("tcp://"):
            address, _, port = base.rpartition(":")
            return f"{address}:{int(port) + index}"
        return f"{base[:-5]}-{index}.sock" if base.endswith(".sock") else f"{base}-{index}"

    def server_key_file(self, endpoint: str) -> Path:
        """The public certificate of whoever binds a tcp:// endpoint, as its clients expect
        it: HOST.key in curve.public_keys_dir, HOST as the endpoint writes it (without an
        IPv6 address's brackets). See docs/multi-host.md."""
        host = endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")
        return self.path(self.curve.public_keys_dir or ".") / f"{host}.key"

    def host_name(self) -> str:
        return self.host.name or socket.gethostname()

    def runs(self, kind: str) -> bool:
        """Whether this host runs actors of kind (host.roles)."""
        return self.host.roles is None or kind in self.host.roles

    def targets(self, name: str) -> list[str]:
        """Every address a client of endpoint `name` connects to: this host's own, when it
        runs the kind that binds it (each instance's, for llm_in and alert_in), and the
        peers' (peers.<name>)."""
        owner, per_instance = ENDPOINT_OWNERS[name]
        local: list[str] = []
        if self.runs(owner):
            kcfg = self.actors.get(owner)
            local = ([self.instance_endpoint(name, i) for i in range(kcfg.instances)]
                     if per_instance else [self.endpoint(name)])
        return local + list(getattr(self.peers, name))

    def enabled_feeds(self) -> list[FeedConfig]:
        return [f for f in self.feeds if f.enabled]
