"""Shared parts of the supervision and pipeline benchmarks: a real supervisor process and
its control socket, percentiles, CPU time, and a test actor that leaks on cue.

This module is also imported inside actor processes (``benchmarks._common:GatedLeakyActor``
is started by the fork server), so its top level imports only the standard library and
actors.base, which the fork server has preloaded: importing it there costs nothing.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from actors.base import Actor  # noqa: E402
from tests.waiting import wait_for  # noqa: E402,F401  (the benchmarks import it from here)

STATUS_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 30.0


# Numbers -----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100), linear between closest ranks; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid, in seconds, from /proc schedstat (nanoseconds), so
    a 20 s idle window is not rounded to 10 ms clock ticks."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between listdir and open
    return total / 1e9


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of pid by thread group: "main", "zmq" (libzmq's I/O and reaper
    threads) and "other" (Python threads: the metrics server, sink workers)."""
    out = {"main": 0.0, "zmq": 0.0, "other": 0.0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                comm = f.read().strip()
        except (OSError, ValueError, IndexError):
            continue
        group = "main" if int(task) == pid else "zmq" if comm.startswith("ZMQbg") else "other"
        out[group] += ns / 1e9
    return out


class Neighbours:
    """CPU used by processes outside this benchmark's process tree between construction
    and cpu_pct(): this machine is shared, and a busy neighbour skews every timing."""

    def __init__(self):
        self.started = time.monotonic()
        self.cpu0 = self._foreign()

    @staticmethod
    def _foreign() -> dict[tuple[int, float], float]:
        import psutil

        procs = {}
        for p in psutil.process_iter(["ppid", "create_time", "cpu_times"]):
            procs[p.pid] = p.info
        me, out = os.getpid(), {}
        for pid, info in procs.items():
            ancestor, hops = pid, 0
            while ancestor not in (me, 0, 1) and ancestor in procs and hops < 64:
                ancestor, hops = procs[ancestor]["ppid"], hops + 1
            if ancestor == me or not info["cpu_times"]:
                continue
            times = info["cpu_times"]
            out[(pid, info["create_time"])] = times.user + times.system
        return out

    def cpu_pct(self) -> float:
        """% of one core used by other processes so far (those that ended are missed)."""
        now = self._foreign()
        used = sum(cpu - self.cpu0.get(key, 0.0) for key, cpu in now.items())
        return 100.0 * used / (time.monotonic() - self.started)


def neighbour_note(pct: float) -> str:
    warn = "  WARNING: a busy machine; timings are skewed" if pct > 10 else ""
    return f"other processes on this machine used {pct:.0f}% of a core during the run{warn}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tempdir(prefix: str) -> tempfile.TemporaryDirectory:
    # ipc:// socket paths are limited to ~107 bytes, and the config refuses run_dir > 80.
    return tempfile.TemporaryDirectory(prefix=prefix, dir="/tmp")


# A running supervisor ----------------------------------------------------------------


class StatusClient:
    """One persistent REQ socket to the supervisor's control socket, for fast polling
    (supervisor.control.request opens a socket per call)."""

    def __init__(self, config):
        import zmq

        from actors import protocol

        self.zmq, self.protocol = zmq, protocol
        self.endpoint = config.endpoint("cli")
        self.ctx = zmq.Context()
        self.codec = protocol.Codec(protocol.Reply)
        self.frame = protocol.encode(protocol.Request(command="status", args={}))
        self.sock = None

    def _socket(self):
        if self.sock is None:
            zmq = self.zmq
            self.sock = self.ctx.socket(zmq.REQ)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.RCVTIMEO, int(STATUS_TIMEOUT_S * 1000))
            self.sock.setsockopt(zmq.SNDTIMEO, int(STATUS_TIMEOUT_S * 1000))
            self.sock.connect(self.endpoint)
        return self.sock

    def status(self) -> dict | None:
        """The supervisor's status, or None when it does not answer in time."""
        sock = self._socket()
        try:
            sock.send(self.frame)
            reply = self.codec.decode(sock.recv())
        except self.zmq.ZMQError:
            sock.close()
            self.sock = None  # a REQ socket that missed its reply cannot send again
            return None
        return reply.result if reply.ok else None

    def actor(self, name: str) -> tuple[dict | None, float]:
        """(the actor's status entry, monotonic time the reply arrived)."""
        status = self.status()
        received = time.monotonic()
        if status:
            for a in status["actors"]:
                if a["name"] == name:
                    return a, received
        return None, received

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.ctx.term()


class SupervisorProcess:
    """A real supervisor started as its own OS process, in workdir, logging to a file.

    ``extra_kinds`` None: ``python -m supervisor.cli start`` (the production entry point);
    a list: ``python -m tests.supervise CONFIG JSON`` (the real supervisor plus test actors).
    """

    def __init__(self, workdir: Path, cfg: dict, *, extra_kinds: list[dict] | None = None,
                 name: str = "supervisor"):
        import json

        import yaml

        from catalyst_config import load_config

        self.workdir = workdir
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.config = load_config(self.config_path)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        if extra_kinds is None:
            args = ["-m", "supervisor.cli", "start", "-c", str(self.config_path)]
        else:
            args = ["-m", "tests.supervise", str(self.config_path), json.dumps(extra_kinds)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        self.client = StatusClient(self.config)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"supervisor exited with {self.proc.returncode}:\n"
                               + self.log_tail())
        return self.client.status()

    def actor(self, name: str) -> tuple[dict | None, float]:
        return self.client.actor(name)

    def wait_running(self, timeout: float = 60.0) -> dict:
        def all_running():
            s = self.status()
            return s if s and all(a["state"] == "running" for a in s["actors"]) else None
        return wait_for(all_running, timeout, 0.05, "every actor running")

    def descendants(self):
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> int | None:
        """SIGTERM (a graceful stop, as systemd sends), then SIGKILL of anything left."""
        kids = self.descendants()
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        else:
            code = self.proc.returncode
        for kid in kids:  # only after an error: never leave a child behind
            try:
                kid.kill()
            except Exception:
                pass
        self.client.close()
        self._log.close()
        return code


def classify_family(sup_pid: int) -> dict[str, list[int]]:
    """The supervisor's descendants by role: actors (by name), fork server, others."""
    import psutil

    roles: dict[str, list[int]] = {"forkserver": [], "resource_tracker": [], "other": []}
    for p in psutil.Process(sup_pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith("catalyst: "):
            roles.setdefault("actor:" + cmd[len("catalyst: "):].strip(), []).append(p.pid)
        elif "forkserver" in cmd:
            roles["forkserver"].append(p.pid)
        elif "resource_tracker" in cmd:
            roles["resource_tracker"].append(p.pid)
        else:
            roles["other"].append(p.pid)
    return roles


# A test actor ---------------------------------------------------------------------------


def _rss_mb() -> float:
    """This process's memory as the supervisor judges it: anonymous resident (RssAnon)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class GatedLeakyActor(Actor):
    """Leaks options["mb_per_s"] (touching every page) once options["gate"] exists, and
    appends "pid monotonic_time rss_mb" to options["stamp"] the first time its RSS is over
    options["limit_mb"]: the moment the memory limit was crossed, seen from inside.

    Each incarnation waits a random part of options["jitter_s"] before it leaks, so its
    crossing does not fall at the same phase of the supervisor's sampling every time (a
    replacement starts right after a sample, and would otherwise cross a fixed time later).
    """


    def setup(self) -> None:
        opts = self.spec.options
        self.rate = float(opts.get("mb_per_s", 100.0))
        self.gate = opts.get("gate")
        self.limit = float(opts.get("limit_mb", 1e12))
        self.stamp = opts.get("stamp")
        self.tick_s = float(opts.get("tick_s", 0.01))
        self.hoard: list[bytes] = []
        self.last = time.monotonic() + random.uniform(0.0, float(opts.get("jitter_s", 0.0)))
        self.crossed = False

    def next_deadline(self, now: float) -> float:
        return now + self.tick_s

    def tick(self, now: float) -> None:
        if now < self.last:
            return
        if self.gate and not os.path.exists(self.gate):
            self.last = now
            return
        grow = int((now - self.last) * self.rate * 1024 * 1024)
        if grow >= 4096:
            self.hoard.append(b"x" * grow)
            self.last = now
        if not self.crossed and self.stamp:
            rss = _rss_mb()
            if rss > self.limit:
                self.crossed = True
                with open(self.stamp, "a") as f:
                    f.write(f"{os.getpid()} {time.monotonic():.6f} {rss:.1f}\n")
