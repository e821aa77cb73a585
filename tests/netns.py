"""Hosts for the multi-host tests: Linux network namespaces the test makes itself, joined
by a bridge, each with its own address and nothing else reachable (no route out).

    with Network("cs", ["a", "b", "db"]) as net:
        net.address("db")                      # 10.231.N.3: a /24 no other network here uses
        net.outside                            # 10.231.N.254: the test process itself
        proc = net.popen("a", [sys.executable, ...], env=...)
        net.cut("a"); net.mend("a")            # the host drops off the network, comes back
        net.kill("a")                          # every process started on host a: SIGKILL

Needs root (CAP_NET_ADMIN) and the `ip` tool; `available()` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

SUBNETS = "10.231"  # each Network takes a free 10.231.N.0/24 of these
COMMAND_TIMEOUT_S = 20
# Held while a Network picks its subnet and puts it on its bridge, so two runs on one
# machine never take the same one.
LOCK_FILE = Path("/run/lock/catalyst-netns.lock")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=COMMAND_TIMEOUT_S)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "the ip tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"cs-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces are not permitted here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _subnets_in_use() -> set[str]:
    """The 10.231.N prefixes any address or route of this machine has."""
    seen = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show", "table",
                                                        "all", check=False).stdout
    return set(re.findall(rf"\b({re.escape(SUBNETS)}\.\d+)\.\d+", seen))


@contextlib.contextmanager
def _subnet_lock():
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Network:
    """Namespaces named <tag>-<host>, on bridge <tag>-br, addresses <subnet>.1, .2, ..."""

    def __init__(self, tag: str, hosts: list[str]):
        self.tag = f"{tag}{os.getpid() % 10000}"  # runs beside each other never meet
        self.hosts = list(hosts)
        self.bridge = f"{self.tag}-br"
        self.subnet = ""  # 10.231.N, chosen on entry
        self.procs: dict[str, list[subprocess.Popen]] = {h: [] for h in hosts}

    @property
    def outside(self) -> str:
        """The test process's own address on the hosts' network (the root namespace)."""
        return f"{self.subnet}.254"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    def _veth(self, host: str) -> str:
        return f"{self.tag}-{self.hosts.index(host)}"  # the bridge side (<= 15 characters)

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("link", "set", self.bridge, "up")
            # The test itself (feeds, fakes of Gemini and Discord) is reachable from every
            # host at this address; nothing is routed beyond the bridge.
            with _subnet_lock():
                used = _subnets_in_use()
                free = [f"{SUBNETS}.{n}" for n in range(1, 255) if f"{SUBNETS}.{n}" not in used]
                if not free:
                    raise RuntimeError(f"every {SUBNETS}.N.0/24 is in use on this machine")
                self.subnet = free[os.getpid() % len(free)]
                _ip("addr", "add", f"{self.outside}/24", "dev", self.bridge)
            for host in self.hosts:
                ns, veth = self.ns(host), self._veth(host)
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def popen(self, host: str, argv: list[str], *, log: Path | None = None,
              **kwargs) -> subprocess.Popen:
        """A process on host, in a session of its own (so kill() reaches its children)."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                **kwargs)
        if log:
            out.close()
        self.procs[host].append(proc)
        return proc

    def run(self, host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", COMMAND_TIMEOUT_S)
        return subprocess.run(["ip", "netns", "exec", self.ns(host), *argv],
                              capture_output=True, text=True, **kwargs)

    def kill(self, host: str) -> None:
        """The host dies: SIGKILL to every process started on it, children included."""
        for proc in self.procs[host]:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(COMMAND_TIMEOUT_S)
        self.procs[host] = []
        # Anything left in the namespace (a process that made its own session) goes too.
        pids = _ip("netns", "pids", self.ns(host), check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def cut(self, host: str) -> None:
        _ip("link", "set", self._veth(host), "down")

    def mend(self, host: str) -> None:
        _ip("link", "set", self._veth(host), "up")

    def close(self) -> None:
        for host in self.hosts:
            self.kill(host)
            _ip("netns", "del", self.ns(host), check=False)
            _ip("link", "del", self._veth(host), check=False)
        _ip("link", "del", self.bridge, check=False)
