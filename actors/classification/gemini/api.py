"""Blocking Gemini calls through google-genai, run on the llm actor's worker threads.

GeminiAPI makes one generateContent request for a batch of items (structured JSON output
through the response schema of actors.classification.gemini.prompt, item text fenced as
data) and checks the answer item by item against the request, with the usage metadata it
was billed for. GeminiCaller wraps it in the retry policy: 429, 5xx, timeouts and lost
connections are retried with backoff (a 429's Retry-After wins and pauses the shared rate
limiter), a garbage, truncated or off-schema answer is asked again once for the items it
got wrong, and a batch whose answer looks steered by one of its items is asked again one
item a request. The SDK's own retries are off, so ours are the only ones.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from actors.classification.gemini.prompt import (
    SYSTEM_TEMPLATE,
    Prompt,
    build_prompt,
    parse_answer,
    response_schema,
)
from actors.classification.gemini.rate_limit import RateLimiter, backoff_s
from actors.classification.gemini.usage import CHARS_PER_TOKEN, Usage
from actors.errors import CatalystError
from actors.protocol import Analysis, Item

if TYPE_CHECKING:
    from catalyst_config import LLMConfig

log = logging.getLogger("catalyst.llm")


def _transport_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeouts, other transport failures) of whichever httpx the SDK runs on."""
    timeouts: list[type] = []
    transport: list[type] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transport.append(module.TransportError)
    return tuple(timeouts), tuple(transport)


_TIMEOUTS, _TRANSPORT = _transport_errors()


class ModelError(CatalystError):
    """A model call failed; ``reason`` is the fallback reason it leads to."""

    reason = "error"


class ModelUnavailable(ModelError):
    """429, 5xx, a timeout or no connection: worth retrying after a pause."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(message)


class ModelRejected(ModelError):
    """A 4xx other than 429 (bad key, bad request): asking again will not help."""

    reason = "rejected"


# One call ---------------------------------------------------------------------------


@dataclass
class Reply:
    """One answered request: analyses by batch position, and the positions it got wrong."""

    analyses: dict[int, Analysis]
    invalid: list[int]
    usage: Usage
    problem: str = ""
    steered: bool = False  # the answer shows cross-item signs: ask one item a request
    in_weights: list[int] = field(default_factory=list)  # by position: input token share
    out_weights: list[int] = field(default_factory=list)  # by position: output token share


class GeminiAPI:
    """One google-genai client, shared by the worker threads (its httpx client is).

    The client is made on first use, on a worker thread: building it (TLS context,
    pydantic models) takes ~0.1 s that the actor's start should not wait for.
    """

    def __init__(self, llm: LLMConfig, api_key: str):
        self.llm = llm
        self._api_key = api_key
        self._client: genai.Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> genai.Client:
        with self._lock:
            if self._client is None:
                options = types.HttpOptions(
                    base_url=self.llm.base_url, api_version=self.llm.api_version,
                    timeout=max(1, int(self.llm.timeout_s * 1000)),  # milliseconds
                    retry_options=types.HttpRetryOptions(attempts=1))  # ours, not the SDK's
                self._client = genai.Client(api_key=self._api_key, vertexai=False,
                                            http_options=options)
                for name in ("httpx", "httpx2"):  # one INFO line per request is noise
                    logging.getLogger(name).setLevel(logging.WARNING)
            return self._client

    def warm_up(self) -> None:
        """Builds the client and the request types ahead of the first item."""
        self.client
        self._config(SYSTEM_TEMPLATE, ["000000"])

    def _config(self, system: str, ids: list[str]) -> types.GenerateContentConfig:
        thinking = (types.ThinkingConfig(thinking_budget=self.llm.thinking_budget)
                    if self.llm.thinking_budget is not None else None)
        return types.GenerateContentConfig(
            system_instruction=system, temperature=0.0,
            response_mime_type="application/json", response_schema=response_schema(ids),
            max_output_tokens=self.llm.max_output_tokens_per_item * len(ids),
            thinking_config=thinking, candidate_count=1,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))

    def generate(self, model: str, items: list[Item]) -> Reply:
        prompt = build_prompt(items, self.llm.max_input_chars)
        config = self._config(prompt.system, prompt.ids)
        try:
            response = self.client.models.generate_content(model=model, contents=prompt.text,
                                                           config=config)
        except Exception as exc:  # the SDK raises several families; sorted here
            raise _model_error(exc) from None
        text = _text_of(response)
        usage = _usage_of(model, response, prompt, text)
        parsed = parse_answer(text, prompt)
        problem = parsed.problem
        if problem:
            finish = _finish_reason(response)
            problem = f"{problem} (finish reason {finish})" if finish else problem
        out_weights = [parsed.answer_chars.get(pos, 0) for pos in range(len(items))]
        return Reply(parsed.analyses, parsed.invalid, usage, problem, parsed.steered,
                     prompt.weights, out_weights)

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing is best effort at teardown
                pass


def _model_error(exc: Exception) -> ModelError:
    if isinstance(exc, genai_errors.APIError):
        detail = f"HTTP {exc.code} {exc.status or ''}: {str(exc.message or '')[:200]}"
        if exc.code == 429:
            return ModelUnavailable("rate_limited", detail, _retry_after(exc))
        if exc.code == 408 or exc.code >= 500:
            return ModelUnavailable("unavailable", detail)
        return ModelRejected(detail)
    if isinstance(exc, _TIMEOUTS):
        return ModelUnavailable("timeout", f"no answer in time ({type(exc).__name__})")
    if isinstance(exc, _TRANSPORT):
        return ModelUnavailable("unavailable", f"connection failed ({type(exc).__name__})")
    if isinstance(exc, (genai_errors.UnknownApiResponseError, ValueError)):
        return ModelUnavailable("unavailable", f"unreadable response ({type(exc).__name__})")
    return ModelUnavailable("unavailable", f"{type(exc).__name__}")


def _retry_after(exc: genai_errors.APIError) -> float | None:
    """Seconds from a Retry-After header, or a google.rpc.RetryInfo retryDelay ("12s")."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        if value is not None:
            return max(0.0, float(value))
    except ValueError:
        pass  # an HTTP date: rare from Google; the details or our backoff decide
    details = exc.details.get("error", {}).get("details", []) \
        if isinstance(exc.details, dict) else []
    for d in details if isinstance(details, list) else []:
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                pass
    return None


def _text_of(response) -> str:
    try:
        parts = response.candidates[0].content.parts or []
    except (AttributeError, IndexError, TypeError):
        return ""
    return "".join(p.text for p in parts if getattr(p, "text", None) and not p.thought)


def _finish_reason(response) -> str:
    try:
        reason = response.candidates[0].finish_reason
    except (AttributeError, IndexError, TypeError):
        return ""
    return getattr(reason, "value", str(reason or ""))


def _usage_of(model: str, response, prompt: Prompt, text: str) -> Usage:
    meta = getattr(response, "usage_metadata", None)
    tokens_in = getattr(meta, "prompt_token_count", None)
    if meta is None or tokens_in is None:
        # Never a cost of $0: without metadata (a proxy that strips it) estimate by length.
        return Usage(model, (len(prompt.system) + len(prompt.text)) // CHARS_PER_TOKEN,
                     len(text) // CHARS_PER_TOKEN + 1, estimated=True)
    tokens_out = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return Usage(model, int(tokens_in), int(tokens_out))


# The retry policy -----------------------------------------------------------------


@dataclass
class Share:
    """One call's usage and how it splits over the job's items (by job position): input
    tokens by the characters of each item's block, output tokens by the characters of
    each item's answer (evenly when the answer named none)."""

    usage: Usage
    in_weights: dict[int, int]
    out_weights: dict[int, int]


@dataclass
class Outcome:
    """What one job (a batch of items) came to, after retries."""

    model: str
    analyses: dict[int, Analysis] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)  # position -> fallback reason
    usages: list[Usage] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)  # the same calls, split by item
    counts: collections.Counter = field(default_factory=collections.Counter)
    api_failed: bool = False  # the API itself failed (the breaker counts this)
    error: str = ""


class GeminiCaller:
    """Runs one job on a worker thread: the call, its retries, the answer's retry."""

    def __init__(self, api: GeminiAPI, limiter: RateLimiter, llm: LLMConfig, stop: threading.Event):
        self.api = api
        self.limiter = limiter
        self.llm = llm
        self.stop = stop

    def run(self, model: str, items: list[Item]) -> Outcome:
        """The first request's rate token was taken by the dispatcher; retries take theirs.

        Work is a queue of requests, each (job positions, invalid-answer retries left). A
        garbage or partial answer asks again for the items it got wrong; an answer that
        looks steered keeps nothing and asks again for every item, one a request.
        """
        out = Outcome(model)
        requests = collections.deque([(list(range(len(items))),
                                       self.llm.invalid_answer_retries)])
        transient_left = self.llm.max_retries
        first = True
        while requests:
            todo, invalid_left = requests[0]
            if not first and not self.limiter.acquire(self.llm.retry_backoff_max_s, self.stop):
                self._fail_all(out, requests, "rate_limited",
                               "no request slot within the backoff limit")
                break
            first = False
            out.counts["calls"] += 1
            try:
                reply = self.api.generate(model, [items[i] for i in todo])
            except ModelUnavailable as exc:
                out.counts[f"api_{exc.reason}"] += 1
                wait = exc.retry_after if exc.retry_after is not None else backoff_s(
                    self.llm.max_retries - transient_left + 1, self.llm.retry_backoff_initial_s,
                    self.llm.retry_backoff_max_s)
                if exc.reason == "rate_limited":
                    self.limiter.pause(min(wait, self.llm.retry_backoff_max_s))
                if transient_left == 0 or wait > self.llm.retry_backoff_max_s:
                    self._fail_all(out, requests, exc.reason, str(exc), api_failed=True)
                    break
                transient_left -= 1
                out.counts["retries"] += 1
                if self.stop.wait(wait):
                    self._fail_all(out, requests, "stopping", "the actor is stopping")
                    break
                continue
            except ModelRejected as exc:
                out.counts["api_rejected"] += 1
                self._fail_all(out, requests, "rejected", str(exc), api_failed=True)
                break
            requests.popleft()
            out.usages.append(reply.usage)
            out.shares.append(Share(reply.usage, dict(zip(todo, reply.in_weights)),
                                    dict(zip(todo, reply.out_weights))))
            out.counts["usage_estimated"] += reply.usage.estimated
            if reply.steered:
                # One item may have steered the others' answers, even those that passed
                # every check (a score is not checkable): nothing of it is kept.
                out.counts["steered_batches"] += 1
                log.warning("gemini answer for %d items looks steered (%s); asking again "
                            "one item a request", len(todo), reply.problem)
                requests.extend(([pos], invalid_left) for pos in todo)
                continue
            for pos, analysis in reply.analyses.items():
                out.analyses[todo[pos]] = analysis
            if not reply.invalid:
                continue
            out.counts["invalid_answers"] += 1
            bad = [todo[pos] for pos in reply.invalid]
            if invalid_left == 0:
                self._fail(out, bad, "invalid_answer", reply.problem)
                continue
            out.counts["invalid_retries"] += 1
            log.info("gemini answer invalid for %d of %d items (%s); asking again",
                     len(bad), len(todo), reply.problem)
            requests.appendleft((bad, invalid_left - 1))
        return out

    @classmethod
    def _fail_all(cls, out: Outcome, requests: collections.deque, reason: str, error: str,
                  api_failed: bool = False) -> None:
        """Every item still to ask falls back for this reason."""
        for positions, _ in requests:
            cls._fail(out, positions, reason, error, api_failed)
        requests.clear()

    @staticmethod
    def _fail(out: Outcome, positions: list[int], reason: str, error: str,
              api_failed: bool = False) -> None:
        for pos in positions:
            out.failed[pos] = reason
        out.api_failed = out.api_failed or api_failed
        out.error = error
