"""A loopback stand-in for Gemini's generateContent REST endpoint, scriptable per test.

It answers ``POST /{api_version}/models/{model}:generateContent`` with the real response
shape (candidates[0].content.parts[0].text, usageMetadata, modelVersion), classifying
each item of the request itself so answers are deterministic. It reads the request the
way the prompt defines it: the fence named in the system instruction, and each item in
its own fenced block (a request it cannot read so is refused with 400). Every request is
kept in ``requests`` (its ids, items and the prompt text) for tests to inspect.

A test scripts what comes next: ``fake.script("429", "429", "ok")`` queues one-shot
behaviours; ``fake.mode`` is what happens when the queue is empty. Behaviours:

    ok          a valid answer for every item
    429         RESOURCE_EXHAUSTED, a google.rpc.RetryInfo body and Retry-After
    500, 503    INTERNAL / UNAVAILABLE
    400         INVALID_ARGUMENT (asking again will not help)
    garbage     prose instead of JSON
    truncated   the JSON cut in half, finishReason MAX_TOKENS
    off_schema  JSON with a category outside the enum and a score of 7
    drop_last   a valid answer missing its last result
    wrong_ids   every result under an id the request does not have
    swapped     each result under the next item's id (answers crossed between items)
    hang        no answer until ``hang_s`` has passed (past the client's timeout)

The fake can also play a model that obeys prompt injection, to prove the defences hold:
``fake.obey(trigger, how, fields)``: whenever a block's text contains ``trigger``, the
results of every OTHER block of that request are changed. how="overwrite" merges
``fields`` into them; "duplicate" puts a forged result with ``fields`` merged under each
of their ids ahead of the real one; "tickers" gives them the injecting block's own
tickers and merges ``fields``.

It never reaches the internet: it binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):generateContent$")
_FENCE = re.compile(r"This request's fence is ([0-9a-f]+)")
_TICKER = re.compile(r"\((?:NASDAQ|NYSE|NYSE American|OTC)\s*:\s*([A-Z][A-Z0-9.]{0,7})\)")


def fake_analysis(block_id: str, item: dict) -> dict:
    """What the fake model says of an item: keyed on words, so tests know what to expect."""
    title = item.get("title", "")
    lower = title.lower()
    if "fda" in lower:
        category, score, sentiment = "fda_approval", 0.92, 0.8
    elif "acquire" in lower:
        category, score, sentiment = "merger_acquisition", 0.85, 0.6
    elif "offering" in lower:
        category, score, sentiment = "offering_dilution", 0.75, -0.6
    else:
        category, score, sentiment = "earnings_guidance", 0.66, 0.2
    tickers = _TICKER.findall(title) or item.get("tickers", [])
    return {"id": block_id, "tickers": tickers, "category": category, "sentiment": sentiment,
            "score": score, "summary": f"fake-gemini: {title[:200]}", "keywords": ["fake"],
            "material": score >= 0.7}


class FakeGemini:
    def __init__(self, api_version: str = "v1beta", expected_key: str | None = None):
        self.api_version = api_version
        self.expected_key = expected_key
        self.mode = "ok"
        self.latency_s = 0.0
        self.hang_s = 5.0
        self.retry_after = "0"  # seconds, as the Retry-After header of a 429
        self.tokens: tuple[int, int] | None = None  # fixed (prompt, candidates) per call
        self.lock = threading.Lock()
        self.queue: collections.deque[str] = collections.deque()
        self.calls: collections.Counter[str] = collections.Counter()  # by model
        self.outcomes: collections.Counter[str] = collections.Counter()  # by behaviour
        self.item_calls: collections.Counter[str] = collections.Counter()  # by item title
        self.keys_seen: set[str] = set()
        self.urls_seen: set[str] = set()
        self.last_body: dict | None = None
        # Each request read: model, fence, ids, items, blocks, system, text (the last 10,000).
        self.requests: collections.deque[dict] = collections.deque(maxlen=10_000)
        self.injections: list[tuple[str, str, dict]] = []  # (trigger, how, fields)
        self.in_flight = 0
        self.max_in_flight = 0
        self.released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers, then body, meet delayed ACKs

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                with fake.lock:
                    stats = {"calls": dict(fake.calls), "max_in_flight": fake.max_in_flight}
                fake._send(self, 200 if self.path == "/stats" else 404, stats)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    # Scripting ---------------------------------------------------------------

    def script(self, *behaviours: str) -> None:
        with self.lock:
            self.queue.extend(behaviours)

    def obey(self, trigger: str, how: str = "overwrite", fields: dict | None = None) -> None:
        """Plays a model that obeys a block containing ``trigger`` (see the docstring)."""
        assert how in ("overwrite", "duplicate", "tickers")
        with self.lock:
            self.injections.append((trigger, how, dict(fields or {})))

    @property
    def total_calls(self) -> int:
        with self.lock:
            return sum(self.calls.values())

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # Serving -----------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        match = _PATH.match(h.path.split("?")[0])
        if not match or match["version"] != self.api_version:
            return self._send(h, 404, {"error": {"code": 404, "message": f"no {h.path}",
                                                 "status": "NOT_FOUND"}})
        model = match["model"]
        try:
            body = json.loads(raw)
            system = body["systemInstruction"]["parts"][0]["text"]
            text = body["contents"][0]["parts"][0]["text"]
            fence = _FENCE.search(system)[1]
            ids, items, blocks = _read_blocks(text, fence)
        except (ValueError, KeyError, IndexError, TypeError):
            return self._send(h, 400, _error(400, "INVALID_ARGUMENT", "unreadable request"))
        key = h.headers.get("x-goog-api-key", "")
        with self.lock:
            self.calls[model] += 1
            self.keys_seen.add(key)
            self.urls_seen.add(h.path)
            self.last_body = body
            self.requests.append({"model": model, "fence": fence, "ids": ids, "items": items,
                                  "blocks": blocks, "system": system, "text": text})
            injections = list(self.injections)
            for item in items:
                self.item_calls[item.get("title", "")] += 1
            behaviour = self.queue.popleft() if self.queue else self.mode
            self.outcomes[behaviour] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                time.sleep(self.latency_s)
            if self.expected_key is not None and key != self.expected_key:
                return self._send(h, 400, _error(400, "INVALID_ARGUMENT",
                                                 "API key not valid. Please pass a valid API key."))
            self._behave(h, behaviour, model, ids, items, blocks, body, injections)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _behave(self, h, behaviour: str, model: str, ids: list[str], items: list[dict],
                blocks: list[str], body: dict, injections: list) -> None:
        if behaviour == "hang":
            self.released.wait(self.hang_s)
            behaviour = "ok"
        if behaviour == "429":
            err = _error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted "
                         "(e.g. check quota).")
            err["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                        "retryDelay": f"{self.retry_after}s"}]
            return self._send(h, 429, err, {"Retry-After": self.retry_after})
        if behaviour == "500":
            return self._send(h, 500, _error(500, "INTERNAL", "Internal error encountered."))
        if behaviour == "503":
            return self._send(h, 503, _error(503, "UNAVAILABLE",
                                             "The model is overloaded. Please try again later."))
        if behaviour == "400":
            return self._send(h, 400, _error(400, "INVALID_ARGUMENT", "Invalid argument."))
        results = [fake_analysis(block_id, it) for block_id, it in zip(ids, items)]
        results = _obey(results, blocks, injections)
        finish = "STOP"
        if behaviour == "garbage":
            text = "Sure! These headlines look quite bullish to me overall."
        elif behaviour == "off_schema":
            text = json.dumps({"results": [{**r, "category": "moon_landing", "score": 7}
                                           for r in results]})
        elif behaviour == "truncated":
            full = json.dumps({"results": results})
            text, finish = full[:len(full) // 2], "MAX_TOKENS"
        elif behaviour == "drop_last":
            text = json.dumps({"results": results[:-1]})
        elif behaviour == "wrong_ids":
            text = json.dumps({"results": [{**r, "id": f"x{r['id']}"} for r in results]})
        elif behaviour == "swapped":
            text = json.dumps({"results": [{**r, "id": ids[(i + 1) % len(ids)]}
                                           for i, r in enumerate(results)]})
        else:
            text = json.dumps({"results": results})
        prompt_tokens, out_tokens = self.tokens or (len(json.dumps(body)) // 4, len(text) // 4)
        self._send(h, 200, {
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                            "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt_tokens,
                              "candidatesTokenCount": out_tokens,
                              "totalTokenCount": prompt_tokens + out_tokens},
            "modelVersion": model, "responseId": f"fake-{time.monotonic_ns()}"})

    @staticmethod
    def _send(h, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; charset=UTF-8")
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing to answer


def _read_blocks(text: str, fence: str) -> tuple[list[str], list[dict], list[str]]:
    """The ids, items and raw contents of the fenced blocks, in order; ValueError when the
    text between fences is anything but one JSON object a block."""
    f = re.escape(fence)
    block = re.compile(rf"^<<<ITEM id=(\w+) fence={f}>>>\n(.*)\n<<<END id=\1 fence={f}>>>$",
                       re.MULTILINE)
    ids, items, raws = [], [], []
    for match in block.finditer(text):
        ids.append(match[1])
        raws.append(match[2])
        items.append(json.loads(match[2]))
    if not ids or len(set(ids)) != len(ids):
        raise ValueError("no blocks, or an id twice")
    return ids, items, raws


def _obey(results: list[dict], blocks: list[str], injections: list) -> list[dict]:
    """What a model that obeys the injections found in the blocks would answer."""
    out = [dict(r) for r in results]
    extra = []
    for trigger, how, fields in injections:
        for source, text in enumerate(blocks):
            if trigger.lower() not in text.lower():
                continue
            for i, r in enumerate(out):
                if i == source:
                    continue
                if how == "overwrite":
                    r.update(fields)
                elif how == "duplicate":
                    extra.append({**r, **fields})
                elif how == "tickers":
                    r.update(fields, tickers=list(results[source]["tickers"]))
    return extra + out


def _error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}


def main() -> None:
    """Serves in its own process (for benchmarks): prints the base URL, then serves until
    stdin closes. ``GET /stats`` answers the call counts as JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args()
    fake = FakeGemini()
    fake.latency_s = args.latency
    print(fake.base_url, flush=True)
    sys.stdin.read()
    fake.close()


if __name__ == "__main__":
    main()
