"""Runs the real supervisor with extra test actors: python -m tests.supervise CONFIG JSON."""

from __future__ import annotations

import json
import sys

from actors.logsetup import setup_logging
from supervisor.config import load_config
from supervisor.supervisor import run_supervisor

if __name__ == "__main__":
    config = load_config(sys.argv[1])
    setup_logging(config)
    sys.exit(run_supervisor(config, extra_actors=json.loads(sys.argv[2])))
