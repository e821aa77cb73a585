"""The operator console, against the real supervisor: its page in a real browser (Debian's
Chromium driven by Playwright), its probes, and what it refuses.

The browser tests write screenshots to test-artifacts/ (or $CATALYST_TEST_ARTIFACTS).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, base_config, free_port, read_jsonl, wait_for
from tests.test_pipeline import make_items

TOKEN = "test-console-token-0123456789"
CHROMIUM = os.environ.get("CATALYST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("CATALYST_TEST_ARTIFACTS", ROOT / "test-artifacts"))
WEBHOOK_SECRET = "s3cr3t-webhook-token-do-not-show"


def console_system(wire, run_supervisor, workdir, *, token: str | None = TOKEN,
                   items: list[dict] | None = None, extra_env: dict | None = None,
                   console: dict | None = None, discord: bool = False,
                   overrides: dict | None = None, sinks: list[dict] | None = None):
    """A running supervisor with its console on a free port; returns (running, port)."""
    feed_items = items if items is not None else make_items("cons", 6)
    feeds = [{"name": "alpha", "kind": "pr",
              "url": wire.serve_feed("/alpha.xml", lambda: feed_items)},
             {"name": "beta", "kind": "pr",
              "url": wire.serve_feed("/beta.xml", lambda: make_items("beta", 3))}]
    port = free_port()
    cfg = base_config(workdir, feeds, console={"port": port, "publish_interval_s": 0.2,
                                               **(console or {})}, **(overrides or {}))
    if discord:
        cfg["alerts"]["sinks"].append({"type": "discord", "webhook_url_env": "DISCORD_WEBHOOK_URL"})
    env = {"CATALYST_CONSOLE_TOKEN": token} if token else {}
    env.update(extra_env or {})
    if not token:  # the test process's own environment must not lend the console one
        env["CATALYST_CONSOLE_TOKEN"] = ""
    if sinks is not None:
        cfg["alerts"]["sinks"] = sinks
    running = run_supervisor(cfg, env=env)
    wait_for(lambda: get(port, "/ready")[0] == (200 if sinks is None else 503), 60,
             interval=0.2, message="the console answering /ready")
    return running, port


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict]:
    try:
        status, _, body = request(port, "GET", path, headers=headers)
    except OSError:
        return 0, {}
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"text": body.decode(errors="replace")}


def post(port: int, path: str, token: str | None = None, body: dict | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    h = {"Content-Type": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    status, _, raw = request(port, "POST", path, json.dumps(body or {}).encode(), h)
    return status, json.loads(raw)


# The browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright. Skipped where either is missing,
    except in CI, whose .ci/run installs both: there a missing browser is a failure."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[test]')")
    if not shutil.which(CHROMIUM):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which(CHROMIUM), args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-extensions", "--no-first-run"])
        yield b
        b.close()


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {reason}")
    pytest.skip(reason)


def actor_cell(page, actor: str, field: str) -> str:
    return page.locator(f'tr[data-actor="{actor}"] td[data-field="{field}"]').inner_text()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_page_shows_a_killed_actor_restart_and_its_reason_without_a_reload(
        browser, wire, run_supervisor, workdir):
    running, port = console_system(wire, run_supervisor, workdir)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector('tr[data-actor="llm-0"] td[data-field="state"]:text-is("running")',
                           timeout=20_000)
    page.wait_for_selector("#alerts li a", timeout=20_000)  # the feed's alerts arrived live
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    assert actor_cell(page, "llm-0", "restarts").startswith("0")
    old_pid = running.actor("llm-0")["pid"]

    os.kill(old_pid, signal.SIGKILL)

    page.wait_for_function(
        """() => {
            const row = document.querySelector('tr[data-actor="llm-0"]');
            return row && row.querySelector('[data-field="restarts"]').textContent.startsWith("1")
                && row.querySelector('[data-field="last-restart"]').textContent.includes("SIGKILL")
                && row.querySelector('[data-field="state"]').textContent === "running";
        }""", timeout=20_000)
    assert page.evaluate("window.__sameDocument") is True  # updated live, not reloaded
    assert actor_cell(page, "llm-0", "restarts") == "1 (exit 1)"
    assert actor_cell(page, "llm-0", "last-restart").startswith("exit · killed by SIGKILL")
    assert str(old_pid) not in page.locator('tr[data-actor="llm-0"]').inner_text()
    page.wait_for_selector('#admin li[data-event="restart"]', timeout=10_000)
    assert "llm-0 restarted: exit (killed by SIGKILL)" in page.locator("#admin").inner_text()
    path = screenshot(page, "console-restart.png")
    assert path.stat().st_size > 10_000
    assert errors == []
    page.close()


def test_an_action_without_the_token_is_refused_and_with_it_is_done(
        browser, wire, run_supervisor, workdir):
    running, port = console_system(wire, run_supervisor, workdir)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector('tr[data-actor="alert-0"] td[data-field="state"]:text-is("running")',
                           timeout=20_000)
    page.on("dialog", lambda dialog: dialog.accept())

    page.locator('tr[data-actor="alert-0"] button').click()  # no token given in this tab
    page.wait_for_selector("#notice.bad:not([hidden])", timeout=10_000)
    assert "refused (401)" in page.locator("#notice").inner_text()
    page.fill("#token", "not-the-token-at-all-000")
    page.click("#token-form button")
    page.locator('tr[data-actor="alert-0"] button').click()
    wait_for(lambda: "refused (403)" in page.locator("#notice").inner_text(), 10,
             message="a wrong token refused")
    assert running.actor("alert-0")["restarts"] == 0  # neither did anything
    screenshot(page, "console-refused.png")

    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.locator('tr[data-actor="alert-0"] button').click()
    page.wait_for_function(
        """() => document.querySelector('tr[data-actor="alert-0"] [data-field="restarts"]')
                 .textContent.startsWith("1 (manual 1)")""", timeout=20_000)
    assert running.actor("alert-0")["last_restart_reason"] == "manual"

    # Pause a feed from the page; the pause outlives a restart of the fetcher.
    page.locator('tr[data-feed="alpha"] button').click()
    page.wait_for_selector('tr[data-feed="alpha"] [data-field="status"]:text-is("paused")',
                           timeout=10_000)
    page.locator('tr[data-actor="fetcher-0"] button').click()
    page.wait_for_function(
        """() => document.querySelector('tr[data-actor="fetcher-0"] [data-field="restarts"]')
                 .textContent.startsWith("1 (manual 1)")""", timeout=20_000)
    page.wait_for_selector('tr[data-actor="fetcher-0"] td[data-field="state"]:text-is("running")',
                           timeout=20_000)
    hits = wire.hits.get("/alpha.xml", 0)
    beta = wire.hits.get("/beta.xml", 0)
    wait_for(lambda: wire.hits.get("/beta.xml", 0) >= beta + 3, 20,
             message="the other feed polled three more times")
    assert wire.hits.get("/alpha.xml", 0) == hits  # still paused after the restart
    assert page.locator('tr[data-feed="alpha"] [data-field="status"]').inner_text() == "paused"
    page.close()


def test_feed_titles_are_shown_as_text_never_run_as_markup(browser, wire, run_supervisor,
                                                           workdir):
    # Escaped twice in the feed, so the item's title really holds the markup as text
    # (actors/feeds/parse.py strips tags, then unescapes): the page must show it as text.
    hostile = [{"title": "&amp;lt;img src=x onerror=window.__owned=1&amp;gt;Acme (NASDAQ: ACME) "
                         "receives FDA approval &amp;lt;script&amp;gt;window.__owned=2"
                         "&amp;lt;/script&amp;gt;",
                "link": "https://news.example.com/acme/1", "summary": "FDA approval granted."}]
    running, port = console_system(wire, run_supervisor, workdir, items=hostile)
    title = wait_for(lambda: next((a["title"] for a in running.alerts()
                                   if a["source"] == "alpha"), None), 30,
                     message="the hostile item alerted")
    assert title.startswith("<img src=x onerror=window.__owned=1>")
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("() => document.querySelector('#alerts').textContent"
                           ".includes('receives FDA approval')", timeout=20_000)
    assert "<img src=x onerror=window.__owned=1>Acme" in page.locator("#alerts").inner_text()
    assert page.locator("#alerts img, #alerts script").count() == 0
    assert page.evaluate("window.__owned") is None
    page.close()


def test_dead_letters_are_listed_and_replayed_from_the_page(browser, wire, run_supervisor,
                                                            workdir):
    (workdir / "blocked").write_text("not a directory")  # every delivery fails
    running, port = console_system(
        wire, run_supervisor, workdir, items=make_items("dead", 2),
        overrides={"dedupe": {"lease_s": 0.3, "max_attempts": 2}},
        sinks=[{"type": "jsonl", "path": "blocked/alerts.jsonl"}])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"http://127.0.0.1:{port}/")
    # The beta feed's 3 items die too; the page lists them within its 10 s refresh.
    wait_for(lambda: page.locator("#dead-summary").inner_text().startswith("5 dead letter"),
             40, interval=0.5, message="5 dead letters on the page")
    assert "dead Corp0" in page.locator("#dead").inner_text()
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    (workdir / "blocked").unlink()  # the operator mends the sink, then replays
    page.locator("#replay-all").click()
    page.wait_for_selector("#notice:not(.bad):not([hidden])", timeout=10_000)
    assert '"replayed":5' in page.locator("#notice").inner_text().replace(" ", "")
    wait_for(lambda: len(read_jsonl(workdir / "blocked" / "alerts.jsonl")) >= 5, 30,
             message="the 5 replayed items delivered")
    assert running.actor("alert-0")["restarts"] == 0  # a sink it cannot open fails, not it
    wait_for(lambda: page.locator("#dead-summary").inner_text() == "none", 30, interval=0.5,
             message="no dead letters left on the page")
    page.close()


# Probes and refusals over plain HTTP ----------------------------------------------


def test_a_disabled_sink_makes_the_service_not_ready_and_says_which(wire, run_supervisor,
                                                                    workdir):
    from tests.fake_discord import FakeDiscord

    with FakeDiscord() as discord:
        good = discord.add_webhook()
        revoked = good.rsplit("/", 1)[0] + "/not-the-token"  # Discord answers 401: disabled
        running, port = console_system(wire, run_supervisor, workdir,
                                       overrides={"supervisor": {"drain_timeout_s": 1.0}},
                                       sinks=[{"type": "jsonl", "path": "alerts.jsonl"},
                                              {"type": "discord",
                                               "webhook_url_env": "DISCORD_WEBHOOK_URL"}],
                                       extra_env={"DISCORD_WEBHOOK_URL": revoked})
        status, ready = wait_for(
            lambda: (r := get(port, "/ready"))[0] == 503
            and any("is disabled" in reason for reason in r[1]["reasons"]) and r, 30,
            interval=0.2, message="/ready naming the disabled sink")
        assert [r for r in ready["reasons"] if "disabled" in r] == [
            next(f"sink {s['name']} is disabled" for s in get(port, "/api/snapshot")[1]["sinks"]
                 if s.get("disabled"))]
        assert "not-the-token" not in json.dumps(ready)


def test_health_ready_and_metrics_answer_probes(wire, run_supervisor, workdir):
    running, port = console_system(wire, run_supervisor, workdir)
    status, health = get(port, "/health")
    assert status == 200 and health["status"] == "ok" and health["loop_age_s"] < 5
    status, ready = get(port, "/ready")
    assert status == 200 and ready == {"ready": True, "reasons": [], "fetch_window_s": 60.0}
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b'catalyst_actor_up{actor="fetcher-0"} 1.0' in body

    # An actor that hangs (stopped: no heartbeats) makes the system not ready, named;
    # the supervisor kills and restarts it, and it is ready again.
    os.kill(running.actor("llm-0")["pid"], signal.SIGSTOP)
    wait_for(lambda: (r := get(port, "/ready"))[0] == 503
             and any(reason.startswith("llm-0 ") for reason in r[1]["reasons"]),
             30, interval=0.1, message="/ready 503 naming llm-0")
    assert get(port, "/health")[0] == 200  # the supervisor itself is alive
    wait_for(lambda: get(port, "/ready")[0] == 200, 30, interval=0.2,
             message="ready again after the restart")

    # A stopping supervisor is not ready: load balancers stop sending before it goes.
    running.proc.send_signal(signal.SIGTERM)
    seen = wait_for(lambda: (r := get(port, "/ready"))[0] in (503, 0) and r, 30, interval=0.05,
                    message="not ready while stopping")
    assert seen[0] == 0 or "the supervisor is stopping" in seen[1]["reasons"]
    assert running.wait_exit(60) == 0


def test_actions_are_refused_without_a_token_and_nothing_secret_is_shown(
        wire, run_supervisor, workdir):
    from tests.fake_discord import FakeDiscord

    with FakeDiscord() as discord:
        webhook = discord.add_webhook(token=WEBHOOK_SECRET)
        running, port = console_system(
            wire, run_supervisor, workdir, token=None, discord=True,
            extra_env={"DISCORD_WEBHOOK_URL": webhook, "GEMINI_API_KEY": "AIza-not-to-show"})
        for path in ("/api/actors/llm-0/restart", "/api/feeds/alpha/pause",
                     "/api/dead-letters/replay"):
            status, answer = post(port, path, token=TOKEN, body={"all": True})
            assert status == 403 and "CATALYST_CONSOLE_TOKEN" in answer["error"], (path, answer)
        assert running.actor("llm-0")["restarts"] == 0
        snapshot = get(port, "/api/snapshot")[1]
        assert snapshot["actions"] is False
        seen = b"".join(request(port, "GET", p)[2] for p in
                        ("/", "/api/snapshot", "/ready", "/health", "/metrics",
                         "/static/console.js", "/api/dead-letters"))
        assert any(sink["name"].startswith("discord") for sink in snapshot["sinks"])
        for secret in (WEBHOOK_SECRET, "AIza-not-to-show"):
            assert secret.encode() not in seen


def test_token_checks_and_request_bounds(wire, run_supervisor, workdir):
    running, port = console_system(wire, run_supervisor, workdir,
                                   console={"requests_per_s": 5})
    # 401 without the header, 403 with a wrong token, 403 cross-origin even with it.
    status, answer = post(port, "/api/actors/llm-0/restart")
    assert status == 401 and "bearer token" in answer["error"]
    assert post(port, "/api/actors/llm-0/restart", token="wrong-token-1234567890")[0] == 403
    assert post(port, "/api/actors/llm-0/restart", token=TOKEN,
                headers={"Origin": "http://evil.example"})[0] == 403
    # A DNS-rebinding page (a foreign Host) reads nothing.
    assert get(port, "/api/snapshot", headers={"Host": "evil.example"})[0] == 421
    # Bounded size: a body over the limit, a path over the limit.
    status, _, _ = request(port, "POST", "/api/dead-letters/replay", b"x" * 70_000,
                           {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert status == 413
    assert request(port, "GET", "/" + "a" * 3000)[0] == 414
    # Arguments are checked by the control channel: a clear error, nothing restarted.
    status, answer = post(port, "/api/actors/nobody-0/restart", token=TOKEN)
    assert status == 400 and "no actor named 'nobody-0'" in answer["error"]
    assert running.actor("llm-0")["restarts"] == 0
    # Bounded rate: a burst past requests_per_s x 2 s is answered 429 with Retry-After.
    answers = [request(port, "GET", "/health") for _ in range(30)]
    assert answers[0][0] == 200
    refused = [headers for status, headers, _ in answers if status == 429]
    assert refused and refused[0]["Retry-After"] == "1"
    wait_for(lambda: get(port, "/health")[0] == 200, 10, interval=0.3,
             message="the bucket refilled")
    assert running.all_running()


def test_idle_connections_cannot_starve_the_supervisor(wire, run_supervisor, workdir):
    running, port = console_system(wire, run_supervisor, workdir,
                                   console={"max_connections": 4, "max_streams": 2})
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        started = time.monotonic()
        status = running.status()  # the loop answers the CLI meanwhile
        assert status is not None and time.monotonic() - started < 2.0
        assert all(a["state"] == "running" for a in status["actors"])
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: get(port, "/health")[0] == 200, 20, interval=0.2,
             message="the console answering once the idle clients left")
    # Event streams are bounded too: the third live page is told to come back.
    streams = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(3)]
    try:
        answers = []  # kept: a response dropped would close its stream's socket
        for conn in streams:
            conn.request("GET", "/api/events")
            answers.append(conn.getresponse())
        assert [a.status for a in answers] == [200, 200, 503]
    finally:
        for conn in streams:
            conn.close()


def test_no_request_however_malformed_takes_the_console_down(wire, run_supervisor, workdir):
    """Hypothesis-made requests (methods, paths, headers, bodies; framing broken or not):
    each is answered or closed, and the console and the supervisor carry on."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    running, port = console_system(wire, run_supervisor, workdir,
                                   console={"requests_per_s": 10_000})
    token_line = f"Authorization: Bearer {TOKEN}\r\n".encode()
    line = st.binary(max_size=300).map(lambda b: b.replace(b"\r\n", b""))

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"\x00\xff", b""]),
           path=st.one_of(st.sampled_from([b"/", b"/api/events", b"/api/dead-letters/replay",
                                           b"/api/feeds/alpha/pause", b"/api/actors/x/restart",
                                           b"/api/dead-letters?limit=-1"]), line),
           headers=st.lists(line, max_size=6), with_token=st.booleans(),
           length=st.one_of(st.none(), st.integers(-5, 10**12), line),
           body=st.binary(max_size=2000))
    @example(method=b"GET", path=b"/api/events", headers=[], with_token=False, length=None,
             body=b"")  # a live stream, cut by the reader's deadline
    @example(method=b"POST", path=b"/api/dead-letters/replay", headers=[], with_token=True,
             length=10, body=b"{")  # a body shorter than it says
    def one(method, path, headers, with_token, length, body):
        raw = method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        raw += b"".join(h + b"\r\n" for h in headers)
        if with_token:
            raw += token_line
        if length is not None:
            raw += b"Content-Length: " + (str(length).encode() if isinstance(length, int)
                                          else length) + b"\r\n"
        raw += b"\r\n" + body
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            # Read the answer until the server closes, or for at most 3 s: an event stream
            # (any path the router takes for one) goes on sending and is cut here.
            ends = time.monotonic() + 3.0
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                while (left := ends - time.monotonic()) > 0:
                    s.settimeout(left)
                    if not s.recv(65536):
                        break
            except OSError:
                pass  # closed or reset on us, or cut at the deadline: all allowed

    one()
    assert get(port, "/health")[0] == 200
    assert running.all_running()
    assert all(a["restarts"] == 0 for a in running.status()["actors"])
