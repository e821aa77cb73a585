"""Spawns the actors, watches them, restarts them; stops them in order, draining.

Mechanics live here; when to restart is supervisor.policy, what is sampled is
supervisor.watch. One thread runs the loop: a zmq poller over the actors' control
socket, the CLI socket and every process sentinel, so a crash is seen at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import stat
import time
from pathlib import Path
from typing import Any

import multiprocess
import zmq

from actors import KINDS, Kind, preload_modules, protocol
from actors.base import EXIT_LOCKED, ActorSpec, Dropped, actor_main
from actors.errors import (CommandError, ConfigError, ProtocolError, StoreLockedError,
                           StoreUnavailableError)
from actors.storage import FileLock
from actors.transport import Transport
from supervisor import control, systemd
from supervisor.admin import AdminNotifier
from supervisor.handle import ActorHandle, ActorState, describe_exit
from supervisor.policy import RestartPolicy
from supervisor.reload import Reloader
from supervisor.watch import ProcessSampler, expected_memory_mb

log = logging.getLogger("catalyst.supervisor")

EXIT_CLEAN, EXIT_GAVE_UP, EXIT_DRAIN_INCOMPLETE = 0, 1, 4
HISTORY_FILE = "supervisor-history.json"
CONTROL_PER_TURN = 1000  # control messages handled before the loop looks at anything else
# An actor's stats go into status, metrics, the report and the saved history (JSON): plain
# values, lists and maps with string keys, this deep and this many values at most (the
# fetcher's per-feed stats are 4 deep and ~10 values a feed). Other stats are refused.
MAX_STATS_DEPTH = 8
MAX_STATS_VALUES = 20_000


def check_stats(stats: Any) -> dict[str, Any]:
    """An actor's stats if they are JSON-like and bounded; raises ProtocolError if not."""
    budget = [MAX_STATS_VALUES]

    def walk(value: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ProtocolError(f"stats with more than {MAX_STATS_VALUES} values")
        if value is None or isinstance(value, (bool, int, float, str)):
            return
        if depth >= MAX_STATS_DEPTH:
            raise ProtocolError(f"stats nested deeper than {MAX_STATS_DEPTH}")
        if isinstance(value, list):
            for v in value:
                walk(v, depth + 1)
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ProtocolError(f"a stats key of type {type(k).__name__}")
                walk(v, depth + 1)
        else:
            raise ProtocolError(f"a stats value of type {type(value).__name__}")

    if not isinstance(stats, dict):
        raise ProtocolError("stats must be a map")
    walk(stats, 0)
    return stats


def _count_stat(stats: dict[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class Supervisor:
    """The arbiter: owns every actor handle and the loop. It knows the pipeline only
    through the kinds table (actors.KINDS, plus any kinds a caller adds)."""

    def __init__(self, config, *, max_cycles: int | None = None, kinds: tuple[Kind, ...] = KINDS):
        self.config = config
        self.sup = config.supervisor
        self.max_cycles = max_cycles
        # This host's share of the pipeline (host.roles); the other kinds run elsewhere.
        self.kinds = tuple(sorted((k for k in kinds if config.runs(k.name)),
                                  key=lambda k: k.start_rank))
        self.started = time.monotonic()
        self.started_wall = time.time()
        # Loaded once in the fork server so an actor starts in milliseconds.
        self.ctx = multiprocess.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload_modules(config, self.kinds))
        self.sampler = ProcessSampler()
        self.handles: dict[str, ActorHandle] = {}
        for kind in self.kinds:
            kcfg = config.actors.get(kind.name)
            instances = kcfg.instances if kcfg else kind.instances
            for i in range(instances):
                self.handles[f"{kind.name}-{i}"] = ActorHandle(
                    name=f"{kind.name}-{i}", kind=kind, index=i,
                    max_rss_mb=kcfg.max_rss_mb if kcfg else kind.max_rss_mb,
                    policy=RestartPolicy(self.sup.restart), samples_kept=self.sup.samples_kept)
        self.shutting_down = False
        self.stop_requested: str | None = None
        self.reload_requested = False  # SIGHUP: handled on the loop, not in the handler
        self.reloader = Reloader(self)
        self.exit_code = EXIT_CLEAN
        self.stopping_kinds: set[str] = set()
        self.token = 0  # for commands whose answer (or report heartbeat) we wait on
        self.dropped = Dropped(log, "supervisor")  # bad messages, by channel
        self.admin = AdminNotifier(config)
        self.notifier = systemd.Notifier.from_environment()
        self.metrics_server = None
        self.console = None

    # Setup --------------------------------------------------------------

    def _open(self) -> None:
        cfg = self.config
        run_dir = cfg.path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o700)
        data_dir = cfg.path(cfg.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.lock = FileLock(data_dir / "supervisor.lock")  # raises StoreLockedError
        self.zctx = zmq.Context()
        # tcp:// binds are CurveZMQ servers; refused peers count among the dropped messages.
        self.transport = Transport(cfg, self.zctx, self.dropped.counts, "supervisor")
        self.control_sock = self.zctx.socket(zmq.ROUTER)
        self.control_sock.setsockopt(zmq.LINGER, 0)
        self.control_sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.control_sock.setsockopt(zmq.MAXMSGSIZE, protocol.SOCKET_MAX_BYTES)
        self.transport.bind(self.control_sock, cfg.endpoint("control"))
        cli_sock = self.zctx.socket(zmq.ROUTER)
        cli_sock.setsockopt(zmq.LINGER, 0)
        cli_sock.setsockopt(zmq.MAXMSGSIZE, protocol.SOCKET_MAX_BYTES)
        self.transport.bind(cli_sock, cfg.endpoint("cli"))
        self.operator = control.ControlChannel(self, cli_sock, self.dropped)
        self.control_codec = protocol.Codec(protocol.Heartbeat, protocol.AdminEvent,
                                            protocol.Answer)
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)  # systemctl reload: re-read the config
        if self.sup.metrics_port:
            from supervisor.metrics import start_metrics

            with _listening("supervisor.metrics_port", self.sup.metrics_host,
                            self.sup.metrics_port):
                self.metrics_server = start_metrics(self)
        if cfg.console.port:
            from supervisor.console import Console

            with _listening("console.port", cfg.console.host, cfg.console.port):
                self.console = Console(self)
            self.console.start()

    def _on_signal(self, signum, _frame) -> None:
        self.stop_requested = signal.Signals(signum).name

    def _on_hup(self, _signum, _frame) -> None:
        self.reload_requested = True

    def replace_admin(self) -> None:
        """A reload changed the admin sink: events go to the new one from now on."""
        old, self.admin = self.admin, AdminNotifier(self.config)
        old.close()

    # Spawning and killing ----------------------------------------------------

    def spawn(self, h: ActorHandle) -> None:
        options = dict(h.kind.options)
        if h.kind.counts_cycles:
            options["max_cycles"] = self.max_cycles
            options["first_cycle"] = _count_stat(h.stats, "cycles_done") + 1
        spec = ActorSpec(name=h.name, kind=h.kind.name, index=h.index, config=self.config,
                         supervisor_pid=os.getpid(), options=options,
                         actor_class=h.kind.actor_class)
        proc = self.ctx.Process(target=actor_main, args=(spec,), name=h.name)
        proc.start()
        now = time.monotonic()
        h.process, h.pid, h.state = proc, proc.pid, ActorState.STARTING
        h.started_at, h.last_heartbeat = now, now
        h.pending_reason = h.stop_sent_at = h.term_sent_at = h.restart_at = None
        h.forget_memory()
        h.next_leak_check = now + self.sup.leak.window_s * 0.5
        log.info("started %s (pid %d)", h.name, h.pid)

    def send_command(self, h: ActorHandle, command: str, token: int = 0,
                     args: dict | None = None) -> None:
        frame = protocol.encode(protocol.Command(command=command, token=token, args=args or {}))
        try:
            self.control_sock.send_multipart([h.name.encode(), frame], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def stop_actor(self, h: ActorHandle, reason: str | None, *, kill: bool = False) -> None:
        """Asks an actor to stop (or SIGKILLs it); _on_exit restarts it when reason is set."""
        if not h.alive:
            return
        h.pending_reason = reason
        now = time.monotonic()
        if kill:
            h.process.kill()
            h.term_sent_at = h.stop_sent_at = now
        elif h.stop_sent_at is None:
            self.send_command(h, "stop")
            h.stop_sent_at = now
        h.state = ActorState.STOPPING

    def _escalate_stops(self, now: float) -> None:
        timeout = self.sup.stop_timeout_s
        for h in self.handles.values():
            if not h.alive or h.stop_sent_at is None:
                continue
            if h.term_sent_at is None and now - h.stop_sent_at > timeout:
                log.warning("%s did not stop in %.1fs; SIGTERM", h.name, timeout)
                h.process.terminate()
                h.term_sent_at = now
            elif h.term_sent_at is not None and now - h.term_sent_at > timeout:
                log.warning("%s ignored SIGTERM; SIGKILL", h.name)
                h.process.kill()
                h.term_sent_at = now

    def _on_exit(self, h: ActorHandle) -> None:
        proc = h.process
        proc.join(1.0)
        code = proc.exitcode
        proc.close()
        self.sampler.forget(h.pid)
        h.process = None
        h.last_exit = describe_exit(code)
        reason = h.pending_reason
        h.pending_reason = None
        if h.kind.name in self.stopping_kinds:
            h.state = ActorState.STOPPED
            log.info("%s stopped (%s)", h.name, h.last_exit)
            return
        if reason is None:
            reason = "exit"
            level = "error" if code != EXIT_LOCKED else "warning"
            log.log(logging.ERROR if level == "error" else logging.WARNING,
                    "%s exited unexpectedly (%s)", h.name, h.last_exit)
        self._restart(h, reason)

    def _restart(self, h: ActorHandle, reason: str) -> None:
        h.record_restart(reason)
        self.admin.event("restart", h.name, reason, f"{h.name} restarted: {reason} "
                         f"({h.last_exit})", level="warning")
        # Restarts an operator asked for (restart, reload) never count toward giving up.
        decision = h.policy.on_failure(time.monotonic()) \
            if reason not in ("manual", "reload") else None
        if decision and decision.give_up:
            h.state = ActorState.FAILED
            r = self.sup.restart
            msg = (f"{h.name} gave up: more than {r.max_restarts} restarts in "
                   f"{r.period_s:.0f}s (last: {reason}, {h.last_exit})")
            log.error(msg)
            self.admin.event("give_up", h.name, reason, msg, level="error")
            if r.on_give_up == "shutdown":
                self.exit_code = EXIT_GAVE_UP
                self.stop_requested = self.stop_requested or f"{h.name} gave up"
            return
        delay = decision.delay_s if decision else 0.0
        if delay <= 0:
            self.spawn(h)
        else:
            h.state, h.restart_at = ActorState.BACKOFF, time.monotonic() + delay
            log.info("%s restarts in %.2fs", h.name, delay)

    # Watching -----------------------------------------------------------

    def _sample(self, now: float) -> None:
        """Memory of every live actor: the limit and the leak trend judge anonymous
        resident memory (supervisor.watch), the trend net of what the actor holds by design."""
        wall = time.time()
        leak = self.sup.leak
        for h in self.handles.values():
            if not h.alive or h.state == ActorState.STOPPING:
                continue
            reading = self.sampler.read(h.pid)
            if reading is None:
                continue
            h.reading = reading
            h.memory.add(now, reading.anon_mb, h.expected_mb)
            h.timeline.append((wall, round(reading.rss_mb, 2), round(reading.anon_mb, 2)))
            if reading.anon_mb > h.max_rss_mb:
                log.warning("%s anonymous memory %.1f MB over its limit %.0f MB (RSS %.1f MB)",
                            h.name, reading.anon_mb, h.max_rss_mb, reading.rss_mb)
                self.stop_actor(h, "memory", kill=True)
            elif now >= h.next_leak_check:
                h.next_leak_check = now + max(1.0, leak.window_s / 60)
                rate = h.memory.leak_rate(leak.window_s)
                h.trend_mb_per_min = rate
                if rate is not None and rate > leak.max_growth_mb_per_min:
                    # "RSS grows" is what benchmarks/supervision.py finds in the log.
                    log.warning("%s RSS grows %.1f MB/min in anonymous memory, net of %.1f MB "
                                "held by design (limit %.1f): leak", h.name, rate,
                                h.memory.expected_peak_mb, leak.max_growth_mb_per_min)
                    self.stop_actor(h, "leak")

    def _check_hangs(self, now: float) -> None:
        for h in self.handles.values():
            if h.alive and h.state in (ActorState.STARTING, ActorState.RUNNING) and \
                    now - h.last_heartbeat > self.sup.heartbeat_timeout_s:
                log.error("%s sent no heartbeat for %.1fs: hang", h.name, now - h.last_heartbeat)
                self.stop_actor(h, "hang", kill=True)  # a stopped process ignores SIGTERM

    def _start_due(self, now: float) -> None:
        for h in self.handles.values():
            if h.state == ActorState.BACKOFF and h.restart_at is not None and now >= h.restart_at \
                    and not self.shutting_down:
                self.spawn(h)

    # Messages -----------------------------------------------------------

    def _on_control(self) -> None:
        for _ in range(CONTROL_PER_TURN):
            try:
                frames = self.control_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._control_message(frames)
            except ProtocolError as exc:
                self.dropped.drop("control", exc)
            except Exception as exc:  # noqa: BLE001  (no message ends the supervisor)
                self.dropped.drop("control", exc, unexpected=True)

    def _control_message(self, frames: list[bytes]) -> None:
        """One message from an actor: a heartbeat, an admin event, or an answer. Only a
        known actor's are taken; a heartbeat only from the process we started."""
        if len(frames) != 2:
            raise ProtocolError(f"a control message of {len(frames)} frames, not an "
                                "identity and a message")
        ident, frame = frames
        msg = self.control_codec.decode(frame)
        name = ident.decode(errors="replace")
        h = self.handles.get(name)
        if h is None:
            raise ProtocolError(f"a {type(msg).__name__} from an unknown peer")
        if isinstance(msg, protocol.Answer):
            self.operator.answered(name, msg)
        elif isinstance(msg, protocol.AdminEvent):
            at = msg.at if math.isfinite(msg.at) and msg.at > 0 else None
            self.admin.event(msg.event, msg.actor, msg.reason, msg.message, level=msg.level,
                             at=at)
        elif h.alive and msg.pid == h.pid:
            h.last_heartbeat = time.monotonic()
            if h.state == ActorState.STARTING:
                h.state = ActorState.RUNNING
            h.stats = check_stats(msg.stats)  # refused stats leave the last ones in place
            h.expected_mb = expected_memory_mb(h.stats)

    def next_token(self) -> int:
        self.token += 1
        return self.token

    def running_actor(self, wanted) -> ActorHandle | None:
        """A running actor of a kind wanted(kind) accepts (any of its instances)."""
        return next((h for h in self.handles.values()
                     if wanted(h.kind) and h.state == ActorState.RUNNING), None)

    def ask_ledger(self, command: str, args: dict) -> control.Deferred:
        """Relays an operator's command to the running actor that holds the ledger."""
        h = self.running_actor(lambda kind: kind.holds_ledger)
        if h is None:
            raise CommandError("no actor holding the ledger is running to ask")
        token = self.next_token()
        self.send_command(h, command, token=token, args=args)
        return control.Deferred(token, h.name)

    def _ping_all(self) -> None:
        frame = protocol.encode(protocol.Ping())
        for h in self.handles.values():
            if h.alive:
                try:
                    self.control_sock.send_multipart([h.name.encode(), frame], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    # The loop -----------------------------------------------------------

    def pump(self, timeout_s: float) -> None:
        """One turn: wait for a message, a process exit or the timeout, and handle it."""
        poller = zmq.Poller()
        poller.register(self.control_sock, zmq.POLLIN)
        poller.register(self.operator.sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)  # polled as a plain fd
        sentinels = {h.process.sentinel: h for h in self.handles.values() if h.alive}
        for fd in sentinels:
            poller.register(fd, zmq.POLLIN)
        for sock, _ in poller.poll(max(0, int(timeout_s * 1000))):
            if sock is self.control_sock:
                self._on_control()
            elif sock is self.operator.sock:
                self.operator.on_readable()
            elif sock == self._wake_r.fileno():
                try:
                    self._wake_r.recv(256)
                except BlockingIOError:
                    pass
            elif sock in sentinels:
                self._on_exit(sentinels[sock])
        now = time.monotonic()
        if now >= self._next_ping:
            self._ping_all()
            self._next_ping = now + self.sup.heartbeat_interval_s
            self.notifier.watchdog_tick(now)
        if now >= self._next_sample:
            self._sample(now)
            self._next_sample = now + self.sup.memory_check_interval_s
        self._check_hangs(now)
        if self.console:
            self.console.tick(now)
        self.operator.expire(now)
        self._escalate_stops(now)
        self._start_due(now)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        due = [self._next_ping, self._next_sample]
        due += [h.restart_at for h in self.handles.values() if h.restart_at]
        due += self.operator.deadlines()
        if self.console:
            due.append(self.console.deadline(now))
        if any(h.stop_sent_at for h in self.handles.values() if h.alive):
            due.append(now + 0.1)
        return max(0.0, min(due) - now)

    def run(self) -> int:
        self._open()
        self._next_ping = self._next_sample = time.monotonic()
        try:
            for rank in sorted({k.start_rank for k in self.kinds}):
                self._start_rank(rank)
            self.notifier.notify("READY=1", f"STATUS=supervising {len(self.handles)} actors")
            while not self.stop_requested:
                self.pump(min(self._next_timeout(), 1.0))
                if self.reload_requested:
                    self.reload_requested = False
                    try:
                        self.reloader.reload()
                    except CommandError:
                        pass  # logged and raised as an admin event; the old config stays
                self.reloader.tick()
                if self.max_cycles is not None and self._cycles_finished():
                    self.stop_requested = f"{self.max_cycles} cycles done"
            log.info("stopping: %s", self.stop_requested)
            self.notifier.notify("STOPPING=1")
            self.shutdown()
        finally:
            self._close()
        return self.exit_code

    def _start_rank(self, rank: int) -> None:
        """Starts the kinds of a rank and waits for their first heartbeats, so the next
        rank finds its inboxes bound (a fetcher's first claims then flow straight through)."""
        batch = [h for h in self.handles.values() if h.kind.start_rank == rank]
        for h in batch:
            self.spawn(h)
        self._wait(lambda: all(h.state != ActorState.STARTING for h in batch)
                   or bool(self.stop_requested), self.sup.heartbeat_timeout_s)

    def _cycles_finished(self) -> bool:
        counting = [h for h in self.handles.values() if h.kind.counts_cycles]
        return bool(counting) and all(h.stats.get("finished") for h in counting if h.state != ActorState.FAILED)

    # Stopping -----------------------------------------------------------

    def _wait(self, done, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(remaining, self._next_timeout(), 0.1))
        return True

    def stop_kinds(self, kinds: set[str]) -> None:
        self.stopping_kinds.update(kinds)
        targets = [h for h in self.handles.values() if h.kind.name in kinds]
        for h in targets:
            if h.alive:
                self.stop_actor(h, None)
            elif h.state in (ActorState.BACKOFF, ActorState.STARTING):
                h.state, h.restart_at = ActorState.STOPPED, None
        # _escalate_stops (in pump) sends SIGTERM, then SIGKILL, so this wait is bounded.
        self._wait(lambda: not any(h.alive for h in targets), 3 * self.sup.stop_timeout_s + 1)

    def drain(self) -> int | None:
        """Waits for the ledger to empty; returns how many items are still pending."""
        dedupe = next((h for h in self.handles.values() if h.kind.holds_ledger), None)
        if dedupe is None or not dedupe.alive:
            return None
        state: dict[str, Any] = {}

        def drained() -> bool:
            if state.get("token") != dedupe.stats.get("report_token"):
                if time.monotonic() - state.get("asked", 0) > 0.2:
                    ask()
                return False
            if dedupe.stats.get("pending", 1) == 0:
                return True
            ask()
            return False

        def ask() -> None:
            state["token"], state["asked"] = self.next_token(), time.monotonic()
            if dedupe.alive:
                self.send_command(dedupe, "report", token=state["token"])

        ask()
        if self._wait(drained, self.sup.drain_timeout_s):
            return 0
        remaining = dedupe.stats.get("pending")
        log.warning("drain timed out after %.0fs with %s items pending (kept in the ledger)",
                    self.sup.drain_timeout_s, remaining)
        return remaining

    def shutdown(self) -> None:
        self.shutting_down = True
        ranks = sorted({k.stop_rank for k in self.kinds})
        self.stop_kinds({k.name for k in self.kinds if k.stop_rank == ranks[0]})  # the sources
        remaining = self.drain()
        if remaining and self.max_cycles is not None and self.exit_code == EXIT_CLEAN:
            self.exit_code = EXIT_DRAIN_INCOMPLETE
        for rank in ranks[1:]:
            self.stop_kinds({k.name for k in self.kinds if k.stop_rank == rank})
        self.save_history()

    def history(self) -> dict[str, Any]:
        return {"started": self.started_wall, "actors": {
            h.name: {"kind": h.kind.name, "max_rss_mb": h.max_rss_mb,
                     "timeline": list(h.timeline), "markers": list(h.markers),
                     "stats": h.stats} for h in self.handles.values()},
            "admin": self.admin.recent()}

    def save_history(self) -> None:
        path = self.config.path(self.config.data_dir) / HISTORY_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.history()))
        os.replace(tmp, path)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"supervisor": {"pid": os.getpid(), "host": self.config.host_name(),
                               "roles": [k.name for k in self.kinds],
                               "uptime_s": round(now - self.started, 3),
                               "state": "stopping" if self.shutting_down else "running",
                               "config": self.config.source,
                               "dropped_messages": dict(self.dropped.counts)},
                "actors": [h.status(now) for h in self.handles.values()]}

    def _close(self) -> None:
        for h in self.handles.values():
            if h.alive:  # only after an error above: never leave a child behind
                h.process.kill()
                h.process.join(5)
        signal.set_wakeup_fd(-1)
        if self.metrics_server:
            self.metrics_server.shutdown()
        if self.console:
            self.console.close()
        self.admin.close()
        self.zctx.destroy(linger=0)
        remove_socket_files(self.config.path(self.config.run_dir))
        self.lock.release()


def remove_socket_files(run_dir: Path) -> None:
    """The ipc:// socket files in run_dir: libzmq leaves a bound socket's file behind when
    its process exits without closing it (an actor killed, say). Still under the data_dir
    lock, so no other supervisor of this configuration is using them."""
    for path in Path(run_dir).glob("*.sock"):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()


@contextlib.contextmanager
def _listening(key: str, host: str, port: int):
    """A port that cannot be listened on (in use, not allowed) is a configuration error."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(key, f"cannot listen on {host}:{port}: "
                               f"{exc.strerror or exc}") from None


def run_supervisor(config, **kwargs) -> int:
    try:
        return Supervisor(config, **kwargs).run()
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except StoreLockedError as exc:
        log.error("%s", exc)
        return 2
    except StoreUnavailableError as exc:  # the data_dir's disk is full or read-only
        log.error("cannot take the data_dir lock: %s", exc)
        return 2
