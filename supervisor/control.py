"""The operator's control channel: commands, one small function each (as circus's
commands/ are), the socket the supervisor answers them on, and ``request`` for the CLI.

A command an actor must answer (dead letters live in the dedupe actor's ledger) is relayed:
the channel keeps the operator's envelope and replies when the actor answers, or with an
error once ANSWER_TIMEOUT_S has passed.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import zmq

from actors import protocol
from actors.errors import CommandError, ProtocolError

log = logging.getLogger("catalyst.supervisor")

COMMANDS: dict[str, Callable[[Any, dict], Any]] = {}
REQUEST_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 3.0  # an actor asked on an operator's behalf; under the CLI's own timeout
REQUESTS_PER_TURN = 100


class ControlError(Exception):
    """The supervisor did not answer, or answered with an error."""


class Deferred:
    """A command's answer comes later, from an actor; the supervisor replies then."""

    def __init__(self, token: int):
        self.token = token


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


@command("status")
def _status(sup, args: dict) -> Any:
    return sup.status()


@command("stop")
def _stop(sup, args: dict) -> Any:
    sup.stop_requested = sup.stop_requested or "stop command"
    return {"stopping": True}


@command("restart")
def _restart(sup, args: dict) -> Any:
    name = args.get("name")
    h = sup.handles.get(name)
    if h is None:
        raise KeyError(f"no actor named {name!r} (have: {', '.join(sup.handles)})")
    if h.alive:
        sup.stop_actor(h, "manual")
    else:
        h.record_restart("manual")
        h.policy.reset()
        sup.spawn(h)
    return {"restarting": name}


@command("dead_letters")
def _dead_letters(sup, args: dict) -> Deferred:
    return sup.ask_ledger("dead_letters", args)  # the one owner of the SeenStore


@command("history")
def _history(sup, args: dict) -> Any:
    return sup.history()


def execute(sup, name: str, args: dict) -> protocol.Reply | Deferred:
    fn = COMMANDS.get(name)
    if fn is None:
        return protocol.Reply(ok=False, error=f"unknown command {name!r}")
    try:
        result = fn(sup, args)
    except KeyError as exc:
        return protocol.Reply(ok=False, error=str(exc.args[0]))
    except CommandError as exc:
        return protocol.Reply(ok=False, error=str(exc))
    return result if isinstance(result, Deferred) else protocol.Reply(ok=True, result=result)


class ControlChannel:
    """The supervisor's side of the operator socket (a ROUTER): runs each request's
    command and replies, now or, for a relayed one, when the actor answers."""

    def __init__(self, sup, sock: zmq.Socket):
        self.sup = sup
        self.sock = sock
        self.codec = protocol.Codec(protocol.Request)
        # Requests waiting on an actor's Answer: token -> (envelope, deadline).
        self.awaiting: dict[int, tuple[list[bytes], float]] = {}

    def on_readable(self) -> None:
        for _ in range(REQUESTS_PER_TURN):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                request = self.codec.decode(frames[-1])
                reply = execute(self.sup, request.command, request.args)
            except ProtocolError as exc:
                reply = protocol.Reply(ok=False, error=f"bad request: {exc}")
            if isinstance(reply, Deferred):  # an actor answers; answered() replies
                self.awaiting[reply.token] = (frames[:-1], time.monotonic() + ANSWER_TIMEOUT_S)
            else:
                self._reply(frames[:-1], reply)

    def answered(self, answer: protocol.Answer) -> None:
        waiting = self.awaiting.pop(answer.token, None)
        if waiting is not None:  # else the operator was told it timed out
            self._reply(waiting[0], protocol.Reply(ok=answer.ok, result=answer.result,
                                                   error=answer.error))

    def expire(self, now: float) -> None:
        for token, (envelope, deadline) in list(self.awaiting.items()):
            if now >= deadline:
                del self.awaiting[token]
                self._reply(envelope, protocol.Reply(
                    ok=False, error=f"the actor did not answer within {ANSWER_TIMEOUT_S:.0f} s"))

    def deadlines(self) -> list[float]:
        return [deadline for _, deadline in self.awaiting.values()]

    def _reply(self, envelope: list[bytes], reply: protocol.Reply) -> None:
        self.sock.send_multipart([*envelope, protocol.encode(reply)])


def request(config, name: str, args: dict | None = None,
            timeout_s: float = REQUEST_TIMEOUT_S) -> Any:
    """Sends one command to the running supervisor and returns its result."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.IMMEDIATE, 1)
    try:
        sock.connect(config.endpoint("cli"))
        sock.send(protocol.encode(protocol.Request(command=name, args=args or {})))
        reply = protocol.Codec(protocol.Reply).decode(sock.recv())
    except zmq.Again:
        raise ControlError("no supervisor answered at "
                           f"{config.endpoint('cli')} (is it running?)") from None
    finally:
        sock.close()
    if not reply.ok:
        raise ControlError(reply.error)
    return reply.result
