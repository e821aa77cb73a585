"""Claims per second through real dedupe actors on each SeenStore backend: seen.db (one
actor: the file has one owner) and a shared PostgreSQL ledger with one and with four dedupe
actors, at claim batches of 1, 100 and 500 new keys.

Each dedupe actor is the real DedupeActor in its own process with its own run directory (as
on its own host), beside a stand-in for its supervisor and llm inbox (benchmarks/
dedupe_throughput.py's); this script is the fetchers, one thread per actor pipelining claim
frames over ZeroMQ. The PostgreSQL server is started here from the machine's own binaries
(tests/pg_server.py), durable as in production (fsync and synchronous_commit on), with a
fresh schema for every measurement. Four actors claim disjoint keys of one ledger; the
tests check that overlapping claims are exactly once.

For the four-actor batch-500 run the CPU time of each group of processes is shown: on a
2-core machine they all share the same two cores.

    python benchmarks/dedupe_backends.py [--keys 200000] [--keys-batch1 4000] [--repeat 3]

Target (docs/architecture.md): four PostgreSQL dedupe actors >= 100,000 claims/s together
and >= 1.5x one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import multiprocess
import psutil
import psycopg
import zmq
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors import protocol  # noqa: E402
from actors.base import ActorSpec, actor_main  # noqa: E402
from benchmarks._common import Neighbours, neighbour_note  # noqa: E402
from benchmarks.dedupe_throughput import (claim_frames, make_items, make_keys,  # noqa: E402
                                           send_claims, stand_in)
from catalyst_config import config_from_dict  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402

BATCHES = (1, 100, 500)
DSN_ENV = "CATALYST_PG_DSN"
# Production-like server: durable commits; a larger buffer pool and WAL, so a run of a few
# hundred thousand rows meets no forced checkpoint; WAL segments kept for reuse (a server
# that has run a while writes into recycled segments, where a new cluster creates and
# zero-fills each 16 MB one as it goes: 8% of the server's time in a first run, measured
# here with perf).
SERVER_SETTINGS = {"shared_buffers": "2GB", "max_wal_size": "4GB", "min_wal_size": "2GB",
                   "max_connections": "60"}
WARM_WAL_SEGMENTS = 96  # 1.5 GB: more than the largest measurement writes


def warm_wal(server: PgServer) -> None:
    """Creates WAL segments the measurements will reuse, as on a server that has run a
    while: each switch starts a new segment, and the checkpoint recycles them."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_warm (n int)")
        for n in range(WARM_WAL_SEGMENTS):
            conn.execute("INSERT INTO wal_warm VALUES (%s)", (n,))
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("DROP TABLE wal_warm")
        conn.execute("CHECKPOINT")
    os.sync()  # nothing of it left for the kernel to write back during a measurement


class ActorUnderTest:
    """A real dedupe actor process and its stand-in peers, configured by `dedupe`."""

    def __init__(self, root: str, dedupe: dict):
        self.config = config_from_dict({"run_dir": f"{root}/run", "data_dir": f"{root}/data",
                                        "supervisor": {"heartbeat_timeout_s": 30},
                                        "log_level": "WARNING", "dedupe": dedupe})
        Path(self.config.path(self.config.run_dir)).mkdir(parents=True)
        ctx = multiprocess.get_context("forkserver")
        self.pipe, child_pipe = ctx.Pipe()
        self.helper = ctx.Process(target=stand_in, args=(self.config, child_pipe), daemon=True)
        self.helper.start()
        spec = ActorSpec(name="dedupe-0", kind="dedupe", index=0, config=self.config,
                         supervisor_pid=self.helper.pid, actor_class="actors.dedupe:DedupeActor")
        self.proc = ctx.Process(target=actor_main, args=(spec,))
        self.proc.start()
        if not self.pipe.poll(60) or self.pipe.recv() != "ready":
            raise SystemExit("the dedupe actor did not start")
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.RCVTIMEO, 60_000)
        self.sock.connect(self.config.endpoint("dedupe_rpc"))
        self.codec = protocol.Codec(protocol.Claimed)
        self.sock.send(protocol.encode(protocol.Claim(items=make_items([f"warm-up {root}"]))))
        self.codec.decode(self.sock.recv())  # a first claim opens connections and pages

    def pids(self) -> dict[str, int]:
        return {"dedupe": self.proc.pid, "stand-in": self.helper.pid}

    def close(self) -> None:
        self.sock.close()
        self.zctx.destroy(linger=0)
        self.pipe.send("stop")
        self.proc.join(30)
        self.pipe.send("exit")
        self.helper.join(10)


def cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each named group of processes."""
    out = {}
    for group, members in pids.items():
        total = 0.0
        for pid in members:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        out[group] = total
    return out


def server_pids(server: PgServer) -> list[int]:
    """The postmaster and every server process (backends, WAL writer, checkpointer)."""
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(pid)
    return [pid, *(p.pid for p in main.children(recursive=True))]


def measure(actors: list[ActorUnderTest], n_keys: int, batch: int, salt: str,
            server: PgServer | None) -> dict:
    """Every actor claims n_keys // len(actors) new keys at once, one client thread each;
    claims/s is all keys over the wall time of the slowest. The claims are encoded before
    the clock starts (encoding them in the timed threads took 0.1 s of a 2 s run, while
    the actors waited for their first claim)."""
    per_actor = n_keys // len(actors)
    frame_sets = [claim_frames(make_keys(per_actor, f"{salt}-{i}"), batch)
                  for i in range(len(actors))]
    results: list[dict | None] = [None] * len(actors)
    barrier = threading.Barrier(len(actors) + 1)

    def run(i: int) -> None:
        barrier.wait(60)
        results[i] = send_claims(actors[i], frame_sets[i], per_actor)

    groups = {"dedupe actors": [a.proc.pid for a in actors],
              "stand-ins": [a.helper.pid for a in actors], "this script": [os.getpid()]}
    if server is not None:
        groups["postgres"] = server_pids(server)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actors))]
    for t in threads:
        t.start()
    cpu0 = cpu_of(groups)
    t0 = time.perf_counter()
    barrier.wait(60)
    for t in threads:
        t.join(600)
    elapsed = time.perf_counter() - t0
    cpu1 = cpu_of(groups)
    new = sum(r["new"] for r in results if r)
    if new != per_actor * len(actors):
        raise SystemExit(f"only {new} of {per_actor * len(actors)} keys were new")
    return {"claims_per_s": new / elapsed, "keys": new, "elapsed_s": elapsed,
            "cpu": {g: cpu1[g] - cpu0[g] for g in groups}}


def fresh_ledger(server: PgServer) -> str:
    """A DSN on an empty schema, the earlier measurements' schemas dropped and a checkpoint
    taken: each measurement starts on a server that has nothing of the last one left to
    write (its dirty pages otherwise fill the buffer pool, and the next measurement's
    backends write them out: up to a third more server time per claim, measured here)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT nspname FROM pg_namespace "
                                    "WHERE nspname LIKE %s", (f"t{os.getpid()}\\_%",)).fetchall():
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
        conn.execute("CHECKPOINT")
    return server.new_schema()


def keys_for(batch: int, args) -> int:
    return {1: args.keys_batch1, 100: args.keys // 2}.get(batch, args.keys)


def run_config(name: str, n_actors: int, dedupe_for, args, server: PgServer | None,
               rows: list, profiles: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="cs-bb-", dir="/tmp") as d:
        for batch in BATCHES:
            dedupe = dedupe_for()  # a fresh ledger for each measurement
            actors = [ActorUnderTest(f"{d}/{batch}-{i}", dedupe) for i in range(n_actors)]
            runs = []
            try:  # this machine is shared: the median of a few runs, each of new keys
                for rep in range(args.repeat):
                    runs.append(measure(actors, keys_for(batch, args), batch,
                                        f"{name}-{batch}-{rep}", server))
            finally:
                for a in actors:
                    a.close()
            runs.sort(key=lambda r: r["claims_per_s"])
            r = runs[len(runs) // 2]
            rows.append((name, n_actors, batch, r))
            profiles[(name, n_actors, batch)] = (r["cpu"], r["elapsed_s"])
            each = ", ".join(f"{x['claims_per_s']:,.0f}" for x in runs)
            print(f"  {name:<12} x{n_actors} batch {batch:>3}: {r['claims_per_s']:>9,.0f} "
                  f"claims/s (runs: {each})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000,
                        help="new keys per measurement at batch 500 (half at batch 100)")
    parser.add_argument("--keys-batch1", type=int, default=4000,
                        help="new keys per measurement at batch 1")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per measurement (the median is reported)")
    args = parser.parse_args()
    neighbours = Neighbours()
    rows: list = []
    profiles: dict = {}
    server = PgServer.create(settings=SERVER_SETTINGS)
    try:
        warm_wal(server)

        def sqlite() -> dict:
            return {"backend": "sqlite"}

        def postgres() -> dict:
            os.environ[DSN_ENV] = fresh_ledger(server)  # the actors' config reads it here
            return {"backend": "postgres"}

        print("measuring (each line a fresh ledger):", flush=True)
        run_config("sqlite", 1, sqlite, args, None, rows, profiles)
        run_config("postgres", 1, postgres, args, server, rows, profiles)
        run_config("postgres", 4, postgres, args, server, rows, profiles)
    finally:
        server.close()
    rate = {(name, n, batch): r["claims_per_s"] for name, n, batch, r in rows}
    print()
    print(f"{'backend':<12} {'actors':>6} " + " ".join(f"{'batch ' + str(b):>11}" for b in BATCHES))
    for name, n in (("sqlite", 1), ("postgres", 1), ("postgres", 4)):
        cells = " ".join(f"{rate[(name, n, b)]:>11,.0f}" for b in BATCHES)
        print(f"{name:<12} {n:>6} {cells}")
    print(f"{'sqlite':<12} {4:>6} {'n/a: seen.db has one owner (invariant 1)':>35}")
    print(f"(claims/s: new keys answered per second, all actors together; the median of "
          f"{args.repeat} runs on one ledger that grows)")
    print()
    print("CPU seconds by process group at batch 500 (cores busy = CPU / wall time):")
    for (name, n, batch), (cpu, elapsed) in profiles.items():
        if batch == 500:
            parts = ", ".join(f"{g} {sec:.1f}" for g, sec in cpu.items())
            print(f"  {name} x{n}: {parts}; {sum(cpu.values()) / elapsed:.2f} of 2 cores busy "
                  f"over {elapsed:.1f} s")
    print(neighbour_note(neighbours.cpu_pct()))
    pg1, pg4 = rate[("postgres", 1, 500)], rate[("postgres", 4, 500)]
    print(f"RESULT sqlite_per_s={rate[('sqlite', 1, 500)]:.0f} pg_per_s={pg1:.0f} "
          f"pg4_per_s={pg4:.0f} pg4_vs_pg1={pg4 / pg1:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
