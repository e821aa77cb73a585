"""The operator's control channel: commands, one small function each (as circus's
commands/ are), the socket the supervisor answers them on, and ``request`` for the CLI.

A command an actor must answer (dead letters live in the dedupe actor's ledger) is relayed:
the channel keeps the operator's envelope and replies when the actor answers, or with an
error once ANSWER_TIMEOUT_S has passed.

No request can take the supervisor down: a frame that does not decode, a command that does
not exist, arguments of the wrong type or out of range are each answered with an error that
names the argument; a command that fails for any other reason is answered with an error too.
Each command checks its arguments where they enter, before anything acts on them, and a
relayed command reaches the actor only with arguments it accepts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable

import msgspec
import zmq

from actors import protocol
from actors.base import Dropped
from actors.errors import CommandError, ProtocolError
from actors.transport import Transport
from catalyst_config.pauses import pauses_path, read_paused, write_paused

log = logging.getLogger("catalyst.supervisor")

COMMANDS: dict[str, Callable[[Any, dict], Any]] = {}
REQUEST_TIMEOUT_S = 5.0
ANSWER_TIMEOUT_S = 3.0  # an actor asked on an operator's behalf; under the CLI's own timeout
REQUESTS_PER_TURN = 100
MAX_AWAITING = 100  # relayed commands waiting for an actor's answer; more are refused
# A REQ request arrives as [identity, empty delimiter, request], a DEALER's as [identity,
# request]; proxies add a frame each. Beyond this it is not a request: dropped, unanswered.
MAX_ENVELOPE_FRAMES = 8
MAX_DEAD_LETTERS_LIMIT = 10_000  # dead letters listed by one command
MAX_REPLAY_KEYS = 10_000  # keys replayed by one command (a protocol list's bound)
SHOWN_CHARS = 80  # of an operator's bad value, quoted back in an error
SHOWN_FEEDS_CHARS = 300  # of the configured feed names listed in an error

ReplayKeys = Annotated[list[protocol.Key],
                       msgspec.Meta(min_length=1, max_length=MAX_REPLAY_KEYS)]


class ControlError(Exception):
    """The supervisor did not answer, or answered with an error."""


class NotRunningError(ControlError):
    """No supervisor answered: none runs with this configuration (LSB status 3)."""


class Deferred:
    """A command's answer comes later, from an actor; the supervisor replies then."""

    def __init__(self, token: int, actor: str = "", timeout_s: float = ANSWER_TIMEOUT_S):
        self.token = token
        self.actor = actor  # who must answer: an Answer from anyone else is dropped
        self.timeout_s = timeout_s


@dataclass
class _Awaiting:
    envelope: list[bytes]
    deadline: float
    actor: str
    timeout_s: float = ANSWER_TIMEOUT_S


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _accept(command_name: str, args: dict, allowed: tuple[str, ...] = ()) -> None:
    """Refuses arguments a command does not take."""
    unknown = sorted(k for k in args if k not in allowed)
    if unknown:
        takes = f"takes only {', '.join(allowed)}" if allowed else "takes no arguments"
        raise CommandError(f"{command_name} {takes} (got {', '.join(map(_shown, unknown))})")


@command("status")
def _status(sup, args: dict) -> Any:
    _accept("status", args)
    return sup.status()


@command("stop")
def _stop(sup, args: dict) -> Any:
    _accept("stop", args)
    sup.stop_requested = sup.stop_requested or "stop command"
    return {"stopping": True}


@command("restart")
def _restart(sup, args: dict) -> Any:
    _accept("restart", args, ("name",))
    name = args.get("name")
    if not isinstance(name, str):
        raise CommandError(f"restart: name must be an actor's name (a string), got {_shown(name)}")
    h = sup.handles.get(name)
    if h is None:
        raise CommandError(f"no actor named {_shown(name)} (have: {', '.join(sup.handles)})")
    if h.alive:
        sup.stop_actor(h, "manual")
    else:
        h.record_restart("manual")
        h.policy.reset()
        sup.spawn(h)
    return {"restarting": name}


@command("reload")
def _reload(sup, args: dict) -> Any:
    _accept("reload", args)
    return sup.reloader.reload()  # CommandError (refused) is the reply's error


@command("dead_letters")
def _dead_letters(sup, args: dict) -> Deferred:
    _accept("dead_letters", args, ("limit", "replay"))
    if "replay" in args:
        if "limit" in args:
            raise CommandError("dead_letters: replay and limit do not go together")
        replay = args["replay"]
        if replay != "all":
            try:
                msgspec.convert(replay, ReplayKeys)
            except msgspec.ValidationError:
                raise CommandError(
                    f'dead_letters: replay takes a list of keys (1 to {MAX_REPLAY_KEYS} '
                    f'strings of 1 to 1024 characters) or "all", got {_shown(replay)}') from None
    elif "limit" in args:
        limit = args["limit"]
        if not isinstance(limit, int) or isinstance(limit, bool) \
                or not 0 <= limit <= MAX_DEAD_LETTERS_LIMIT:
            raise CommandError(f"dead_letters: limit must be a whole number from 0 to "
                               f"{MAX_DEAD_LETTERS_LIMIT}, got {_shown(limit)}")
    return sup.ask_ledger("dead_letters", args)  # the one owner of the SeenStore


MAX_BACKUP_PATH_CHARS = 1024  # as its owners check it (actors/storage/sqlite.py)
# The owner copies in one step, so the copy is one snapshot; its loop waits meanwhile, so
# this stays under the default heartbeat_timeout_s (10 s) for files of a few hundred MB.
BACKUP_ANSWER_TIMEOUT_S = 8.0


@command("backup")
def _backup(sup, args: dict) -> Any:
    """Without file: the files this configuration keeps, to ask for in turn. With file:
    relayed to a running owner of it, which copies it into dir (absolute) and answers."""
    _accept("backup", args, ("dir", "file"))
    directory = args.get("dir")
    if not isinstance(directory, str) or not directory.startswith("/") \
            or len(directory) > MAX_BACKUP_PATH_CHARS or "\x00" in directory:
        raise CommandError(f"backup: dir must be an absolute path of at most "
                           f"{MAX_BACKUP_PATH_CHARS} characters, got {_shown(directory)}")
    # Each file and the kind that owns it (its instances share it: any running one copies
    # it), in start order, from the kinds table.
    owners = {f: k.name for k in sup.kinds for f in k.files_in(sup.config)}
    files = list(owners)
    if "file" not in args:
        return {"files": files}
    name = args["file"]
    if name not in files:
        raise CommandError(f"backup: file must be one of {', '.join(files)}, got {_shown(name)}")
    kind = owners[name]
    h = sup.running_actor(lambda k: k.name == kind)
    if h is None:
        raise CommandError(f"backup of {name}: no {kind} actor is running to copy it")
    token = sup.next_token()
    sup.send_command(h, "backup", token=token, args={"dir": directory})
    return Deferred(token, h.name, BACKUP_ANSWER_TIMEOUT_S)


def _configured_feed(command_name: str, sup, args: dict) -> str:
    """The feed argument of pause and resume: a configured feed's name."""
    _accept(command_name, args, ("feed",))
    feed = args.get("feed")
    names = [f.name for f in sup.config.feeds]
    if not isinstance(feed, str) or feed not in names:
        have = ", ".join(names) or "none"
        if len(have) > SHOWN_FEEDS_CHARS:
            have = have[:SHOWN_FEEDS_CHARS] + "..."
        raise CommandError(f"{command_name}: feed must be the name of a configured feed "
                           f"(have: {have}), got {_shown(feed)}")
    return feed


def _set_paused(command_name: str, sup, paused: set[str]) -> dict:
    """Writes the paused set first (a fetcher starting meanwhile reads it), then tells
    every running actor that follows pauses the whole set (actors.Kind.follows_feed_pauses)."""
    try:
        write_paused(sup.config, paused)
    except OSError as exc:
        raise CommandError(f"{command_name}: could not write {pauses_path(sup.config)}: "
                           f"{exc.strerror or type(exc).__name__}; nothing changed") from None
    names = sorted(paused)
    for h in sup.handles.values():
        if h.kind.follows_feed_pauses and h.alive:
            sup.send_command(h, "pause_feeds", args={"paused": names})
    log.info("%s: paused feeds now %s", command_name, names or "none")
    return {"paused": names}


@command("pause")
def _pause(sup, args: dict) -> Any:
    feed = _configured_feed("pause", sup, args)
    return _set_paused("pause", sup, read_paused(sup.config) | {feed})


@command("resume")
def _resume(sup, args: dict) -> Any:
    feed = _configured_feed("resume", sup, args)
    return _set_paused("resume", sup, read_paused(sup.config) - {feed})


@command("history")
def _history(sup, args: dict) -> Any:
    _accept("history", args)
    return sup.history()


def execute(sup, name: str, args: dict,
            dropped: Dropped | None = None) -> protocol.Reply | Deferred:
    """Runs one command; every outcome, a failure included, is a Reply (or a Deferred).
    An unforeseen failure is logged with its traceback (through dropped, when given, so
    a request repeated in a loop cannot flood the log)."""
    fn = COMMANDS.get(name)
    if fn is None:
        return protocol.Reply(ok=False, error=f"unknown command {_shown(name)} "
                                              f"(have: {', '.join(COMMANDS)})")
    try:
        result = fn(sup, args)
    except CommandError as exc:
        return protocol.Reply(ok=False, error=str(exc))
    except Exception as exc:  # noqa: BLE001  (a bug a request found: answer, carry on)
        if dropped is not None:
            dropped.drop("operator", exc, unexpected=True)
        else:
            log.exception("command %s failed", name)
        return protocol.Reply(ok=False, error=f"{name} failed: {type(exc).__name__}")
    return result if isinstance(result, Deferred) else protocol.Reply(ok=True, result=result)


class ControlChannel:
    """The supervisor's side of the operator socket (a ROUTER): runs each request's
    command and replies, now or, for a relayed one, when the actor answers."""

    def __init__(self, sup, sock: zmq.Socket, dropped: Dropped | None = None):
        self.sup = sup
        self.sock = sock
        self.codec = protocol.Codec(protocol.Request)
        self.dropped = dropped or Dropped(log, "supervisor")
        # Requests waiting on an actor's Answer, by token.
        self.awaiting: dict[int, _Awaiting] = {}

    def on_readable(self) -> None:
        for _ in range(REQUESTS_PER_TURN):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception as exc:  # noqa: BLE001  (no request ends the supervisor)
                self.dropped.drop("operator", exc, unexpected=True)

    def _handle(self, frames: list[bytes]) -> None:
        if not 2 <= len(frames) <= MAX_ENVELOPE_FRAMES:
            self.dropped.drop("operator", ProtocolError(
                f"a request of {len(frames)} frames (at most {MAX_ENVELOPE_FRAMES})"))
            return
        envelope = frames[:-1]
        try:
            request = self.codec.decode(frames[-1])
        except ProtocolError as exc:
            self.dropped.drop("operator", exc)
            self._reply(envelope, protocol.Reply(ok=False, error=f"bad request: {exc}"))
            return
        if len(self.awaiting) >= MAX_AWAITING and request.command in RELAYED:
            self._reply(envelope, protocol.Reply(
                ok=False, error=f"{MAX_AWAITING} commands already wait for an actor; try later"))
            return
        reply = execute(self.sup, request.command, request.args, self.dropped)
        if isinstance(reply, Deferred):  # an actor answers; answered() replies
            self.awaiting[reply.token] = _Awaiting(envelope, time.monotonic() + reply.timeout_s,
                                                   reply.actor, reply.timeout_s)
        else:
            self._reply(envelope, reply)

    def answered(self, sender: str, answer: protocol.Answer) -> None:
        """An actor's Answer: replied to the operator who asked, if that actor was asked."""
        waiting = self.awaiting.get(answer.token)
        if waiting is None:
            return  # late: the operator was told it timed out
        if waiting.actor and waiting.actor != sender:
            self.dropped.drop("control", ProtocolError(
                f"an answer to {waiting.actor}'s command came from {_shown(sender)}"))
            return
        del self.awaiting[answer.token]
        self._reply(waiting.envelope, protocol.Reply(ok=answer.ok, result=answer.result,
                                                     error=answer.error))

    def expire(self, now: float) -> None:
        for token, waiting in list(self.awaiting.items()):
            if now >= waiting.deadline:
                del self.awaiting[token]
                self._reply(waiting.envelope, protocol.Reply(
                    ok=False, error=f"the actor did not answer within {waiting.timeout_s:.0f} s"))

    def deadlines(self) -> list[float]:
        return [waiting.deadline for waiting in self.awaiting.values()]

    def _reply(self, envelope: list[bytes], reply: protocol.Reply) -> None:
        try:
            frame = protocol.encode(reply)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            # e.g. an answer an actor sent that msgpack cannot carry back
            self.dropped.drop("operator", exc, unexpected=True)
            frame = protocol.encode(protocol.Reply(
                ok=False, error=f"the answer could not be encoded ({type(exc).__name__})"))
        try:
            self.sock.send_multipart([*envelope, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the operator went away, or stopped reading
            log.info("a reply to the operator could not be sent: %s", exc)


RELAYED = frozenset({"dead_letters", "backup"})  # commands an actor answers (a Deferred)


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
        Transport(config, ctx).connect(sock, config.endpoint("cli"))  # tcp://: CurveZMQ
        sock.send(protocol.encode(protocol.Request(command=name, args=args or {})))
        reply = protocol.Codec(protocol.Reply).decode(sock.recv())
    except zmq.Again:
        raise NotRunningError("no supervisor answered at "
                           f"{config.endpoint('cli')} (is it running?)") from None
    except ProtocolError as exc:
        raise ControlError(f"the supervisor's reply could not be read: {exc}") from None
    finally:
        sock.close()
    if not reply.ok:
        raise ControlError(reply.error)
    return reply.result
