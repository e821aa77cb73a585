"""A real PostgreSQL server for the tests and benchmarks: the machine's own initdb and
postgres, a cluster in a temporary directory, reached only through a unix socket in that
directory (listen_addresses is empty: no TCP port is opened, so runs beside each other
never meet), stopped and removed at the end.

For the multi-host test it can also listen on TCP: `listen` (an address of the machine, or
of the network namespace its commands run in: `prefix`, e.g. ["ip", "netns", "exec", NS])
with a superuser `password` required from the clients in `allow` (a CIDR); the unix
socket stays open, with trust, for the test's own checks. `network_dsn` carries the
password.

Postgres refuses to run as root: as root the cluster belongs to the unprivileged user
`nobody`; otherwise to the current user. The binaries come from `pg_config --bindir`, else
the newest /usr/lib/postgresql/*/bin (Debian's postgresql package).

    server = PgServer.create()      # or the pg_server / pg_dsn fixtures below
    server.dsn                      # libpq connection string
    PgServer.create(listen="10.231.7.3", password=pw, allow="10.231.7.0/24",
                    prefix=["ip", "netns", "exec", ns]).network_dsn
    server.stop("immediate"); server.start()
    server.close()

Used by tests/test_seen_store_postgres.py and benchmarks/dedupe_backends.py. Without the
binaries the fixtures skip, saying so, except under CI (the CI variable set), where a
missing server is a failure: CI must install Debian's postgresql package.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0  # initdb's cluster accepting connections
STOP_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 120  # initdb, pg_ctl
SERVER_USER = "nobody"  # who owns the cluster when we are root
SUPERUSER = "catalyst"  # the cluster's superuser role (trust authentication on the socket)
# Throwaway clusters: no fsync, so tests do not load a shared disk; a crash of the server
# process (pg_ctl stop -m immediate) still loses nothing committed, since every commit is
# written to the kernel first (synchronous_commit stays on: with it off, the crash test
# lost a committed claim). Only a crash of the machine could lose data. The benchmark
# passes its own settings.
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "60",
                 "shared_buffers": "64MB"}


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are; None when this machine has no server."""
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))

    def version(path: str) -> tuple:
        part = Path(path).parent.name
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                                           key=version, reverse=True)]
    for path in candidates:
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "pg_isready")):
            return path
    return None


def free_port() -> int:
    """A port number for the socket's name (.s.PGSQL.<port>); nothing listens on TCP."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One throwaway PostgreSQL cluster: initdb'd in a temporary directory, started, and
    stopped and removed by close()."""

    def __init__(self, bindir: Path, root: Path, port: int, *, listen: str | None = None,
                 password: str | None = None, allow: str | None = None,
                 prefix: list[str] | tuple[str, ...] = ()):
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sock"
        self.log = root / "server.log"
        self.port = port
        self.user = SERVER_USER if os.geteuid() == 0 else None
        self.listen, self.password, self.allow = listen, password, allow
        self.prefix = list(prefix)
        self._schemas = itertools.count(1)

    @classmethod
    def create(cls, settings: dict[str, str] | None = None,
               bindir: Path | None = None, **network) -> PgServer:
        """network: listen, password, allow, prefix (see the module's docstring)."""
        bindir = bindir or find_bindir()
        if bindir is None:
            raise RuntimeError(missing_reason())
        root = Path(tempfile.mkdtemp(prefix="cs-pg-"))
        server = cls(bindir, root, free_port(), **network)
        try:
            server._init(TEST_SETTINGS if settings is None else settings)
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    @property
    def dsn(self) -> str:
        return f"host={self.sockets} port={self.port} dbname=postgres user={SUPERUSER}"

    @property
    def network_dsn(self) -> str:
        """The DSN a client on the network uses: TCP to `listen`, with the password."""
        assert self.listen, "this server does not listen on TCP"
        dsn = f"host={self.listen} port={self.port} dbname=postgres user={SUPERUSER}"
        return f"{dsn} password={self.password}" if self.password else dsn

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / args[0]), *args[1:]]
        kwargs = {}
        if self.prefix:  # the prefix (ip netns exec) needs root: drop to the user after it
            if self.user:
                argv = ["setpriv", "--reuid", self.user, "--regid", "nogroup",
                        "--clear-groups", *argv]
            argv = [*self.prefix, *argv]
        elif self.user:
            kwargs = {"user": self.user, "group": "nogroup", "extra_groups": []}
        done = subprocess.run(argv, cwd=self.root,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                   "LANG": "C", "LC_ALL": "C"}, **kwargs)
        if check and done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def _init(self, settings: dict[str, str]) -> None:
        self.sockets.mkdir()
        if self.user:
            for path in (self.root, self.sockets):
                shutil.chown(path, self.user, "nogroup")
        auth = ["-A", "trust"]
        if self.password:  # the superuser's password, asked of TCP clients (scram-sha-256)
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if self.user:
                shutil.chown(pwfile, self.user, "nogroup")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, *auth, "-E", "UTF8",
                      "--locale=C", "--no-sync", "--no-instructions")
        finally:
            if self.password:
                pwfile.unlink(missing_ok=True)
        listen = f"'{self.listen}'" if self.listen else "''"
        conf = {"port": str(self.port), "listen_addresses": listen,
                "unix_socket_directories": f"'{self.sockets}'", **settings}
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# tests/pg_server.py\n")
            f.writelines(f"{k} = {v}\n" for k, v in conf.items())
        if self.allow:
            method = "scram-sha-256" if self.password else "trust"
            with open(self.data / "pg_hba.conf", "a") as f:
                f.write(f"\n# tests/pg_server.py\nhost all all {self.allow} {method}\n")

    def ready(self) -> bool:
        return self._run("pg_isready", "-q", "-h", str(self.sockets), "-p", str(self.port),
                         "-d", "postgres", "-U", SUPERUSER, check=False).returncode == 0

    def start(self) -> None:
        """Starts the cluster and waits (START_TIMEOUT_S at most) until it accepts
        connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-W", "start")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within "
                                   f"{START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m mode (fast: sessions ended, a clean shutdown; immediate: as a
        crash, recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(STOP_TIMEOUT_S),
                  "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def new_schema(self) -> str:
        """A DSN whose tables land in a fresh schema of their own: tests share one server
        without seeing each other's tables."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._schemas)}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.dsn} options='-c search_path={name}'"

    def close(self) -> None:
        try:
            if self.data.exists() and self.running():
                self.stop("fast")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def missing_reason() -> str:
    return ("no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin): "
            "install Debian's postgresql package")


@pytest.fixture(scope="session")
def pg_server():
    """One real server for the whole session; skipped without the binaries, except under
    CI, where that is a failure."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {missing_reason()}")
        pytest.skip(missing_reason())
    server = PgServer.create(bindir=bindir)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server) -> str:
    """A DSN on the session's server, with a schema of this test's own."""
    if not pg_server.running():  # a test that stopped it failed before starting it again
        pg_server.start()
    return pg_server.new_schema()
