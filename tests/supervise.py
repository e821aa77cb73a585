"""Runs the real supervisor with extra actor kinds for tests:
python -m tests.supervise CONFIG JSON, JSON a list of {"name", "class", "max_rss_mb",
"instances", "options"}. Each becomes one more entry in the kinds table, started after the
pipeline and stopped with the sources: the same path a fifth production kind takes."""

from __future__ import annotations

import json
import sys

from actors import KINDS, Kind
from actors.logsetup import setup_logging
from catalyst_config import load_config
from supervisor.supervisor import run_supervisor


def extra_kinds(entries: list[dict]) -> tuple[Kind, ...]:
    last = max(k.start_rank for k in KINDS)
    return tuple(Kind(e["name"], e["class"], start_rank=last + 1, stop_rank=0,
                      options=e.get("options", {}), instances=e.get("instances", 1),
                      max_rss_mb=e.get("max_rss_mb", 400.0)) for e in entries)


if __name__ == "__main__":
    config = load_config(sys.argv[1])
    setup_logging(config)
    sys.exit(run_supervisor(config, kinds=KINDS + extra_kinds(json.loads(sys.argv[2]))))
