// The console page: renders the supervisor's published snapshot, live.
// Every value from the server is put in the page as text (textContent), never as HTML:
// feed titles and error messages come from the outside world.
"use strict";

const TOKEN_KEY = "catalyst-console-token";
const DEAD_REFRESH_MS = 10000;
let snapshot = null;
let deadLoadedAt = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return `${(seconds * 1000).toFixed(0)} ms`;
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function since(wall) {
  if (!wall) return "—";
  return ago(Math.max(0, Date.now() / 1000 - wall)) + " ago";
}

function clock(wall) {
  return wall ? new Date(wall * 1000).toLocaleTimeString() : "";
}

function sparkline(points, limit) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 120, h = 24;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const top = Math.max(limit || 0, ...points, 1);
  const y = (v) => (h - 1 - (v / top) * (h - 2)).toFixed(1);
  if (limit) {
    const line = document.createElementNS(NS, "line");
    line.setAttribute("x1", 0); line.setAttribute("x2", w);
    line.setAttribute("y1", y(limit)); line.setAttribute("y2", y(limit));
    svg.append(line);
  }
  if (points.length > 1) {
    const step = w / (points.length - 1);
    const poly = document.createElementNS(NS, "polyline");
    poly.setAttribute("points", points.map((v, i) => `${(i * step).toFixed(1)},${y(v)}`).join(" "));
    svg.append(poly);
  }
  return svg;
}

function stateClass(state) {
  return {running: "ok", starting: "warn", backoff: "warn", stopping: "warn",
          failed: "bad", stopped: "muted"}[state] || "";
}

// Actions ------------------------------------------------------------------

function notice(text, bad) {
  const p = document.getElementById("notice");
  p.textContent = text;
  p.className = bad ? "notice bad" : "notice";
  p.hidden = !text;
}

async function act(path, body) {
  const headers = {"Content-Type": "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = `Bearer ${token}`;
  try {
    const res = await fetch(path, {method: "POST", headers, body: JSON.stringify(body || {})});
    const answer = await res.json().catch(() => ({}));
    if (res.ok) notice(`${path}: done ${JSON.stringify(answer.result)}`, false);
    else notice(`${path}: refused (${res.status}): ${answer.error || res.statusText}`, true);
    deadLoadedAt = 0;
    return res.status;
  } catch (err) {
    notice(`${path}: ${err}`, true);
    return 0;
  }
}

function actionButton(label, path, body, confirmText) {
  const b = el("button", {type: "button", class: "action", textContent: label});
  b.addEventListener("click", () => {
    if (!confirmText || window.confirm(confirmText)) act(path, body);
  });
  return b;
}

// Rendering ----------------------------------------------------------------

function renderActors(actors) {
  fill(document.querySelector("#actors tbody"), actors.map((a) => {
    const last = a.recent_restarts.length ? a.recent_restarts[a.recent_restarts.length - 1] : null;
    const reasons = Object.entries(a.restarts_by_reason).filter(([, n]) => n > 0)
      .map(([r, n]) => `${r} ${n}`).join(", ");
    const memory = el("td", {},
      sparkline(a.memory_mb, a.max_rss_mb), " ",
      a.anon_mb === null ? "—" : `${a.anon_mb.toFixed(0)} / ${a.max_rss_mb.toFixed(0)} MB`);
    return el("tr", {"data-actor": a.name},
      el("td", {}, a.name),
      el("td", {class: stateClass(a.state), "data-field": "state"}, a.state),
      el("td", {class: "num"}, a.pid ?? "—"),
      el("td", {class: "num"}, ago(a.heartbeat_age_s)),
      el("td", {class: "num"}, ago(a.uptime_s)),
      memory,
      el("td", {"data-field": "restarts"}, a.restarts, reasons ? ` (${reasons})` : ""),
      el("td", {"data-field": "last-restart"},
        last ? `${last.reason} · ${a.last_exit || ""} · ${since(last.at)}` : "—"),
      el("td", {}, actionButton("Restart", `/api/actors/${encodeURIComponent(a.name)}/restart`,
                                null, `Restart ${a.name}?`)));
  }));
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v, cls]) => [el("dt", {}, k),
                                                         el("dd", {class: cls || ""}, v)]));
}

function renderLedger(s) {
  const l = s.ledger;
  facts(document.getElementById("ledger"), [
    ["pending in the ledger", l.pending ?? "—"],
    ["live keys", l.live_keys ?? "—"],
    ["store", l.store ?? "—", l.store === "ok" ? "ok" : "bad"],
    ["dead-lettered (since start)", l.dead_lettered],
    ["redelivered (since start)", l.redelivered],
  ]);
  fill(document.querySelector("#queues tbody"), s.queues.map((q) =>
    el("tr", {}, el("td", {}, `${q.from} → ${q.to}`), el("td", {class: "num"}, q.depth),
       el("td", {class: "muted"}, q.meaning))));
}

function renderLlm(llm) {
  const share = llm.budget_usd ? llm.spent_usd_today / llm.budget_usd : 0;
  facts(document.getElementById("llm"), [
    ["provider", llm.provider],
    ["spent today (UTC)", `$${llm.spent_usd_today.toFixed(4)} of $${llm.budget_usd.toFixed(2)}`,
     share >= 1 ? "bad" : share >= 0.8 ? "warn" : "ok"],
    ["model in use", llm.models_in_use.join(", ") || "—"],
    ["breaker", llm.breaker.join(", ") || "—",
     llm.breaker.some((b) => b !== "closed") ? "warn" : ""],
    ["fallbacks to keywords", llm.fallbacks],
    ["usage store", llm.usage_store.join(", ") || "—"],
    ["feeds at their spend cap", llm.feeds_at_cap.join(", ") || "none"],
  ]);
}

function renderFeeds(feeds) {
  fill(document.querySelector("#feeds tbody"), feeds.map((f) => {
    const elsewhere = f.leased_here === false;  // several hosts: another one polls it
    const status = f.paused ? "paused" : elsewhere ? "polled by another host" :
      f.polling ? "polling" : (f.last_status || "—");
    const cls = f.paused ? "warn" : elsewhere ? "muted" : f.last_status === "error" ? "bad" :
      f.stale ? "warn" : "ok";
    const err = f.last_error ? `${f.last_error} (${since(f.last_error_at)})` : "—";
    const verb = f.paused ? "resume" : "pause";
    return el("tr", {"data-feed": f.name},
      el("td", {}, f.name),
      el("td", {class: cls, "data-field": "status"}, status, f.stale ? " · stale" : ""),
      el("td", {}, since(f.last_success_at)),
      el("td", {class: f.last_error ? "bad" : "muted", title: err}, err.slice(0, 80)),
      el("td", {class: "num"}, f.items_total ?? 0),
      el("td", {class: f.breaker === "closed" ? "" : "warn"}, f.breaker || "—"),
      el("td", {class: "num"}, f.paused ? "—" : ago(f.next_poll_in_s)),
      el("td", {}, actionButton(verb[0].toUpperCase() + verb.slice(1),
                                `/api/feeds/${encodeURIComponent(f.name)}/${verb}`)));
  }));
}

function renderSinks(sinks) {
  fill(document.querySelector("#sinks tbody"), sinks.map((s) => {
    let headroom = "—";
    if (s.limit !== undefined) headroom = `${s.remaining} of ${s.limit} (resets in ${ago(s.reset_in_s)})`;
    if (s.global_wait_s) headroom += ` · global wait ${ago(s.global_wait_s)}`;
    return el("tr", {"data-sink": s.name},
      el("td", {}, s.name), el("td", {class: "num"}, s.backlog ?? 0), el("td", {}, headroom),
      el("td", {class: s.disabled ? "bad" : "ok"}, s.disabled ? "disabled" : "ok"));
  }));
}

function renderAlerts(alerts) {
  const list = document.getElementById("alerts");
  if (!alerts.length) { list.replaceChildren(el("li", {class: "muted"}, "none yet")); return; }
  list.replaceChildren(...alerts.map((a) => {
    const link = /^https?:\/\//.test(a.link || "") ?
      el("a", {href: a.link, rel: "noopener noreferrer", target: "_blank"}, a.title) : a.title;
    const score = typeof a.score === "number" ? ` · ${a.score.toFixed(2)}` : "";
    return el("li", {}, el("span", {class: "when"}, clock(a.alerted_at)),
              (a.tickers || []).join(" ") + " ", link,
              el("span", {class: "muted"}, ` · ${a.source}${a.form ? " " + a.form : ""}` +
                 `${a.category ? " · " + a.category : ""}${score}`));
  }));
}

function renderAdmin(events) {
  const list = document.getElementById("admin");
  if (!events.length) { list.replaceChildren(el("li", {class: "muted"}, "none")); return; }
  list.replaceChildren(...events.map((e) => el("li", {"data-event": e.event},
    el("span", {class: "when"}, clock(e.at)),
    el("span", {class: e.level === "error" ? "bad" : e.level === "warning" ? "warn" : ""},
       `${e.event} · ${e.actor} `), e.message)));
}

function renderHeader(s) {
  const r = s.readiness;
  const ready = document.getElementById("ready");
  ready.textContent = r.ready ? "ready" : `not ready: ${r.reasons.join("; ")}`;
  ready.className = r.ready ? "badge ok" : "badge warn";
  document.getElementById("supervisor").textContent =
    `${s.supervisor.host} · supervisor pid ${s.supervisor.pid} · ${s.supervisor.state} · ` +
    `up ${ago(s.supervisor.uptime_s)} · runs ${s.supervisor.roles.join(", ")}`;
  document.body.classList.toggle("read-only", !s.actions);
}

async function loadDeadLetters() {
  deadLoadedAt = Date.now();
  const summary = document.getElementById("dead-summary");
  try {
    const res = await fetch("/api/dead-letters?limit=10");
    const answer = await res.json();
    if (!res.ok) { summary.textContent = answer.error || res.statusText; return; }
    const {total, dead_letters: letters} = answer.result;
    summary.textContent = total ? `${total} dead letter(s); the newest:` : "none";
    document.getElementById("dead").replaceChildren(...letters.map((d) =>
      el("li", {}, el("span", {class: "when"}, clock(d.died_at)), d.title || d.key,
         el("span", {class: "muted"}, ` · ${d.source} · ${d.attempts} attempts`))));
  } catch (err) {
    summary.textContent = `could not load: ${err}`;
  }
}

function render(s) {
  snapshot = s;
  renderHeader(s);
  renderActors(s.actors);
  renderLedger(s);
  renderLlm(s.llm);
  renderFeeds(s.feeds);
  renderSinks(s.sinks);
  renderAlerts(s.alerts);
  renderAdmin(s.admin);
  if (Date.now() - deadLoadedAt > DEAD_REFRESH_MS) loadDeadLetters();
}

// Live updates: server-sent events; the browser reconnects by itself. -------

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/api/events");
  source.onopen = () => { link.textContent = "live"; link.className = "badge ok"; };
  source.onerror = () => { link.textContent = "reconnecting…"; link.className = "badge bad"; };
  source.onmessage = (event) => {
    try { render(JSON.parse(event.data)); } catch (err) { notice(`bad update: ${err}`, true); }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    notice(sessionStorage.getItem(TOKEN_KEY) ? "token set for this tab" : "token cleared", false);
  });
  document.getElementById("replay-all").addEventListener("click", () => {
    if (window.confirm("Replay every dead letter?")) act("/api/dead-letters/replay", {all: true});
  });
  connect();
});
