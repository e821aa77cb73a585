"""Supervision with real processes: each restart trigger, give-up, orphans, systemd,
metrics and the report."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

import psutil

from tests.conftest import base_config, free_port, wait_for

IDLE = "tests.fault_actors:IdleActor"
LEAKY = "tests.fault_actors:LeakyActor"
CRASHING = "tests.fault_actors:CrashingActor"


def quiet_config(workdir, **supervisor):
    """No feeds and no fetcher: only the pipeline actors and the test actors run."""
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}})
    cfg["supervisor"] = {**cfg["supervisor"], **supervisor}
    return cfg


def restarted(running, name: str, reason: str):
    def check():
        a = running.actor(name)
        return a if a and a["last_restart_reason"] == reason and a["state"] == "running" else None
    return check


def test_actor_over_its_memory_limit_is_restarted_for_memory(run_supervisor, workdir):
    running = run_supervisor(quiet_config(workdir), extra_kinds=[
        {"name": "hog", "class": LEAKY, "max_rss_mb": 120, "options": {"mb_per_s": 80}}])
    first = wait_for(lambda: running.actor("hog-0"), 30, message="hog started")
    a = wait_for(restarted(running, "hog-0", "memory"), 30, message="memory restart")
    assert a["pid"] != first["pid"]
    events = wait_for(lambda: [e for e in running.admin_events()
                               if e["actor"] == "hog-0" and e["reason"] == "memory"], 10)
    assert events[0]["event"] == "restart" and events[0]["at"] > 0 and events[0]["message"]


def test_slow_leak_under_the_limit_is_caught_by_the_trend(run_supervisor, workdir):
    cfg = quiet_config(workdir, leak={"window_s": 8, "max_growth_mb_per_min": 30})
    running = run_supervisor(cfg, extra_kinds=[
        {"name": "drip", "class": LEAKY, "max_rss_mb": 4000, "options": {"mb_per_s": 2}}])
    a = wait_for(restarted(running, "drip-0", "leak"), 40, message="leak restart")
    assert a["restarts"] >= 1
    # The steady actors beside it were never mistaken for leaks.
    status = running.status()
    assert all(x["restarts"] == 0 for x in status["actors"] if x["name"] != "drip-0")


def test_hung_actor_is_killed_and_replaced(run_supervisor, workdir):
    running = run_supervisor(quiet_config(workdir), extra_kinds=[
        {"name": "sleepy", "class": IDLE}])
    first = wait_for(lambda: (a := running.actor("sleepy-0")) and a["state"] == "running" and a,
                     30, message="sleepy running")
    os.kill(first["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    a = wait_for(restarted(running, "sleepy-0", "hang"), 30, message="hang restart")
    assert a["pid"] != first["pid"]
    assert time.monotonic() - stopped_at < 3.0 + 3.0  # heartbeat_timeout_s + slack
    assert not psutil.pid_exists(first["pid"]) or \
        psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE


def test_crash_loop_gives_up_and_keeps_the_rest_running(run_supervisor, workdir):
    cfg = quiet_config(workdir, restart={"backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                                         "max_restarts": 3, "period_s": 60})
    running = run_supervisor(cfg, extra_kinds=[
        {"name": "crashy", "class": CRASHING, "options": {"after_s": 0.05}}])
    a = wait_for(lambda: (a := running.actor("crashy-0")) and a["state"] == "failed" and a, 30,
                 message="crashy failed")
    assert a["restarts"] == 4 and a["last_restart_reason"] == "exit"
    assert running.actor("dedupe-0")["state"] == "running"
    wait_for(lambda: any(e["event"] == "give_up" and e["actor"] == "crashy-0"
                         for e in running.admin_events()), 10, message="give_up event")


def test_crash_loop_with_on_give_up_shutdown_stops_with_nonzero_exit(run_supervisor, workdir):
    cfg = quiet_config(workdir, restart={"backoff_initial_s": 0.01, "backoff_max_s": 0.05,
                                         "max_restarts": 2, "period_s": 60,
                                         "on_give_up": "shutdown"})
    running = run_supervisor(cfg, extra_kinds=[
        {"name": "crashy", "class": CRASHING, "options": {"after_s": 0.05}}])
    assert running.wait_exit(60) == 1
    assert "crashy-0 gave up" in running.log_text()
    assert running.descendants() == []


def test_killing_the_supervisor_leaves_no_process_behind(run_supervisor, workdir):
    running = run_supervisor(quiet_config(workdir), extra_kinds=[{"name": "idle",
                                                                   "class": IDLE}])
    wait_for(running.all_running, 30, message="all running")
    family = running.descendants()
    assert len(family) >= 5  # the fork server and the actors
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait(5)
    killed_at = time.monotonic()
    _, alive = psutil.wait_procs(family, timeout=3.0 + 2.0)  # heartbeat_timeout_s + slack
    assert alive == [], [p.pid for p in alive]
    assert time.monotonic() - killed_at < 5.0


def test_a_fifth_actor_kind_is_one_table_entry_plus_its_module(run_supervisor, workdir):
    # tests/supervise.py adds {"name": "echo", ...} to actors.KINDS and nothing else.
    running = run_supervisor(quiet_config(workdir), extra_kinds=[
        {"name": "echo", "class": IDLE, "instances": 2, "max_rss_mb": 250}])
    wait_for(running.all_running, 30, message="all running")
    echoes = [a for a in running.status()["actors"] if a["kind"] == "echo"]
    assert [a["name"] for a in echoes] == ["echo-0", "echo-1"]
    assert all(a["max_rss_mb"] == 250 for a in echoes)
    # Started after the pipeline's kinds (its start rank is the last), supervised like them.
    started = [line for line in running.log_text().splitlines() if " started " in line]
    assert "echo-0" in started[-2] and "echo-1" in started[-1]
    os.kill(echoes[1]["pid"], signal.SIGKILL)
    wait_for(restarted(running, "echo-1", "exit"), 30, message="echo-1 restarted")
    # Stopped with the sources, before the drain and the rest of the pipeline.
    running.cli("stop")
    assert running.wait_exit(60) == 0
    stopped = [line for line in running.log_text().splitlines() if " stopped (" in line]
    order = [s.split(" stopped (")[0].rsplit(" ", 1)[1] for s in stopped]
    assert set(order[:2]) == {"echo-0", "echo-1"} and order[-1] == "dedupe-0", order


def test_manual_restart_from_the_cli(run_supervisor, workdir):
    running = run_supervisor(quiet_config(workdir))
    wait_for(running.all_running, 30, message="all running")
    before = running.actor("llm-0")
    result = running.cli("restart", "llm-0")
    assert result.returncode == 0, result.stderr
    a = wait_for(restarted(running, "llm-0", "manual"), 30, message="manual restart")
    assert a["pid"] != before["pid"]
    bad = running.cli("restart", "nobody")
    assert bad.returncode == 1 and "no actor named 'nobody'" in bad.stderr


def test_systemd_gets_ready_watchdog_and_stopping(run_supervisor, workdir):
    path = str(workdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    running = run_supervisor(quiet_config(workdir),
                             env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    seen: list[str] = []

    def read_until(word: str) -> None:
        while not any(word in m for m in seen):
            seen.append(sock.recv(4096).decode())

    read_until("READY=1")
    read_until("WATCHDOG=1")
    running.cli("stop")
    read_until("STOPPING=1")
    assert running.wait_exit(60) == 0
    sock.close()


def test_prometheus_metrics_show_memory_up_and_restarts(run_supervisor, workdir):
    port = free_port()
    running = run_supervisor(quiet_config(workdir, metrics_port=port))
    wait_for(running.all_running, 30, message="all running")
    os.kill(running.actor("alert-0")["pid"], signal.SIGKILL)
    wait_for(restarted(running, "alert-0", "exit"), 30, message="alert restarted")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    text = wait_for(lambda: (t := scrape()) and 'catalyst_actor_up{actor="alert-0"} 1.0' in t
                    and t, 20, message="alert-0 up again in metrics")
    assert 'catalyst_actor_rss_bytes{actor="dedupe-0"}' in text
    assert 'catalyst_actor_restarts_total{actor="alert-0",reason="exit"} 1.0' in text


def test_report_draws_memory_with_restart_markers(run_supervisor, workdir):
    running = run_supervisor(quiet_config(workdir), extra_kinds=[
        {"name": "hog", "class": LEAKY, "max_rss_mb": 120, "options": {"mb_per_s": 80}}])
    wait_for(restarted(running, "hog-0", "memory"), 30, message="memory restart")
    live = running.cli("report", "-o", str(workdir / "live.png"))
    assert live.returncode == 0, live.stderr
    running.cli("stop")
    running.wait_exit(60)
    saved = running.cli("report", "-o", str(workdir / "saved.png"))
    assert saved.returncode == 0, saved.stderr
    for name in ("live.png", "saved.png"):
        data = (workdir / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000
