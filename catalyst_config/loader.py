"""Loads config.yaml and the environment once, into the typed objects of schema.py.

Every error names the key by its path (``supervisor.leak.window_s``, ``feeds[2].kind``).
Secrets come only from the environment and never print.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, Literal

import yaml

from actors.errors import ConfigError
from catalyst_config.schema import ENDPOINT_OWNERS, Config, EndpointsConfig
from catalyst_config.secrets import Secrets

ENV_CONFIG = "CATALYST_CONFIG"


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"{value!r} is not {_describe(tp)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        key_type, inner = typing.get_args(tp)
        return {_convert(key_type, k, f"{path}.{k}"): _convert(inner, v, f"{path}.{k}")
                for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected a whole number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported type {tp!r}")  # a bug in this module, not in the file


def _check_bounds(f: dataclasses.Field, value: Any, path: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    meta = f.metadata
    if meta.get("ge") is not None and value < meta["ge"]:
        raise ConfigError(path, f"must be >= {meta['ge']}, got {value}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise ConfigError(path, f"must be > {meta['gt']}, got {value}")
    if meta.get("le") is not None and value > meta["le"]:
        raise ConfigError(path, f"must be <= {meta['le']}, got {value}")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("secrets", "source")}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], where)
            _check_bounds(f, kwargs[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(where, "required key is missing")
    return cls(**kwargs)


CONSOLE_TOKEN_ENV = "CATALYST_CONSOLE_TOKEN"  # the console's actions need it (bearer token)
CONSOLE_TOKEN_MIN_CHARS = 16


def _validate(cfg: Config) -> None:
    names = set()
    for i, feed in enumerate(cfg.feeds):
        if feed.name in names:
            raise ConfigError(f"feeds[{i}].name", f"duplicate feed name {feed.name!r}")
        names.add(feed.name)
        if not feed.url.startswith(("http://", "https://")):
            raise ConfigError(f"feeds[{i}].url", "must be an http:// or https:// URL")
        if feed.enabled and feed.kind == "sec" and not (cfg.sec_user_agent or "").strip():
            raise ConfigError("sec_user_agent", f"required by EDGAR feed {feed.name!r}: "
                              "SEC fair access asks for a contact User-Agent")
    for i, sink in enumerate([*cfg.alerts.sinks, cfg.alerts.admin]):
        where = f"alerts.sinks[{i}]" if i < len(cfg.alerts.sinks) else "alerts.admin"
        if sink.type == "jsonl" and not sink.path:
            raise ConfigError(f"{where}.path", "required for a jsonl sink")
        if sink.type == "discord" and not sink.webhook_url_env:
            raise ConfigError(f"{where}.webhook_url_env", "required for a discord sink")
    sup = cfg.supervisor
    if sup.heartbeat_timeout_s <= 2 * sup.heartbeat_interval_s:
        raise ConfigError("supervisor.heartbeat_timeout_s",
                          "must exceed twice supervisor.heartbeat_interval_s")
    if sup.restart.backoff_max_s < sup.restart.backoff_initial_s:
        raise ConfigError("supervisor.restart.backoff_max_s", "must be >= backoff_initial_s")
    console = cfg.console
    if console.port and console.port == sup.metrics_port:
        raise ConfigError("console.port", f"{console.port} is supervisor.metrics_port too "
                          "(the console serves /metrics itself; set one of them to 0)")
    _check_curve_files(cfg)
    _check_endpoints(cfg)
    _check_hosts(cfg)
    run_dir = cfg.path(cfg.run_dir)
    if len(str(run_dir)) > 80:  # unix socket paths are limited to 107 bytes
        raise ConfigError("run_dir", f"{run_dir} is too long for ipc:// socket paths")
    if cfg.actors.dedupe.instances != 1:
        raise ConfigError("actors.dedupe.instances", "must be 1: one process owns the SeenStore")
    for kind in ("llm", "alert"):
        if getattr(cfg.actors, kind).instances < 1:
            raise ConfigError(f"actors.{kind}.instances", "must be at least 1")
    llm = cfg.llm
    # A model without a price would cost $0 and never meet its budget.
    for key in ("model", "fallback_model"):
        name = getattr(llm, key)
        if name is not None and name not in llm.pricing:
            raise ConfigError(f"llm.{key}", f"{name!r} has no price in llm.pricing "
                              f"(priced: {', '.join(sorted(llm.pricing)) or 'none'})")
    if llm.base_url is not None and not llm.base_url.startswith(("http://", "https://")):
        raise ConfigError("llm.base_url", "must be an http:// or https:// URL")
    if llm.retry_backoff_max_s < llm.retry_backoff_initial_s:
        raise ConfigError("llm.retry_backoff_max_s", "must be >= retry_backoff_initial_s")
    for name, usd in llm.feed_daily_budget_usd.items():
        if name not in names:
            raise ConfigError(f"llm.feed_daily_budget_usd.{name}",
                              f"no feed named {name!r} (feeds: {', '.join(sorted(names))})")
        if usd < 0:
            raise ConfigError(f"llm.feed_daily_budget_usd.{name}", f"must be >= 0, got {usd}")


# tcp://HOST:PORT with a host name, an IPv4 address or a bracketed IPv6 address, and a fixed
# port: peers connect to the very string its owner binds, so no wildcard host or port.
_TCP_ENDPOINT = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*"
                           r"[A-Za-z0-9])?):(?P<port>[0-9]{1,5})")
# Endpoints with one address per instance (instance i listens on PORT + i), by their kind.
_PER_INSTANCE = {name: owner for name, (owner, per_instance) in ENDPOINT_OWNERS.items()
                 if per_instance}
_KEYS_HELP = "catalyst-supervisor keys DIR makes a host's pair; see docs/multi-host.md"


def _check_endpoints(cfg: Config) -> None:
    """ipc:// as it is; tcp:// a fixed host and port no other endpoint uses, under CurveZMQ."""
    taken: dict[tuple[str, int], str] = {}
    for name in (f.name for f in dataclasses.fields(EndpointsConfig)):
        value = getattr(cfg.endpoints, name)
        where = f"endpoints.{name}"
        if value is None or value.startswith("ipc://"):
            continue
        if not value.startswith("tcp://"):
            raise ConfigError(where, "must start with ipc:// or tcp://")
        match = _TCP_ENDPOINT.fullmatch(value)
        if not match:
            raise ConfigError(where, f"{value!r} is not tcp://HOST:PORT (a host name or "
                              "address, an IPv6 address in brackets, a port; no wildcards: "
                              "peers connect to the address its owner binds)")
        host, port = match["host"].lower(), int(match["port"])
        kind = _PER_INSTANCE.get(name)
        count = getattr(cfg.actors, kind).instances if kind else 1
        if not 1 <= port <= 65536 - count:
            span = f" (and up to {count - 1} above it, one per {kind} instance)" if kind else ""
            raise ConfigError(where, f"port {port}{span} is outside 1-65535")
        for i in range(count):
            other = taken.get((host, port + i))
            if other:
                raise ConfigError(where, f"port {port + i} on {host} is already {other}")
            taken[(host, port + i)] = f"endpoints.{name}" + (f" (instance {i})" if kind else "")
        _check_curve_for(cfg, where, value)


# Who needs a peer: each role and the endpoint it connects to (ENDPOINT_OWNERS: who binds it).
_ROLE_NEEDS = (("fetcher", "dedupe_rpc"), ("alert", "dedupe_acks"), ("dedupe", "llm_in"),
               ("llm", "alert_in"))


def _check_hosts(cfg: Config) -> None:
    """host.roles and peers: each peer a tcp:// endpoint under CurveZMQ, and each role this
    host runs able to reach the next stage, here or on a peer."""
    roles = cfg.host.roles
    if roles is not None:
        if not roles:
            raise ConfigError("host.roles", "names no kind; leave it out to run every kind")
        if len(set(roles)) != len(roles):
            raise ConfigError("host.roles", f"names a kind twice: {roles}")
    for name in ("dedupe_rpc", "dedupe_acks", "llm_in", "alert_in"):
        peers = getattr(cfg.peers, name)
        for i, value in enumerate(peers):
            where = f"peers.{name}[{i}]"
            if not isinstance(value, str) or not _TCP_ENDPOINT.fullmatch(value):
                raise ConfigError(where, f"{str(value)[:80]!r} is not tcp://HOST:PORT (another "
                                  "host's endpoint, as that host binds it)")
            _check_curve_for(cfg, where, value)
        if len(set(peers)) != len(peers):
            raise ConfigError(f"peers.{name}", "names an endpoint twice")
    for role, endpoint in _ROLE_NEEDS:
        owner = ENDPOINT_OWNERS[endpoint][0]
        if cfg.runs(role) and not cfg.targets(endpoint):
            raise ConfigError(f"peers.{endpoint}", f"this host runs {role} but not {owner}: "
                              f"list the {owner} hosts' {endpoint} endpoints here")


def _check_curve_for(cfg: Config, where: str, endpoint: str) -> None:
    import zmq
    from zmq.auth import load_certificate

    if not zmq.has("curve"):
        raise ConfigError(where, "tcp:// needs CurveZMQ, which this libzmq was built without")
    for key in ("secret_key", "public_keys_dir"):
        if not getattr(cfg.curve, key):
            raise ConfigError(where, f"tcp:// needs curve.{key} (this host's certificate "
                              f"and its allowed peers' public keys; {_KEYS_HELP})")
    server = cfg.server_key_file(endpoint)
    try:
        load_certificate(server)
    except (OSError, ValueError) as exc:
        raise ConfigError(where, f"tcp:// needs the public key of the host that binds it as "
                          f"{server}, named after the host in the endpoint ({exc})") from None


def _check_curve_files(cfg: Config) -> None:
    """curve.secret_key and curve.public_keys_dir, when set, load: a private secret, and
    public keys only (each file named, so a bad one can be found)."""
    if not (cfg.curve.secret_key or cfg.curve.public_keys_dir):
        return
    from zmq.auth import load_certificate

    if cfg.curve.secret_key:
        path = cfg.path(cfg.curve.secret_key)
        try:
            mode = path.stat().st_mode
            _, secret = load_certificate(path)
        except (OSError, ValueError) as exc:
            raise ConfigError("curve.secret_key", f"cannot load {path}: {exc}") from None
        if not secret:
            raise ConfigError("curve.secret_key", f"{path} has no secret key (a NAME.key_secret "
                              f"file is wanted, not the public NAME.key; {_KEYS_HELP})")
        if mode & 0o004:
            raise ConfigError("curve.secret_key", f"{path} is readable by every user (mode "
                              f"{mode & 0o777:o}): chmod 600 it, and make a new pair if "
                              "another user may have read it")
    if cfg.curve.public_keys_dir:
        folder = cfg.path(cfg.curve.public_keys_dir)
        try:
            files = sorted(folder.glob("*.key")) if folder.is_dir() else None
        except OSError as exc:
            raise ConfigError("curve.public_keys_dir", f"cannot read {folder}: {exc}") from None
        if files is None:
            raise ConfigError("curve.public_keys_dir", f"{folder} is not a directory")
        for file in files:
            try:
                _, secret = load_certificate(file)
            except (OSError, ValueError) as exc:
                raise ConfigError("curve.public_keys_dir", f"cannot load {file}: {exc}") from None
            if secret:
                raise ConfigError("curve.public_keys_dir", f"{file} holds a secret key: only "
                                  "public NAME.key files belong here")


# The example contact shipped in config.yaml, and its kin: SEC would be sent a fake contact.
_PLACEHOLDER_CONTACT = re.compile(r"@(?:[\w.-]+\.)?example\.(?:com|org|net)\b|\bexample\b", re.I)


def _is_sec_gov(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "sec.gov" or host.endswith(".sec.gov")


def _placeholder(contact: str) -> bool:
    return bool(_PLACEHOLDER_CONTACT.search(contact))


# EDGAR renamed the beneficial-ownership forms in 2024 ("SC 13D" -> "SCHEDULE 13D"); a
# getcurrent query for the old code answers "No recent filings" forever.
_RETIRED_FORM = re.compile(r"[?&]type=SC(?:\+|%20|\s)+13([DG])\b", re.I)


def config_warnings(cfg: Config) -> list[tuple[str, str]]:
    """(key path, message) for settings that load but are very likely wrong."""
    warnings = []
    for i, feed in enumerate(cfg.feeds):
        retired = _RETIRED_FORM.search(feed.url)
        if retired and feed.enabled:
            letter = retired.group(1).upper()
            warnings.append((f"feeds[{i}].url", f"feed {feed.name!r} asks EDGAR for the retired "
                             f"form type 'SC 13{letter}', which has had no filings since 2024: "
                             f"use type=SCHEDULE%2013{letter} (amendments included)"))
    return warnings


def _check_ledger(cfg: Config) -> None:
    """dedupe.backend postgres: psycopg 3 importable, and the DSN set in the environment
    and well formed. Its value is a secret: never quoted."""
    if cfg.dedupe.backend != "postgres":
        return
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise ConfigError("dedupe.backend", f"postgres needs psycopg 3, which cannot be "
                          f"imported here ({exc}): pip install 'psycopg[binary]>=3.2'") from None
    name = cfg.dedupe.postgres.dsn_env
    dsn = cfg.secrets.get(name)
    if not dsn:
        raise ConfigError("dedupe.postgres.dsn_env", f"backend postgres needs the database's "
                          f"DSN in ${name}, which is not set in the environment")
    try:
        conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001  (psycopg's message quotes the DSN)
        raise ConfigError("dedupe.postgres.dsn_env", f"${name} is not a valid libpq "
                          "connection string (its value is not shown)") from None


def check_secrets(cfg: Config) -> None:
    """What only a process that runs the service needs: its secrets, present and usable.
    status, stop and restart skip this, so they work from a shell without them (and with
    the shipped placeholder contact)."""
    for feed in cfg.enabled_feeds():
        if _is_sec_gov(feed.url) and _placeholder(cfg.sec_user_agent or ""):
            raise ConfigError("sec_user_agent", f"{cfg.sec_user_agent!r} is a placeholder; "
                              f"EDGAR feed {feed.name!r} needs your desk's name and a real "
                              "contact e-mail (SEC fair access)")
    if cfg.llm.provider == "gemini" and not cfg.secrets.get("GEMINI_API_KEY"):
        raise ConfigError("llm.provider", "gemini needs GEMINI_API_KEY in the environment")
    cfg.alerts.check(cfg.secrets)
    _check_ledger(cfg)
    token = cfg.secrets.get(CONSOLE_TOKEN_ENV)
    if token is not None and len(token) < CONSOLE_TOKEN_MIN_CHARS:
        raise ConfigError("console", f"{CONSOLE_TOKEN_ENV} is set but shorter than "
                          f"{CONSOLE_TOKEN_MIN_CHARS} characters (make one with: "
                          "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")


def config_from_dict(data: Any, source: str | None = None, secrets: Secrets | None = None,
                     *, with_secrets: bool = True) -> Config:
    cfg = _build(Config, data, "")
    extra = [s.webhook_url_env for s in [*cfg.alerts.sinks, cfg.alerts.admin] if s.webhook_url_env]
    if cfg.alerts.charts.key_env():
        extra.append(cfg.alerts.charts.key_env())
    extra.append(cfg.dedupe.postgres.dsn_env)  # the ledger's DSN: a secret, never printed
    cfg = dataclasses.replace(cfg, source=source,
                              secrets=secrets or Secrets.from_environment(extra))
    _validate(cfg)
    if with_secrets:
        check_secrets(cfg)
    return cfg


def default_config_path() -> str:
    return os.environ.get(ENV_CONFIG) or "config.yaml"


def load_config(path: str | os.PathLike | None = None, *, with_secrets: bool = True) -> Config:
    path = Path(path or default_config_path())
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None
    return config_from_dict(data, source=str(path.resolve()), with_secrets=with_secrets)
