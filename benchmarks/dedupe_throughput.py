"""Claims per second through the dedupe actor over ZeroMQ, against the old design.

The dedupe actor runs as its own process (the real DedupeActor, started the way the
supervisor starts it) with this script standing in for the supervisor's control socket
and for the llm actor's inbox (drained, so forwarding is counted but classifying is not).
The baseline, in this same run, is the old bot's store: one sqlite3 connection behind a
threading.Lock, is_seen (SELECT) then mark_seen (INSERT + COMMIT) per key.

    python benchmarks/dedupe_throughput.py [--keys 200000] [--batch 500]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import multiprocess
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors import protocol  # noqa: E402
from actors.base import ActorSpec, actor_main  # noqa: E402
from supervisor.config import config_from_dict  # noqa: E402

IN_FLIGHT = 4  # claim batches pipelined, as several fetchers would


def make_keys(n: int, salt: str) -> list[str]:
    # 40-character keys, like a normalised link or "sec:" + accession number.
    return [f"https://w.example/{salt}/{i:010d}".ljust(40, "x") for i in range(n)]


def make_items(keys: list[str]) -> list[protocol.Item]:
    return [protocol.Item(key=k, title="Acme Corp announces something", link=k,
                          source="bench", kind="pr") for k in keys]


class FakeSupervisor:
    """Pings the actor and drains what it forwards, so it runs as under the real one."""

    def __init__(self, config):
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.control.bind(config.endpoint("control"))
        self.llm = self.ctx.socket(zmq.PULL)
        self.llm.setsockopt(zmq.RCVHWM, protocol.DELIVER_HWM)  # as the llm actor's inbox
        self.llm.bind(config.instance_endpoint("llm_in", 0))
        self.forwarded = 0
        self.deliveries = protocol.Codec(protocol.Deliver)
        self.ready = threading.Event()
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.llm, zmq.POLLIN)
        next_ping = 0.0
        while self.running:
            for sock, _ in poller.poll(100):
                if sock is self.control:
                    ident, _frame = self.control.recv_multipart()
                    self.ident = ident
                    self.ready.set()
                else:
                    while True:
                        try:
                            frame = self.llm.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.forwarded += len(self.deliveries.decode(frame).items)
            if self.ready.is_set() and time.monotonic() > next_ping:
                self.control.send_multipart([self.ident, protocol.encode(protocol.Ping())])
                next_ping = time.monotonic() + 0.5

    def stop_actor(self) -> None:
        self.control.send_multipart([self.ident, protocol.encode(protocol.Command(command="stop"))])

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.ctx.destroy(linger=0)


def bench_actor(config, keys: list[str], batch: int, roundtrips: int) -> dict:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 30_000)
    sock.connect(config.endpoint("dedupe_rpc"))
    codec = protocol.Codec(protocol.Claimed)
    frames = [protocol.encode(protocol.Claim(req_id=i + 1, items=make_items(keys[s:s + batch])))
              for i, s in enumerate(range(0, len(keys), batch))]
    # Warm up: a first claim opens pages and connections.
    sock.send(protocol.encode(protocol.Claim(req_id=0, items=make_items(["warm-up-key"]))))
    codec.decode(sock.recv())
    new = 0
    sent = 0
    t0 = time.perf_counter()
    while sent < min(IN_FLIGHT, len(frames)):
        sock.send(frames[sent])
        sent += 1
    for _ in range(len(frames)):
        reply = codec.decode(sock.recv())
        new += len(reply.new)
        if sent < len(frames):
            sock.send(frames[sent])
            sent += 1
    elapsed = time.perf_counter() - t0
    # One-key round trips, each a new key (a claim that writes).
    rtts = []
    for i in range(roundtrips):
        frame = protocol.encode(protocol.Claim(req_id=10**6 + i,
                                               items=make_items([f"rtt-{i:036d}"])))
        t = time.perf_counter()
        sock.send(frame)
        codec.decode(sock.recv())
        rtts.append(time.perf_counter() - t)
    sock.close()
    ctx.destroy(linger=0)
    return {"claims_per_s": len(keys) / elapsed, "new": new, "elapsed_s": elapsed,
            "roundtrip_p50_us": statistics.median(rtts) * 1e6,
            "roundtrip_p99_us": statistics.quantiles(rtts, n=100)[98] * 1e6}


class OldSeenStore:
    """The old bot's store, reproduced: a shared connection behind a lock, per-key commits."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, seen_at REAL)")
        self.lock = threading.Lock()

    def is_seen(self, key: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone() is not None

    def mark_seen(self, key: str) -> None:
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (key, time.time()))
            self.db.commit()


def bench_baseline(path: Path, keys: list[str]) -> dict:
    store = OldSeenStore(path)
    new = 0
    t0 = time.perf_counter()
    for key in keys:
        if not store.is_seen(key):
            store.mark_seen(key)
            new += 1
    elapsed = time.perf_counter() - t0
    return {"claims_per_s": len(keys) / elapsed, "new": new, "elapsed_s": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--baseline-keys", type=int, default=60_000)
    parser.add_argument("--roundtrips", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as d:
        config = config_from_dict({"run_dir": f"{d}/run", "data_dir": f"{d}/data",
                                   "supervisor": {"heartbeat_timeout_s": 30}})
        Path(config.path(config.run_dir)).mkdir(parents=True)
        fake = FakeSupervisor(config)
        ctx = multiprocess.get_context("forkserver")
        spec = ActorSpec(name="dedupe-0", kind="dedupe", index=0, config=config,
                         supervisor_pid=os.getpid())
        proc = ctx.Process(target=actor_main, args=(spec,))
        proc.start()
        if not fake.ready.wait(30):
            raise SystemExit("the dedupe actor did not start")
        ours = bench_actor(config, make_keys(args.keys, "ours"), args.batch, args.roundtrips)
        deadline = time.monotonic() + 30
        expected = ours["new"] + args.roundtrips + 1  # the batches, the round trips, warm-up
        while fake.forwarded < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        fake.stop_actor()
        proc.join(30)
        fake.close()
        base = bench_baseline(Path(d) / "old.db", make_keys(args.baseline_keys, "old"))
    assert ours["new"] == args.keys, f"only {ours['new']} of {args.keys} keys were new"
    ratio = ours["claims_per_s"] / base["claims_per_s"]
    rows = [("dedupe actor over ZeroMQ, batch %d" % args.batch, args.keys,
             ours["claims_per_s"], ours["elapsed_s"]),
            ("old design: Lock + SELECT/INSERT/COMMIT per key", args.baseline_keys,
             base["claims_per_s"], base["elapsed_s"])]
    print(f"{'store':<50} {'keys':>8} {'claims/s':>10} {'seconds':>8}")
    for name, n, rate, secs in rows:
        print(f"{name:<50} {n:>8} {rate:>10,.0f} {secs:>8.2f}")
    print(f"forwarded to the llm inbox: {fake.forwarded} of {expected} new keys")
    print(f"one-key claim round trip: p50 {ours['roundtrip_p50_us']:.0f} us, "
          f"p99 {ours['roundtrip_p99_us']:.0f} us")
    print(f"RESULT claims_per_s={ours['claims_per_s']:.0f} baseline_per_s={base['claims_per_s']:.0f} "
          f"ratio={ratio:.2f} roundtrip_p50_us={ours['roundtrip_p50_us']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
