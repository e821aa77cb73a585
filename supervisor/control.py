"""Control-socket commands, one small function each (as circus's commands/ are).

The supervisor answers them; the CLI sends them with ``request``.
"""

from __future__ import annotations

from typing import Any, Callable

import zmq

from actors import protocol
from actors.errors import CommandError

COMMANDS: dict[str, Callable[[Any, dict], Any]] = {}
REQUEST_TIMEOUT_S = 5.0


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
    return sup.ask("dedupe", "dead_letters", args)  # the one owner of the SeenStore


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
