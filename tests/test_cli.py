"""The operator's commands, as a shell runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from tests.conftest import ROOT, base_config, wait_for


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY",)}
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(ROOT), **(env or {})})


def test_control_commands_work_from_a_shell_without_the_secrets(workdir):
    cfg = base_config(workdir, [])
    cfg["llm"] = {"provider": "gemini"}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    check = cli("check-config", "-c", str(path))
    assert check.returncode == 2
    assert "llm.provider: gemini needs GEMINI_API_KEY" in check.stderr
    status = cli("status", "-c", str(path))  # no supervisor runs: not a config error
    assert status.returncode == 3 and "no supervisor answered" in status.stderr


def test_the_shipped_placeholder_contact_is_refused_until_the_operator_names_one(workdir):
    for command in ("check-config", "start"):
        refused = cli(command, "-c", str(ROOT / "config.yaml"))
        assert refused.returncode == 2
        assert "sec_user_agent: 'Example Desk ops@example.com' is a placeholder" in refused.stderr
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    for placeholder in ("Acme Desk ops@example.org", "Example Trading desk@realfirm.test"):
        data["sec_user_agent"] = placeholder
        path = workdir / "placeholder.yaml"
        path.write_text(yaml.safe_dump(data))
        assert cli("check-config", "-c", str(path)).returncode == 2, placeholder
    # A loopback EDGAR (the demo's, a test's) needs no real contact.
    data["feeds"] = [{"name": "edgar", "kind": "sec", "url": "http://127.0.0.1:9/atom"}]
    data["sec_user_agent"] = "Example Desk ops@example.com"
    path.write_text(yaml.safe_dump(data))
    assert cli("check-config", "-c", str(path)).returncode == 0


def shipped_with_contact(workdir) -> dict:
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["sec_user_agent"] = "Northwind Capital Desk ops@northwind-capital.test"
    return data


def test_check_config_accepts_the_shipped_config_and_names_a_bad_key(workdir):
    data = shipped_with_contact(workdir)
    good = workdir / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    ok = cli("check-config", "-c", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "9 feeds enabled" in ok.stdout
    data["feeds"][4]["kind"] = "edgar"
    bad = workdir / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert "feeds[4].kind: 'edgar' is not one of pr, sec" in result.stderr


def test_an_edgar_feed_without_a_user_agent_is_refused(workdir):
    data = shipped_with_contact(workdir)
    data["sec_user_agent"] = ""
    path = workdir / "noua.yaml"
    path.write_text(yaml.safe_dump(data))
    for command in ("check-config", "start"):
        result = cli(command, "-c", str(path))
        assert result.returncode == 2
        assert "sec_user_agent: required by EDGAR feed 'sec-8k'" in result.stderr


def test_a_script_can_trust_status_and_stop_wait(run_supervisor, workdir):
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}},
                      supervisor={"restart": {"backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                                              "max_restarts": 1, "period_s": 60}})
    running = run_supervisor(cfg, extra_kinds=[
        {"name": "crashy", "class": "tests.fault_actors:CrashingActor",
         "options": {"after_s": 0.05}}])
    wait_for(lambda: (a := running.actor("crashy-0")) and a["state"] == "failed", 30,
             message="crashy given up")
    status = running.cli("status", "--json")
    assert status.returncode == 1, status.stderr  # an actor failed: not all well
    stop = running.cli("stop", "--wait", "--timeout", "60", "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout) == {"stopped": True}, stop.stderr
    # --wait returned only once the supervisor was gone: nothing left to race a new start.
    assert running.proc.poll() is not None or running.wait_exit(5) is not None
    assert running.descendants() == []
    assert list((workdir / "run").glob("*.sock")) == []  # its ipc:// files gone with it
    assert running.cli("status").returncode == 3
    assert running.cli("stop", "--wait").returncode == 3  # nothing to stop


def test_version_json_check_config_and_completion():
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("catalyst-supervisor ")
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["sec_user_agent"] = "Northwind Capital Desk ops@northwind-capital.test"
    data["feeds"][7]["url"] = data["feeds"][7]["url"].replace("SCHEDULE%2013D", "SC%2013D")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(data))
        check = cli("check-config", "--json", "-c", str(path))
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] and report["feeds_enabled"] == 9
    assert report["warnings"][0]["key"] == "feeds[7].url" and "SC 13D" in check.stderr
    with tempfile.TemporaryDirectory() as tmp:
        init = cli("init", "--systemd", "--json", tmp)
        wrote = json.loads(init.stdout)["wrote"]
        assert init.returncode == 0 and len(wrote) == 5
        assert oct(os.stat(Path(tmp) / "env").st_mode & 0o777) == "0o600"
        again = cli("init", tmp)
        assert again.returncode == 1 and "exists (--force replaces it)" in again.stderr
    completion = cli("completion", "bash")
    assert completion.returncode == 0 and "dead-letters" in completion.stdout
    assert "exit codes:" in cli("--help").stdout
