"""The actor loop every kind shares: sockets, heartbeats, commands, clean stop.

An actor is one OS process. It talks to the supervisor over a DEALER on the control
endpoint (heartbeats and admin events up, pings and commands down) and exits on its own
when the supervisor is gone (Paranoid Pirate, both ways: invariant 7 in docs/architecture.md).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import zmq

from actors import protocol
from actors.errors import CommandError, ProtocolError, StoreLockedError
from actors.logsetup import setup_logging
from actors.resilience import SilenceWatch
from actors.transport import Transport

if TYPE_CHECKING:
    from catalyst_config import Config

log = logging.getLogger("catalyst.actor")

EXIT_OK = 0
EXIT_ORPHANED = 3  # the supervisor went away
EXIT_LOCKED = 75  # another process owns our database (EX_TEMPFAIL)
RECV_BATCH = 1000  # messages handled from one socket before others get a turn
DATA_HWM = 1000  # high-water mark on data-plane sockets: backpressure, not queues
LINGER_MS = 500
RECONNECT_MS = 10
PING_GRACE = 1.5  # beat on our own when the supervisor's ping is this many intervals late
DROP_LOG_QUIET_S = 60.0  # a bad message of a kind already logged this recently is only counted
DROP_CAUSES_KEPT = 256  # causes remembered for that (exception types: a handful in practice)
SHOWN_ERROR_CHARS = 300  # of an error message quoted in the log


@dataclass
class ActorSpec:
    """What the supervisor hands a new actor process (pickled at process start only)."""

    name: str
    kind: str
    index: int
    config: Config
    supervisor_pid: int
    actor_class: str  # "module:Class", from the kind's entry in actors.KINDS
    options: dict[str, Any] = field(default_factory=dict)


class Waker:
    """Wakes the actor loop from another thread or a signal handler: a byte on a
    socketpair whose read end the loop polls. wake() never blocks; a full pipe means a
    wake is already pending."""

    def __init__(self):
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    @property
    def write_fd(self) -> int:
        return self._w.fileno()

    def wake(self, *_: object) -> None:
        try:
            self._w.send(b"\0")
        except OSError:
            pass

    def drain(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


class Dropped:
    """Counts messages dropped as bad, by channel, and logs them without flooding the log:
    the first of each cause (channel and exception type), then at most one line per cause
    every DROP_LOG_QUIET_S, saying how many went by quietly in between. A message that
    makes a handler fail in a way it did not foresee is logged with its traceback (a bug
    it found), and dropped all the same: no message ends the process that reads it."""

    def __init__(self, logger: logging.Logger, who: str):
        self.log = logger
        self.who = who
        self.counts: collections.Counter[str] = collections.Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # cause -> (logged at, quiet since)

    def drop(self, channel: str, exc: BaseException, *, unexpected: bool = False) -> None:
        self.counts[channel] += 1
        cause = f"{channel}:{type(exc).__name__}"
        now = time.monotonic()
        logged_at, quiet = self._logged.get(cause, (float("-inf"), 0))
        if now - logged_at < DROP_LOG_QUIET_S:
            self._logged[cause] = (logged_at, quiet + 1)
            return
        if len(self._logged) >= DROP_CAUSES_KEPT:
            self._logged.clear()
        self._logged[cause] = (now, 0)
        text = str(exc)[:SHOWN_ERROR_CHARS]
        since = f" ({quiet} more dropped since the last report)" if quiet else ""
        if unexpected:
            self.log.error("%s: a %s message made its handler fail (%s: %s); carrying on%s",
                           self.who, channel, type(exc).__name__, text, since, exc_info=exc)
        else:
            self.log.warning("%s dropped a bad %s message: %s%s", self.who, channel, text, since)


class Outbox:
    """Frames waiting for a PUSH socket to accept them; bounded, so input pauses when full."""

    def __init__(self, sock: zmq.Socket, limit: int = DATA_HWM):
        self.sock = sock
        self.limit = limit
        self.frames: collections.deque[bytes] = collections.deque()

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.flush()

    def flush(self) -> None:
        while self.frames:
            try:
                self.sock.send(self.frames[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            self.frames.popleft()

    @property
    def full(self) -> bool:
        return len(self.frames) >= self.limit


class Actor:
    """Base of every actor kind. Subclasses override the hooks; the loop is here once."""

    data_codec: ClassVar[protocol.Codec | None] = None

    def __init__(self, spec: ActorSpec):
        self.spec = spec
        self.name = spec.name
        self.config = spec.config
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.readers: dict[Any, Callable[[], None]] = {}
        self.outboxes: list[Outbox] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.dropped = Dropped(log, spec.name)
        self.stopping = False
        self.terminated = False  # SIGTERM: stop now; the ledger sends in-flight items again
        self.started = time.monotonic()
        sup = self.config.supervisor
        self.heartbeat_interval = sup.heartbeat_interval_s
        self.heartbeat_timeout = sup.heartbeat_timeout_s
        self.last_ping = time.monotonic()
        self.busy_poll_s = 0.0  # see _wait(); kinds on a request's critical path set it
        self._burst = False
        self._arrival = self._input_done = float("-inf")
        self._control_codec = protocol.Codec(protocol.Ping, protocol.Command)
        # tcp:// endpoints go under CurveZMQ; refused peers show in the counters (stats).
        self.transport = Transport(self.config, self.ctx, self.counters, self.name)
        self.control = self.ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.IDENTITY, self.name.encode())
        self.control.setsockopt(zmq.LINGER, LINGER_MS)
        self.control.setsockopt(zmq.SNDHWM, 100)
        self.control.setsockopt(zmq.MAXMSGSIZE, protocol.SOCKET_MAX_BYTES)
        self.transport.connect(self.control, self.config.endpoint("control"))
        self.add_reader(self.control, self._on_control)
        self._signals = Waker()

    # Hooks -------------------------------------------------------------

    def setup(self) -> None:
        """Open sockets and resources."""

    def tick(self, now: float) -> None:
        """Periodic work; called every loop turn."""

    def next_deadline(self, now: float) -> float:
        """When tick() next has work to do (monotonic time)."""
        return now + self.heartbeat_interval

    def stats(self) -> dict[str, Any]:
        """Numbers for status, metrics and the drain check."""
        return {}

    def idle(self) -> bool:
        """True when a stop may proceed: nothing in flight."""
        return all(not o.frames for o in self.outboxes)

    def input_paused(self) -> bool:
        """True while downstream is full; data readers are not polled then."""
        return any(o.full for o in self.outboxes)

    def teardown(self) -> None:
        """Release resources; the sockets close after this."""

    # Helpers -----------------------------------------------------------

    def socket(self, kind: int, *, bind: str | list[str] = (), connect: str | list[str] = (),
               hwm: int = DATA_HWM) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.SOCKET_MAX_BYTES)  # no frame is read past it
        if kind in (zmq.PUSH, zmq.DEALER):
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to peers that are really there
            # A restarted peer rebinds within milliseconds; find it as fast (default 100 ms).
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        for endpoint in [bind] if isinstance(bind, str) else bind:
            self.transport.bind(sock, endpoint)
        for endpoint in [connect] if isinstance(connect, str) else connect:
            self.transport.connect(sock, endpoint)
        return sock

    def add_reader(self, sock: Any, callback: Callable[[], None]) -> None:
        self.readers[sock] = callback

    def outbox(self, sock: zmq.Socket) -> Outbox:
        box = Outbox(sock)
        self.outboxes.append(box)
        return box

    def recv_messages(self, sock: zmq.Socket, codec: protocol.Codec):
        """Yields decoded messages waiting on sock; malformed ones are counted and dropped."""
        for _ in range(RECV_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            try:
                message = codec.decode(frames[-1])
            except ProtocolError as exc:
                self.counters["bad_messages"] += 1
                self.dropped.drop("data" if sock is not self.control else "control", exc)
                continue
            yield frames[:-1], message

    def admin(self, event: str, message: str, *, reason: str = "", level: str = "warning") -> None:
        """An admin event; the supervisor writes it to the admin sink."""
        ev = protocol.AdminEvent(event=event, actor=self.name, reason=reason, message=message,
                                 level=level, at=time.time())
        try:
            self.control.send(protocol.encode(ev), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s could not send admin event %s: %s", self.name, event, message)

    def watch_silence(self, watch: SilenceWatch, now: float,
                      waiting_for: Callable[[], str]) -> None:
        """An admin event once the next stage has answered nothing for its silence time;
        waiting_for says what waits, asked only then (this runs on every loop turn)."""
        quiet = watch.silent_for(now)
        if quiet is not None:
            self.admin("stage_silent", f"{watch.stage} has answered nothing for {quiet:.0f} s "
                       f"({waiting_for()}); is its host down or cut off?", reason=watch.stage,
                       level="error")

    def stage_answered(self, watch: SilenceWatch, now: float, still_waiting: bool) -> None:
        if watch.answered(now, still_waiting):
            self.admin("stage_answering", f"{watch.stage} answers again", reason=watch.stage,
                       level="info")

    def request_stop(self) -> None:
        self.stopping = True

    def _on_sigterm(self, *_) -> None:
        self.stopping = self.terminated = True

    # The loop ----------------------------------------------------------

    def heartbeat(self, token: int = 0) -> None:
        stats = dict(self.counters)
        stats.update(self.stats())
        hb = protocol.Heartbeat(name=self.name, pid=os.getpid(), stats=stats)
        if token:
            hb.stats["report_token"] = token
        try:
            self.control.send(protocol.encode(hb), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the supervisor is away; the orphan check decides what that means

    def _on_control(self) -> None:
        for _, msg in self.recv_messages(self.control, self._control_codec):
            self.last_ping = time.monotonic()
            try:
                self._control_message(msg)
            except Exception as exc:  # noqa: BLE001  (no command, however odd, ends the actor)
                self.counters["bad_messages"] += 1
                self.dropped.drop("control", exc, unexpected=True)

    def _control_message(self, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.Ping):
            # Answering the ping keeps every actor's beat in step with the supervisor's
            # ping, so it wakes once per interval, not once per actor.
            self.heartbeat()
            self.next_heartbeat = self.last_ping + PING_GRACE * self.heartbeat_interval
        elif isinstance(msg, protocol.Command):
            if msg.command == "stop":
                log.info("%s: stop requested", self.name)
                self.request_stop()
            elif msg.command == "report":
                self.heartbeat(token=msg.token)
            else:
                self._answer(msg)

    def _answer(self, msg: protocol.Command) -> None:
        """Runs an operator's command and answers it, whatever happens: a CommandError is
        the answer's error; anything else the command raises (an argument SQLite cannot
        take, a bug) is answered as a failure and logged, and the actor carries on."""
        try:
            answer = protocol.Answer(token=msg.token, ok=True,
                                     result=self.command(msg.command, msg.args))
        except CommandError as exc:
            answer = protocol.Answer(token=msg.token, ok=False, error=str(exc))
        except Exception as exc:
            self.counters["failed_commands"] += 1
            log.exception("%s: command %s failed", self.name, msg.command)
            detail = str(exc)[:SHOWN_ERROR_CHARS]
            answer = protocol.Answer(token=msg.token, ok=False, error=f"{self.name}: "
                                     f"{msg.command} failed ({type(exc).__name__}: {detail})")
        try:
            frame = protocol.encode(answer)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            log.error("%s: the answer to %s could not be encoded: %s", self.name, msg.command, exc)
            frame = protocol.encode(protocol.Answer(
                token=msg.token, ok=False,
                error=f"{self.name}: the answer to {msg.command} could not be encoded"))
        try:
            self.control.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            log.warning("%s could not answer %s: the supervisor is away", self.name, msg.command)

    def command(self, name: str, args: dict[str, Any]) -> Any:
        """An operator's command relayed by the supervisor; the result goes back to the CLI."""
        raise CommandError(f"{self.name} has no command {name!r}")

    def _supervisor_gone(self, now: float) -> bool:
        try:
            os.kill(self.spec.supervisor_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return now - self.last_ping > self.heartbeat_timeout

    def waker(self, callback: Callable[[], None] | None = None) -> Waker:
        """A Waker whose wakes run callback on the loop (after draining it)."""
        w = Waker()

        def on_wake() -> None:
            w.drain()
            if callback:
                callback()
        self.add_reader(w.fileno(), on_wake)
        return w

    def run(self) -> int:
        self.add_reader(self._signals.fileno(), self._signals.drain)
        signal.set_wakeup_fd(self._signals.write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.setup()
        except StoreLockedError as exc:
            log.error("%s: %s", self.name, exc)
            return EXIT_LOCKED
        self.heartbeat()
        self.next_heartbeat = time.monotonic() + self.heartbeat_interval
        try:
            return self._loop()
        finally:
            self.teardown()
            self.ctx.destroy(linger=LINGER_MS)

    def _poller_for(self, paused: bool) -> zmq.Poller:
        """The poller for this turn; rebuilt only when what to wait for changes."""
        writers = tuple(box.sock for box in self.outboxes if box.frames)
        shape = (paused, writers, len(self.readers))
        if shape != getattr(self, "_poller_shape", None):
            always = (self.control, self._signals.fileno())
            poller = zmq.Poller()
            for sock in {*self.readers, *writers}:
                flags = zmq.POLLOUT if sock in writers else 0
                if sock in self.readers and (not paused or sock in always):
                    flags |= zmq.POLLIN
                if flags:
                    poller.register(sock, flags)
            self._poller, self._poller_shape = poller, shape
        return self._poller

    def _wait(self, poller: zmq.Poller, timeout_s: float) -> list:
        """poller.poll, but in a burst of input spin on poll(0) for up to busy_poll_s
        first (Aeron's backoff idle strategy, the kernel's busy_poll): on this machine a
        process woken from sleep ran a one-key claim in 38 us instead of 15, and its round
        trip took 150-180 us instead of 100. Input is a burst when it came within
        busy_poll_s of the last; so an idle actor never spins, nor does one that gets
        a message now and then, and a burst ends with at most one wasted spin."""
        if self._burst:
            until = time.perf_counter() + min(self.busy_poll_s, timeout_s)
            while True:
                events = poller.poll(0)
                if events:
                    self._arrival = time.perf_counter()
                    return events
                if time.perf_counter() >= until:
                    break
            self._burst = False
            timeout_s -= self.busy_poll_s
            if timeout_s <= 0:
                return []
        # A deadline already past must not become a negative timeout: that waits forever.
        events = poller.poll(max(0, int(timeout_s * 1000) + 1))
        self._arrival = time.perf_counter()
        return events

    def _input_handled(self) -> None:
        done = time.perf_counter()
        self._burst = self._arrival - self._input_done <= self.busy_poll_s
        self._input_done = done

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            deadline = min(self.next_heartbeat, self.next_deadline(now))
            poller = self._poller_for(self.input_paused())
            events = self._wait(poller, deadline - now)
            for sock, event in events:
                if event & zmq.POLLIN:
                    self.readers[sock]()
            if events:
                self._input_handled()
            for box in self.outboxes:
                box.flush()
            now = time.monotonic()
            self.tick(now)
            if now >= self.next_heartbeat:  # no ping came: beat anyway, and ask why
                self.heartbeat()
                self.next_heartbeat = now + self.heartbeat_interval
                if self._supervisor_gone(now):
                    log.error("%s: supervisor gone, exiting", self.name)
                    return EXIT_ORPHANED
            if self.terminated:
                log.warning("%s: terminated with work in flight", self.name)
                return EXIT_OK
            if self.stopping and self.idle():
                self.heartbeat()
                log.info("%s: stopped cleanly", self.name)
                return EXIT_OK


def load_class(path: str) -> type[Actor]:
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def actor_main(spec: ActorSpec) -> None:
    """Entry point of an actor process (the target the supervisor starts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor orders the stop
    try:
        import setproctitle

        setproctitle.setproctitle(f"catalyst: {spec.name}")
    except ImportError:
        pass
    setup_logging(spec.config)
    cls = load_class(spec.actor_class)
    actor = cls(spec)
    code = actor.run()
    logging.shutdown()
    os._exit(code)  # skip inherited atexit handlers of the fork server
