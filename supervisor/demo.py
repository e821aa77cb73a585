"""catalyst-supervisor demo: the whole system offline against a loopback replay server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from actors.logsetup import setup_logging
from catalyst_config import load_config
from supervisor.demo_server import DemoFeedServer
from supervisor.report import item_totals
from supervisor.supervisor import HISTORY_FILE, run_supervisor


def demo_config(server: DemoFeedServer) -> dict:
    return {
        "run_dir": "run", "data_dir": "data", "log_dir": "log",
        "poll_interval_s": 1.0,
        "sec_user_agent": "Catalyst Supervisor demo demo@example.com",
        "feeds": server.feeds(),
        # The demo alerts its bundled items on the first poll (a real desk marks them seen).
        "fetch": {"company_tickers_url": server.company_tickers_url, "first_poll": "alert",
                  "connect_timeout_s": 2.0, "read_timeout_s": 5.0},
        "dedupe": {"lease_s": 10.0},
        "alerts": {
            "min_score": 0.5,
            "sinks": [{"type": "console"}, {"type": "jsonl", "path": "alerts.jsonl"}],
            "admin": {"type": "jsonl", "path": "admin.jsonl"},
            "charts": {"enabled": True, "dir": "charts", "price_url": server.price_url,
                       "max_wait_s": 8.0},
        },
        "supervisor": {"heartbeat_interval_s": 0.25, "heartbeat_timeout_s": 5.0,
                       "stop_timeout_s": 5.0, "drain_timeout_s": 20.0, "metrics_port": 0},
        "console": {"port": 0},  # the demo is over in seconds; a desk's service may hold 19109
    }


def _summary(out: Path) -> str:
    totals = item_totals(json.loads((out / "data" / HISTORY_FILE).read_text()))
    alerts = out / "alerts.jsonl"
    lines = alerts.read_text().splitlines() if alerts.exists() else []
    charts = sum(1 for line in lines if json.loads(line).get("chart"))
    rows = [("fetched", totals.get("fetched", 0)), ("new", totals.get("new", 0)),
            ("duplicates dropped", totals.get("duplicates", 0)),
            ("alerted", len(lines)), ("filtered (below min_score)", totals.get("filtered", 0)),
            ("charts written", charts)]
    width = max(len(r[0]) for r in rows)
    text = ["", "demo summary"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    text += [f"  alerts: {alerts}", f"  charts: {out / 'charts'}"]
    return "\n".join(text)


def run_demo(cycles: int = 3, out_dir: str = "catalyst-demo") -> int:
    out = Path(out_dir).resolve()
    for stale in ("run", "data", "charts", "alerts.jsonl", "admin.jsonl"):
        path = out / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    with DemoFeedServer() as server:
        config_path = out / "config.yaml"
        config_path.write_text("# written by catalyst-supervisor demo\n"
                               + yaml.safe_dump(demo_config(server), sort_keys=False))
        config = load_config(config_path)
        setup_logging(config)
        code = run_supervisor(config, max_cycles=cycles)
    print(_summary(out), flush=True)
    return code
