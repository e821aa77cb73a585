"""catalyst-supervisor: start, demo, status, stop, restart, dead-letters, report,
check-config, init, notify-admin."""

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
from supervisor.control import MAX_DEAD_LETTERS_LIMIT, ControlError, request

EXIT_USAGE = 2
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
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    sup = status["supervisor"]
    lines.insert(0, f"supervisor pid {sup['pid']}, up {sup['uptime_s']:.0f}s, {sup['state']}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    status = request(_control_config(args), "status")
    print(json.dumps(status, indent=2) if args.json else _table(status))
    return 0


def cmd_stop(args) -> int:
    request(_control_config(args), "stop")
    print("stopping")
    return 0


def cmd_restart(args) -> int:
    request(_control_config(args), "restart", {"name": args.name})
    print(f"restarting {args.name}")
    return 0


def cmd_dead_letters(args) -> int:
    config = _control_config(args)
    if args.replay_all or args.replay:
        done = request(config, "dead_letters", {"replay": "all" if args.replay_all else args.replay})
        print(f"{done['replayed']} dead letters sent again")
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
    print(render_report(history, args.output))
    return 0


def cmd_check_config(args) -> int:
    config = _load(args)
    for path, message in config_warnings(config):
        print(f"warning: {path}: {message}", file=sys.stderr)
    print(f"{config.source}: ok ({len(config.enabled_feeds())} feeds enabled, "
          f"llm provider {config.llm.provider})")
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
    print(f"wrote {path}")


def cmd_init(args) -> int:
    """Writes a commented config (and, with --systemd, the env file and unit templates)."""
    target = Path(args.dir)
    config = _template("config.yaml")
    try:
        if args.systemd:
            config = systemd_config(config)
        _write(target / "config.yaml", config, 0o644, args.force)
        if args.systemd:
            env = target / "env"
            if not env.exists():  # secrets the operator may already have put there
                _write(env, _template("env.example"), 0o600, False)
            for name in SYSTEMD_FILES:
                _write(target / "systemd" / name, _template(name), 0o644, args.force)
    except InitError as exc:
        print(f"init: {exc}", file=sys.stderr)
        return 1
    print(f"next: set sec_user_agent (and feeds, sinks) in {target / 'config.yaml'}, then "
          f"catalyst-supervisor check-config -c {target / 'config.yaml'}")
    return 0


def cmd_notify_admin(args) -> int:
    """One admin event through the configured admin sink (the OnFailure= unit uses it)."""
    from supervisor.admin import AdminNotifier

    config = _load(args)
    setup_logging(config, getattr(args, "log_level", None))
    notifier = AdminNotifier(config)
    notifier.event(args.event, args.actor, args.event, args.message, level=args.level)
    notifier.close()
    return 0


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
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", parents=[common], help="run in the foreground")
    p.add_argument("--cycles", type=int, default=None, help="stop after N fetch cycles, drained")
    p.set_defaults(fn=cmd_start)
    p = sub.add_parser("demo", parents=[common], help="the whole system, offline")
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--out", default="catalyst-demo", help="where alerts and charts go")
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("status", parents=[common], help="actors of the running supervisor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    sub.add_parser("stop", parents=[common], help="graceful stop").set_defaults(fn=cmd_stop)
    p = sub.add_parser("restart", parents=[common], help="restart one actor")
    p.add_argument("name")
    p.set_defaults(fn=cmd_restart)
    p = sub.add_parser("dead-letters", parents=[common],
                       help="items that ran out of attempts; list them or send them again")
    p.add_argument("--limit", type=dead_letters_limit, default=20,
                   help=f"how many to list, newest first (0 to {MAX_DEAD_LETTERS_LIMIT})")
    p.add_argument("--json", action="store_true")
    p.add_argument("--replay", nargs="+", metavar="KEY", help="send these again")
    p.add_argument("--replay-all", action="store_true", help="send every dead letter again")
    p.set_defaults(fn=cmd_dead_letters)
    p = sub.add_parser("report", parents=[common], help="memory and alert report PNG")
    p.add_argument("-o", "--output", default="catalyst-report.png")
    p.set_defaults(fn=cmd_report)
    sub.add_parser("check-config", parents=[common],
                   help="validate the configuration").set_defaults(fn=cmd_check_config)
    p = sub.add_parser("init", help="write a commented config (and systemd templates)")
    p.add_argument("dir", nargs="?", default=".", help="where to write (default: .)")
    p.add_argument("--systemd", action="store_true",
                   help="paths for the shipped unit (/var/lib, /run, /var/log), plus an env "
                        "file (0600) and the unit and sysusers.d templates under DIR/systemd")
    p.add_argument("--force", action="store_true", help="replace files that exist")
    p.set_defaults(fn=cmd_init)
    p = sub.add_parser("notify-admin", parents=[common],
                       help="send one admin event through the configured admin sink")
    p.add_argument("--event", required=True, help="event name, e.g. service_failed")
    p.add_argument("--message", required=True, help="what the desk should know")
    p.add_argument("--actor", default="systemd", help="who reports it (default: systemd)")
    p.add_argument("--level", default="error", choices=("info", "warning", "error"))
    p.set_defaults(fn=cmd_notify_admin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
