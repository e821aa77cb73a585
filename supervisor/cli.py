"""catalyst-supervisor: start, demo, status, stop, restart, dead-letters, report, check-config."""

from __future__ import annotations

import argparse
import json
import sys
import time

from actors.errors import ConfigError
from actors.logsetup import setup_logging
from catalyst_config import default_config_path, load_config
from supervisor.control import MAX_DEAD_LETTERS_LIMIT, ControlError, request

EXIT_USAGE = 2


def _load(args, *, with_secrets: bool = True):
    return load_config(getattr(args, "config", None), with_secrets=with_secrets)


def _control_config(args):
    """Enough configuration to find the supervisor's socket; secrets are not needed."""
    return _load(args, with_secrets=False)


def cmd_start(args) -> int:
    from supervisor.supervisor import run_supervisor

    config = _load(args)
    setup_logging(config)
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
    print(f"{config.source}: ok ({len(config.enabled_feeds())} feeds enabled, "
          f"llm provider {config.llm.provider})")
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
