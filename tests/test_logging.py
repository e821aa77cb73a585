"""Logs an operator can use: priorities journald understands, per-actor files with
rotation outside journald, JSON lines, a level, and never a secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import base_config, wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRET = "https://discord.com/api/webhooks/123/s3cr3t-t0ken-value"

SCRIPT = """
import logging, sys
from catalyst_config import config_from_dict, Secrets
from actors.logsetup import setup_logging
cfg = config_from_dict({"log_dir": sys.argv[1], "log_level": sys.argv[2],
                        "log_format": sys.argv[3]}, secrets=Secrets({"DISCORD_WEBHOOK_URL": %r}))
setup_logging(cfg)
log = logging.getLogger("catalyst.test")
log.debug("debug line")
log.info("info line")
log.warning("warning with %%s", %r)
try:
    raise ValueError("boom")
except ValueError:
    log.exception("error line")
""" % (SECRET, SECRET)


def run(tmp_path: Path, *, level="INFO", fmt="text", journal=False) -> tuple[str, Path]:
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("JOURNAL_STREAM", None)
        if journal:
            st = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "log"), level, fmt],
                       stderr=stderr, env=env, check=True, timeout=60)
    return stderr_path.read_text(), tmp_path / "log" / "supervisor.log"


def test_under_journald_every_line_carries_its_syslog_priority(tmp_path):
    text, log_file = run(tmp_path, journal=True)
    lines = text.splitlines()
    assert lines[0].startswith("<6>INFO catalyst.test[") and "info line" in lines[0]
    assert lines[1].startswith("<4>WARNING ")
    assert lines[2].startswith("<3>ERROR ") and all(line.startswith("<3>") for line in lines[2:])
    assert any("ValueError: boom" in line for line in lines[2:])  # the traceback, at <3>
    assert not log_file.exists()  # journald keeps the logs; no second copy on disk
    assert SECRET not in text and "***" in text


def test_outside_journald_a_process_logs_to_stderr_and_its_own_file(tmp_path):
    text, log_file = run(tmp_path)
    assert "debug line" not in text and "info line" in text
    assert not text.startswith("<")
    on_disk = log_file.read_text()
    assert "warning with ***" in on_disk and SECRET not in on_disk
    assert oct(log_file.parent.stat().st_mode & 0o777) == "0o700"


def test_log_level_and_json_lines(tmp_path):
    text, log_file = run(tmp_path, level="DEBUG", fmt="json")
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r["level"] for r in records] == ["DEBUG", "INFO", "WARNING", "ERROR"]
    assert records[0]["process"] == "supervisor" and records[0]["logger"] == "catalyst.test"
    assert "ValueError: boom" in records[3]["exception"]
    assert SECRET not in text and all(SECRET not in json.dumps(r) for r in records)


def test_log_files_rotate_by_size(tmp_path, monkeypatch):
    import logging

    from actors import logsetup
    from catalyst_config import config_from_dict

    monkeypatch.setattr(logsetup, "LOG_FILE_MAX_BYTES", 4096)
    monkeypatch.setattr(logsetup, "LOG_FILE_BACKUPS", 2)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logsetup.setup_logging(config_from_dict({"log_dir": str(tmp_path / "log")}))
        for i in range(500):
            logging.getLogger("catalyst.test").info("line %d %s", i, "x" * 40)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert files == ["supervisor.log", "supervisor.log.1", "supervisor.log.2"]
    assert all((tmp_path / "log" / f).stat().st_size <= 4096 + 200 for f in files)


def test_every_actor_writes_its_own_log_file(run_supervisor, workdir):
    running = run_supervisor(base_config(workdir, [], actors={"fetcher": {"instances": 0}}))
    wait_for(running.all_running, 30, message="all running")
    log_dir = workdir / "log"
    names = {"supervisor.log", "dedupe-0.log", "llm-0.log", "alert-0.log"}
    wait_for(lambda: names <= {p.name for p in log_dir.iterdir()}, 10, message="log files")
    assert "started dedupe-0" in (log_dir / "supervisor.log").read_text()
