"""How a process's sockets meet their endpoints: ipc:// as they are, tcp:// under CurveZMQ.

ipc:// sockets live in run_dir, which is 0700: the file system keeps strangers out. A tcp://
endpoint is reachable by anyone on the network, so it is always CurveZMQ (encrypted, and
both ends authenticated), with one certificate per host (docs/multi-host.md):

- ``catalyst-supervisor keys DIR --name HOST`` writes HOST.key_secret (``curve.secret_key``,
  mode 0600, never leaves the host) and HOST.key (its public half).
- ``curve.public_keys_dir`` holds the public HOST.key of every host allowed to talk to this
  one, its own included. It is the allow list and the address book at once:
  - the side that binds ``tcp://HOST:PORT`` is a CurveZMQ server holding this host's
    certificate, which must be the one published as HOST.key. A ZAP handler (``ZapGuard``)
    lets a client in only when its public key is one of the files in the directory; any
    other key is refused, counted (``curve_refused``) and logged once a minute per key.
  - the side that connects is a CurveZMQ client holding this host's certificate, and
    expects the server's public key to be ``public_keys_dir/HOST.key``, HOST as the endpoint
    writes it. So a client reaches only the host it means (an impostor without that
    host's secret fails the handshake) and the server knows which host it is talking to.
- A peer that speaks no CurveZMQ, or expects another key of this host, fails the handshake
  before ZAP is asked: counted as ``curve_handshake_failed`` and logged once a minute per
  cause. Its frames never reach the socket.

Never a secret key in a log line: only public keys (z85) and file paths are named.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from zmq.utils import z85

from actors.errors import ConfigError

if TYPE_CHECKING:
    from catalyst_config import Config

log = logging.getLogger("catalyst.transport")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks for a verdict (ZMTP RFC 27)
ZAP_VERSION = b"1.0"
REFUSED_LOG_QUIET_S = 60.0  # a refused key or failure cause logged this recently is only counted
CAUSES_KEPT = 256  # refused keys and causes remembered for that; forgotten all at once past it
COUNTERS = ("curve_refused", "curve_handshake_failed")
# What a monitor reports from a server socket: a peer that broke the protocol. A refusal by
# ZAP (EVENT_HANDSHAKE_FAILED_AUTH) is counted by the ZAP handler itself, which knows the
# key; a peer that merely hung up mid-handshake (EVENT_HANDSHAKE_FAILED_NO_DETAIL, an errno:
# a refused client closing its end, a port probe) is no one to count.
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
FAILURE_CAUSES = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "it does not use CurveZMQ",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "a cryptographic error (it expects another server "
                                           "key for this host, or is not a peer at all)",
}


def load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """zmq.auth's certificate reader, imported on first use: zmq.auth brings asyncio
    (about 3 MB), which a process with only ipc:// endpoints never needs."""
    from zmq.auth import load_certificate as load

    return load(path)


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


class _Quiet:
    """Says whether a cause is due for a log line: the first time, then once every
    REFUSED_LOG_QUIET_S, with how many went by unlogged in between. Bounded."""

    def __init__(self):
        self._logged: dict[object, tuple[float, int]] = {}  # cause -> (logged at, quiet since)

    def due(self, cause: object) -> int | None:
        now = time.monotonic()
        logged_at, quiet = self._logged.get(cause, (float("-inf"), 0))
        if now - logged_at < REFUSED_LOG_QUIET_S:
            self._logged[cause] = (logged_at, quiet + 1)
            return None
        if len(self._logged) >= CAUSES_KEPT:
            self._logged.clear()
        self._logged[cause] = (now, 0)
        return quiet


class ZapGuard:
    """The ZAP handler of one zmq.Context, on its own thread, plus a watch on its CurveZMQ
    servers' failed handshakes. Refusals are added to ``counts`` (the actor's counters,
    so its heartbeat stats carry them to status).

    Its sockets are made outside the context's list of sockets, so ``ctx.destroy()`` closes
    only the owner's; the context's termination then wakes this thread's poll with ETERM,
    and the thread closes its own sockets and ends. That is also why the poll has no
    timeout: it lasts exactly as long as the context (invariant 6 is kept by the context's
    owner, who always terminates it)."""

    def __init__(self, ctx: zmq.Context, keys_dir: Path, counts: MutableMapping[str, int],
                 who: str):
        self.ctx = ctx
        self.keys_dir = keys_dir
        self.counts = counts
        self.who = who
        for key in COUNTERS:  # made here, so the thread only ever updates existing keys
            counts.setdefault(key, 0)
        self._allowed: set[bytes] = set()
        self._dir_stamp: int | None = -1
        self._refresh()
        self._quiet = _Quiet()
        self._pending: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        # Bound before any server socket exists: a CurveZMQ server with no ZAP handler in
        # its context would let every client in.
        self.zap = zmq.Socket(ctx, zmq.REP)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)
        self.thread = threading.Thread(target=self._run, name=f"{who}-zap", daemon=True)
        self.thread.start()

    # Called from the owner's thread ---------------------------------------------------

    def watch(self, sock: zmq.Socket) -> None:
        """Counts and logs the failed handshakes of a server socket (before it binds)."""
        address = f"inproc://catalyst-curve-monitor-{id(sock):x}"
        sock.monitor(address, HANDSHAKE_FAILURES)
        pair = zmq.Socket(self.ctx, zmq.PAIR)  # handed to the thread, which closes it
        pair.linger = 0
        pair.connect(address)
        with self._lock:
            self._pending.append(pair)
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wake is already pending

    # The thread -------------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.zap, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        monitors: list[zmq.Socket] = []
        try:
            while True:
                for sock, _ in poller.poll():
                    if sock is self.zap:
                        self._on_zap()
                    elif sock == self._wake_r.fileno():
                        self._drain_wakes()
                        with self._lock:
                            new, self._pending = self._pending, []
                        for pair in new:
                            poller.register(pair, zmq.POLLIN)
                            monitors.append(pair)
                    elif self._on_monitor(sock):
                        poller.unregister(sock)
                        monitors.remove(sock)
                        sock.close(0)
        except zmq.ContextTerminated:
            pass  # the owner is closing: the only way out
        except Exception:  # noqa: BLE001  (a bug here must not pass silently)
            log.exception("%s: the CurveZMQ guard failed; tcp:// peers can no longer "
                          "connect to this process", self.who)
        finally:
            with self._lock:
                monitors += self._pending
                self._pending = []
            for s in (self.zap, *monitors):
                s.close(0)
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wakes(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_zap(self) -> None:
        request = self.zap.recv_multipart()
        request_id = request[1] if len(request) > 1 else b""
        try:
            status, text, user = self._verdict(request)
        except Exception:  # noqa: BLE001  (refuse, never crash the guard: REP must answer)
            log.exception("%s: a CurveZMQ verdict failed; the peer is refused", self.who)
            status, text, user = b"500", b"internal error", b""
        self.zap.send_multipart([ZAP_VERSION, request_id, status, text, user, b""])

    def _verdict(self, request: list[bytes]) -> tuple[bytes, bytes, bytes]:
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return b"400", b"malformed ZAP request", b""
        address = request[3].decode("ascii", "replace")
        mechanism, credentials = request[5], request[6:]
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            name = mechanism.decode("ascii", "replace")[:20]
            self._refuse(address, name, f"it offered {name}, not CurveZMQ")
            return b"400", b"CurveZMQ only", b""
        key = z85.encode(credentials[0]).decode("ascii")
        if key.encode() in self._allowed_keys():
            return b"200", b"OK", key.encode()  # the user id: its public key
        self._refuse(address, key, f"its public key {key} is not in {self.keys_dir}")
        return b"400", b"key not allowed", b""

    def _refuse(self, address: str, cause: str, why: str) -> None:
        self.counts["curve_refused"] += 1
        quiet = self._quiet.due(("refused", cause))
        if quiet is not None:
            since = f" ({quiet} more refusals of it since the last report)" if quiet else ""
            log.warning("%s refused a tcp:// peer at %s: %s%s", self.who, address, why, since)

    def _on_monitor(self, pair: zmq.Socket) -> bool:
        """One monitor event; True when the monitor has stopped (its socket closed)."""
        from zmq.utils.monitor import parse_monitor_message

        event = parse_monitor_message(pair.recv_multipart())
        if event["event"] == zmq.EVENT_MONITOR_STOPPED:
            return True
        if event["event"] & HANDSHAKE_FAILURES:
            self.counts["curve_handshake_failed"] += 1
            endpoint = event["endpoint"].decode("ascii", "replace")
            value = int(event["value"])
            quiet = self._quiet.due(("handshake", endpoint, value))
            if quiet is not None:
                cause = FAILURE_CAUSES.get(value, f"protocol error {value:#x}")
                since = f" ({quiet} more since the last report)" if quiet else ""
                log.warning("%s refused a peer on %s that failed the CurveZMQ handshake: "
                            "%s%s", self.who, endpoint, cause, since)
        return False

    def _allowed_keys(self) -> set[bytes]:
        self._refresh()
        return self._allowed

    def _refresh(self) -> None:
        """Reads the allowed keys again when the directory changed (a key added or
        removed takes effect at the next handshake); an unreadable directory allows none."""
        try:
            stamp: int | None = self.keys_dir.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp == self._dir_stamp:
            return
        self._dir_stamp = stamp
        allowed = set()
        try:
            if stamp is None:
                raise FileNotFoundError("no such directory")
            for file in self.keys_dir.glob("*.key"):
                public, _ = load_certificate(file)
                allowed.add(public)
        except (OSError, ValueError) as exc:
            log.error("%s: cannot read the allowed CurveZMQ keys in %s (%s); refusing every "
                      "tcp:// peer until it can", self.who, self.keys_dir, exc)
            allowed = set()
        self._allowed = allowed


class Transport:
    """Binds and connects one process's sockets (all of one zmq.Context). A tcp:// endpoint
    is secured as the module docstring says; the ZapGuard starts with the first tcp://
    bind, so a process that binds none runs no extra thread."""

    def __init__(self, config: Config, ctx: zmq.Context,
                 counts: MutableMapping[str, int] | None = None, who: str = "catalyst"):
        self.config = config
        self.ctx = ctx
        self.counts = counts if counts is not None else {}
        self.who = who
        self.guard: ZapGuard | None = None
        self._own: tuple[bytes, bytes] | None = None
        self._servers: dict[str, bytes] = {}  # server key file -> its public key (few hosts)

    def bind(self, sock: zmq.Socket, endpoint: str) -> None:
        if is_tcp(endpoint):
            public, secret = self._own_keys()
            expected = self.config.server_key_file(endpoint)
            if self._server_key(endpoint) != public:
                raise ConfigError("curve.secret_key", f"{endpoint} is bound with this host's "
                                  f"certificate, but its clients expect the key in {expected}: "
                                  "publish this host's public key under the host name its "
                                  "endpoints use (docs/multi-host.md)")
            self._role(sock, server=True)
            if not sock.curve_server:  # not yet secured: once per socket
                if self.guard is None:
                    self.guard = ZapGuard(self.ctx, self.config.path(
                        self.config.curve.public_keys_dir or "."), self.counts, self.who)
                sock.curve_secretkey = secret
                sock.curve_publickey = public
                sock.curve_server = True
                self.guard.watch(sock)
        else:
            self._plain(sock)
        sock.bind(endpoint)

    def connect(self, sock: zmq.Socket, endpoint: str) -> None:
        if is_tcp(endpoint):
            public, secret = self._own_keys()
            self._role(sock, server=False)
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            # Taken per connection when it is made, so one socket may reach several hosts.
            sock.curve_serverkey = self._server_key(endpoint)
        else:
            self._plain(sock)
        sock.connect(endpoint)

    def _own_keys(self) -> tuple[bytes, bytes]:
        if self._own is None:
            if not self.config.curve.secret_key:
                raise ConfigError("curve.secret_key", "required by tcp:// endpoints")
            path = self.config.path(self.config.curve.secret_key)
            try:
                public, secret = load_certificate(path)
            except (OSError, ValueError) as exc:
                raise ConfigError("curve.secret_key", f"cannot load {path}: {exc}") from None
            if not secret:
                raise ConfigError("curve.secret_key", f"{path} has no secret key")
            self._own = (public, secret)
        return self._own

    def _server_key(self, endpoint: str) -> bytes:
        path = self.config.server_key_file(endpoint)
        key = self._servers.get(str(path))
        if key is None:
            try:
                key, _ = load_certificate(path)
            except (OSError, ValueError) as exc:
                raise ConfigError("curve.public_keys_dir", f"{endpoint} needs its server's "
                                  f"public key {path}: {exc}") from None
            self._servers[str(path)] = key
        return key

    @staticmethod
    def _role(sock: zmq.Socket, *, server: bool) -> None:
        # The mechanism is the socket's, not the connection's: one socket, one role.
        if sock.mechanism == zmq.CURVE and bool(sock.curve_server) != server:
            raise ValueError("a socket is a CurveZMQ server or a client, not both")

    @staticmethod
    def _plain(sock: zmq.Socket) -> None:
        if sock.mechanism == zmq.CURVE:
            raise ValueError("a CurveZMQ socket cannot also use ipc://: its peers there would "
                             "fail the handshake")
