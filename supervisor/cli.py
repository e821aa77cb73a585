"""catalyst-supervisor: start, demo, status, stop, restart, pause, resume, dead-letters,
report, check-config, init, notify-admin."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from actors.errors import ConfigError
from actors.logsetup import setup_logging
from catalyst_config import config_warnings, default_config_path, load_config
from supervisor.control import (
    BACKUP_ANSWER_TIMEOUT_S,
    MAX_DEAD_LETTERS_LIMIT,
    ControlError,
    NotRunningError,
    request,
)

# Exit codes a script can rely on (LSB init-script status codes for `status`).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
BACKUP_REQUEST_TIMEOUT_S = BACKUP_ANSWER_TIMEOUT_S + 2.0  # the supervisor answers first
STOP_WAIT_S = 120.0  # stop --wait gives up after this (a drain is bounded well under it)
EPILOG = """exit codes: 0 ok; 1 failed (status: an actor is failed or backing off; start: an
actor gave up with on_give_up: shutdown); 2 bad usage or configuration (named by its key),
or another supervisor owns the data_dir; 3 no supervisor is running (status, stop, ...);
4 start --cycles stopped with items still pending.

environment: CATALYST_CONFIG (default config path), GEMINI_API_KEY, DISCORD_WEBHOOK_URL,
DISCORD_ADMIN_WEBHOOK_URL (secrets: never in the config file), NOTIFY_SOCKET and
WATCHDOG_USEC (set by systemd), JOURNAL_STREAM (journald: lines carry their priority)."""
log = logging.getLogger("catalyst.cli")
# init --systemd: the unit's RuntimeDirectory=, StateDirectory= and LogsDirectory=.
SYSTEMD_PATHS = {"run_dir": "/run/catalyst-supervisor", "data_dir": "/var/lib/catalyst-supervisor",
                 "log_dir": "/var/log/catalyst-supervisor"}
SYSTEMD_FILES = ("catalyst-supervisor.service", "catalyst-supervisor-failed.service",
                 "catalyst-supervisor.sysusers")


class InitError(Exception):
    """init would overwrite a file, or its template is not what it expects."""


def _load(args, *, with_secrets: bool = True):
    return load_config(getattr(args, "config", None), with_secrets=with_secrets)


def _control_config(args):
    """Enough configuration to find the supervisor's socket; secrets are not needed."""
    return _load(args, with_secrets=False)


def cmd_start(args) -> int:
    from supervisor.supervisor import run_supervisor

    config = _load(args)
    setup_logging(config, getattr(args, "log_level", None))
    for path, message in config_warnings(config):
        log.warning("config %s: %s", path, message)
    return run_supervisor(config, max_cycles=args.cycles)


def cmd_demo(args) -> int:
    from supervisor.demo import run_demo

    return run_demo(cycles=args.cycles, out_dir=args.out)


def _table(status: dict) -> str:
    # anon_mb is what max_rss_mb limits and the leak trend watches; rss_mb adds file pages.
    cols = ("name", "kind", "pid", "state", "anon_mb", "rss_mb", "max_rss_mb", "restarts",
            "last_restart_reason", "uptime_s", "heartbeat_age_s")
    rows = [[("" if a.get(c) is None else str(a.get(c))) for c in cols] for a in status["actors"]]
    lines = [_columns(cols, rows)]
    sup = status["supervisor"]
    lines.insert(0, f"supervisor pid {sup['pid']}, up {sup['uptime_s']:.0f}s, {sup['state']}")
    feeds = _feed_rows(status)
    if feeds:
        lines += ["", _columns(("feed", "last_success", "next_poll", "items", "breaker",
                                "last_error"), feeds)]
    return "\n".join(lines)


def _feed_rows(status: dict) -> list[list[str]]:
    """One row per feed, from the fetchers' heartbeat stats: what an operator asks first."""
    now = time.time()
    rows = []
    for actor in status["actors"]:
        feeds = ((actor.get("stats") or {}).get("feeds") or {}).get("feeds") or {}
        for name, f in sorted(feeds.items()):
            success = f.get("last_success_at")
            next_in = f.get("next_poll_in_s")
            rows.append([name, f"{now - success:.0f}s ago" if success else "never",
                         "polling" if f.get("polling") else "paused" if f.get("paused") else
                         (f"in {next_in:.0f}s" if next_in is not None else "-"),
                         str(f.get("last_items") if f.get("last_items") is not None else "-"),
                         str((f.get("breaker") or {}).get("state", "-")),
                         str(f.get("last_error") or "")[:60]])
    return rows


def _columns(cols: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def cmd_status(args) -> int:
    status = request(_control_config(args), "status")
    print(json.dumps(status, indent=2) if args.json else _table(status))
    unwell = [a["name"] for a in status["actors"] if a["state"] in ("failed", "backoff")]
    return EXIT_FAILED if unwell else EXIT_OK


def _say(args, text: str, **fields) -> None:
    print(json.dumps(fields) if getattr(args, "json", False) else text)


def supervisor_running(config) -> bool:
    """Whether a supervisor holds this configuration's data_dir lock (it releases the
    lock last, once every actor is gone): a shared lock is refused while it does."""
    import fcntl

    path = config.path(config.data_dir) / "supervisor.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def cmd_stop(args) -> int:
    config = _control_config(args)
    request(config, "stop")
    if not args.wait:
        _say(args, "stopping", stopping=True)
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while supervisor_running(config):
        if time.monotonic() >= deadline:
            print(f"error: the supervisor is still stopping after {args.timeout:g} s",
                  file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.1)
    _say(args, "stopped", stopped=True)
    return EXIT_OK


def cmd_reload(args) -> int:
    done = request(_control_config(args), "reload")
    _say(args, f"reloaded: restarted {', '.join(done['restarted']) or 'none'}; reconfigured "
         f"{', '.join(done['reconfigured']) or 'none'}", **done)
    return EXIT_OK


def cmd_restart(args) -> int:
    request(_control_config(args), "restart", {"name": args.name})
    _say(args, f"restarting {args.name}", restarting=args.name)
    return EXIT_OK


def cmd_pause(args) -> int:
    done = request(_control_config(args), "pause", {"feed": args.feed})
    _say(args, f"paused {args.feed} (paused now: {', '.join(done['paused'])})",
         feed=args.feed, **done)
    return EXIT_OK


def cmd_resume(args) -> int:
    done = request(_control_config(args), "resume", {"feed": args.feed})
    _say(args, f"resumed {args.feed} (paused now: {', '.join(done['paused']) or 'none'})",
         feed=args.feed, **done)
    return EXIT_OK


def cmd_dead_letters(args) -> int:
    config = _control_config(args)
    if args.replay_all or args.replay:
        done = request(config, "dead_letters", {"replay": "all" if args.replay_all else args.replay})
        _say(args, f"{done['replayed']} dead letters sent again", replayed=done["replayed"])
        return 0
    answer = request(config, "dead_letters", {"limit": args.limit})
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    letters = answer["dead_letters"]
    print(f"{answer['total']} dead letters" + (f", newest {len(letters)}:" if letters else ""))
    for d in letters:
        died = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(d["died_at"]))
        print(f"  {died}  {d['attempts']} sends  {d['source']}  {d['key']}\n    {d['title'][:100]}")
    return 0


def cmd_backup(args) -> int:
    """Asks the owner of each SQLite file in turn for a copy in DIR (a relative DIR is
    taken from here); exit 1 when any file was not copied."""
    config = _control_config(args)
    directory = os.path.abspath(args.dir)
    files = request(config, "backup", {"dir": directory})["files"]
    copied, failed = [], []
    for name in files:
        try:
            copied.append(request(config, "backup", {"dir": directory, "file": name},
                                  timeout_s=BACKUP_REQUEST_TIMEOUT_S))
        except NotRunningError:
            raise
        except ControlError as exc:
            failed.append({"file": name, "error": str(exc)})
    if args.json:
        print(json.dumps({"dir": directory, "copied": copied, "failed": failed}, indent=2))
    else:
        for c in copied:
            print(f"{c['file']}: {c['bytes']} bytes, {c['pages']} pages -> {c['path']} "
                  f"(by {c['actor']})")
        for f in failed:
            print(f"{f['file']}: not copied: {f['error']}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_report(args) -> int:
    from supervisor.report import render_report
    from supervisor.supervisor import HISTORY_FILE

    config = _control_config(args)
    try:
        history = request(config, "history", timeout_s=2.0)
    except ControlError:
        saved = config.path(config.data_dir) / HISTORY_FILE
        if not saved.exists():
            print(f"no running supervisor and no saved history at {saved}", file=sys.stderr)
            return 1
        history = json.loads(saved.read_text())
    written = render_report(history, args.output)
    _say(args, written, report=str(args.output))
    return 0


def cmd_check_config(args) -> int:
    config = _load(args)
    warnings = config_warnings(config)
    for path, message in warnings:
        print(f"warning: {path}: {message}", file=sys.stderr)
    _say(args, f"{config.source}: ok ({len(config.enabled_feeds())} feeds enabled, "
         f"llm provider {config.llm.provider})", ok=True, config=config.source,
         feeds_enabled=len(config.enabled_feeds()), llm_provider=config.llm.provider,
         warnings=[{"key": k, "message": m} for k, m in warnings])
    return 0


def cmd_completion(args) -> int:
    """A shell completion script (shtab), for eval or a completions folder."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _template(name: str) -> str:
    from importlib.resources import files

    return files("supervisor.templates").joinpath(name).read_text(encoding="utf-8")


def systemd_config(text: str) -> str:
    """The shipped config with run_dir, data_dir and log_dir at the unit's directories, and
    every other file it writes (sinks, charts) under data_dir: relative paths resolve
    against the config's own folder, /etc, which the unit keeps read-only."""
    for key, value in SYSTEMD_PATHS.items():
        text, found = re.subn(rf"^{key}: *\S+ *", f"{key}: {value}  ", text, count=1,
                              flags=re.M)
        if not found:
            raise InitError(f"the shipped config has no top-level {key} line")
    return re.sub(r"(\b(?:path|dir): *)var/", rf"\g<1>{SYSTEMD_PATHS['data_dir']}/", text)


def _write(path: Path, text: str, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise InitError(f"{path} exists (--force replaces it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w",
              encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def cmd_init(args) -> int:
    """Writes a commented config (and, with --systemd, the env file and unit templates)."""
    target = Path(args.dir)
    config = _template("config.yaml")
    files = {target / "config.yaml": (config, 0o644)}
    if args.systemd:
        files[target / "config.yaml"] = (systemd_config(config), 0o644)
        if not (target / "env").exists():  # secrets the operator may already have put there
            files[target / "env"] = (_template("env.example"), 0o600)
        for name in SYSTEMD_FILES:
            files[target / "systemd" / name] = (_template(name), 0o644)
    try:
        for path, (text, mode) in files.items():
            _write(path, text, mode, args.force)
    except InitError as exc:
        print(f"init: {exc}", file=sys.stderr)
        return EXIT_FAILED
    wrote = [str(p) for p in files]
    _say(args, "\n".join(f"wrote {p}" for p in wrote) + "\nnext: set sec_user_agent (and "
         f"feeds, sinks) in {target / 'config.yaml'}, then catalyst-supervisor check-config "
         f"-c {target / 'config.yaml'}", wrote=wrote)
    return EXIT_OK


def cmd_notify_admin(args) -> int:
    """One admin event through the configured admin sink (the OnFailure= unit uses it)."""
    from supervisor.admin import AdminNotifier

    config = _load(args)
    setup_logging(config, getattr(args, "log_level", None))
    notifier = AdminNotifier(config)
    notifier.event(args.event, args.actor, args.event, args.message, level=args.level)
    notifier.close()
    return 0


# A key pair is named after its host as tcp:// endpoints write it (a name, IPv4 or IPv6).
KEY_NAME = re.compile(r"[A-Za-z0-9:][A-Za-z0-9._:-]*")


def cmd_keys(args) -> int:
    """A CurveZMQ key pair for this host (docs/multi-host.md): NAME.key_secret (0600) and
    NAME.key (0644), made in a private folder and moved in whole, so the secret is never
    readable by others, not even half written."""
    import socket
    import tempfile

    from zmq.auth import create_certificates

    name = args.name or socket.gethostname()
    if not KEY_NAME.fullmatch(name):
        print(f"keys: {name!r} is not a host name or address (name the pair after the host "
              "as tcp:// endpoints write it)", file=sys.stderr)
        return EXIT_USAGE
    target = Path(args.dir)
    secret, public = target / f"{name}.key_secret", target / f"{name}.key"
    existing = [p for p in (secret, public) if p.exists()]
    if existing and not args.force:
        print(f"keys: {existing[0]} exists (--force makes a new pair; every peer then needs "
              "the new public key)", file=sys.stderr)
        return EXIT_FAILED
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".keys-") as tmp:  # made 0700
        made_public, made_secret = create_certificates(tmp, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    _say(args, f"wrote {secret} (this host's secret key, mode 0600: it never leaves this "
         f"host)\nwrote {public} (its public key, mode 0644)\nnext:\n"
         f"  on this host set curve.secret_key: {secret.resolve()}\n"
         f"  and curve.public_keys_dir: a folder of the public keys allowed to connect\n"
         f"  copy {public.name} into that folder on every host that talks to this one, "
         f"this one included\n"
         f"  endpoints this host binds write it as tcp://{name}:PORT (clients expect the "
         f"server's key as {name}.key)",
         name=name, secret_key=str(secret.resolve()), public_key=str(public.resolve()))
    return EXIT_OK


def dead_letters_limit(text: str) -> int:
    """--limit: a whole number the supervisor accepts, refused here with a clear message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_DEAD_LETTERS_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: from 0 to {MAX_DEAD_LETTERS_LIMIT}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS,
                        help=f"configuration file (default: {default_config_path()})")
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="overrides log_level in the configuration")
    parser = argparse.ArgumentParser(prog="catalyst-supervisor", parents=[common],
                                     description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", parents=[common], help="run in the foreground")
    p.add_argument("--cycles", type=int, default=None,
                   help="stop after N fetch cycles (every feed polled N times), drained")
    p.set_defaults(fn=cmd_start)
    p = sub.add_parser("demo", parents=[common], help="the whole system, offline")
    p.add_argument("--cycles", type=int, default=3, help="fetch cycles to run (default 3)")
    p.add_argument("--out", default="catalyst-demo", help="where alerts and charts go")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("status", parents=[common], help="actors of the running supervisor "
                       "(exit 0 all running, 1 one failed or backing off, 3 none running)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("stop", parents=[common], help="graceful stop: drain, then exit")
    p.add_argument("--wait", action="store_true",
                   help="return once the supervisor has exited (so stop --wait && start is safe)")
    p.add_argument("--timeout", type=float, default=STOP_WAIT_S,
                   help=f"with --wait: give up after this many seconds, exit 1 "
                        f"(default {STOP_WAIT_S:g})")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_stop)
    p = sub.add_parser("reload", parents=[common], help="re-read the configuration (as SIGHUP "
                       "does): feeds change in place, changed kinds restart; a change that "
                       "needs a restart or an invalid file is refused, the old one kept")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_reload)
    p = sub.add_parser("restart", parents=[common], help="restart one actor")
    p.add_argument("name", help="the actor's name, as status shows it (e.g. llm-0)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_restart)
    p = sub.add_parser("pause", parents=[common], help="stop polling one feed until resumed "
                       "(kept across restarts of the fetcher and of the supervisor)")
    p.add_argument("feed", help="the feed's name, as in the configuration")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_pause)
    p = sub.add_parser("resume", parents=[common], help="poll a paused feed again, at once")
    p.add_argument("feed", help="the feed's name, as in the configuration")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_resume)
    p = sub.add_parser("dead-letters", parents=[common],
                       help="items that ran out of attempts; list them or send them again")
    p.add_argument("--limit", type=dead_letters_limit, default=20,
                   help=f"how many to list, newest first (0 to {MAX_DEAD_LETTERS_LIMIT})")
    p.add_argument("--json", action="store_true", help="JSON instead of a listing")
    p.add_argument("--replay", nargs="+", metavar="KEY", help="send these again")
    p.add_argument("--replay-all", action="store_true", help="send every dead letter again")
    p.set_defaults(fn=cmd_dead_letters)
    p = sub.add_parser("backup", parents=[common],
                       help="consistent online copies of every SQLite file, each made by the "
                            "actor that owns it (exit 1 when any file was not copied)")
    p.add_argument("dir", help="where the copies go (made 0700, files 0600); it must be "
                               "writable by the service's user")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_backup)
    p = sub.add_parser("report", parents=[common], help="memory and alert report PNG")
    p.add_argument("-o", "--output", default="catalyst-report.png", help="the PNG to write")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("check-config", parents=[common], help="validate the configuration "
                       "(exit 2 naming the bad key; likely mistakes are warned about)")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_check_config)
    p = sub.add_parser("init", help="write a commented config (and systemd templates)")
    p.add_argument("dir", nargs="?", default=".", help="where to write (default: .)")
    p.add_argument("--systemd", action="store_true",
                   help="paths for the shipped unit (/var/lib, /run, /var/log), plus an env "
                        "file (0600) and the unit and sysusers.d templates under DIR/systemd")
    p.add_argument("--force", action="store_true", help="replace files that exist")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("notify-admin", parents=[common],
                       help="send one admin event through the configured admin sink")
    p.add_argument("--event", required=True, help="event name, e.g. service_failed")
    p.add_argument("--message", required=True, help="what the desk should know")
    p.add_argument("--actor", default="systemd", help="who reports it (default: systemd)")
    p.add_argument("--level", default="error", choices=("info", "warning", "error"))
    p.set_defaults(fn=cmd_notify_admin)
    p = sub.add_parser("keys", help="write this host's CurveZMQ key pair for tcp:// "
                       "endpoints (NAME.key_secret 0600, NAME.key 0644)")
    p.add_argument("dir", help="where to write the pair (made 0700 if it does not exist)")
    p.add_argument("--name", help="the host's name or address as tcp:// endpoints write it "
                                  "(default: this host's name)")
    p.add_argument("--force", action="store_true", help="replace a pair that exists")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(fn=cmd_keys)
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell to complete in")
    p.set_defaults(fn=cmd_completion)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("catalyst-supervisor")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotRunningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
