"""Claims per second through the dedupe actor over ZeroMQ, against the old design.

The dedupe actor runs as its own process (the real DedupeActor, started the way the
supervisor starts it); a helper process stands in for the supervisor's control socket and
for the llm actor's inbox (drained, so forwarding is counted but classifying is not), and
this script is the fetcher, pipelining claim batches over the dedupe RPC socket.
The baseline, in this same run, is the old bot's store: one sqlite3 connection behind a
threading.Lock, is_seen (SELECT) then mark_seen (INSERT + COMMIT) per key.

The one-key round trip is measured twice, each against a fresh actor: as configured by
default, and with dedupe.busy_poll_us=0 (the actor sleeps as soon as it is idle).

    python benchmarks/dedupe_throughput.py [--keys 200000] [--batch 500]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import multiprocess
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors import protocol  # noqa: E402
from actors.base import ActorSpec, actor_main  # noqa: E402
from catalyst_config import config_from_dict  # noqa: E402

IN_FLIGHT = 4  # claim batches pipelined, as several fetchers would


def make_keys(n: int, salt: str) -> list[str]:
    # 40-character keys, like a normalised link or "sec:" + accession number.
    return [f"https://w.example/{salt}/{i:010d}".ljust(40, "x") for i in range(n)]


def make_items(keys: list[str]) -> list[protocol.Item]:
    return [protocol.Item(key=k, title="Acme Corp announces something", link=k,
                          source="bench", kind="pr") for k in keys]


class DeliverCount(msgspec.Struct):
    """A Deliver frame read only as far as counting its items: the stand-in's CPU is the
    llm actor's, not dedupe's, and here it runs on the same two cores as the actors
    measured."""

    items: list[msgspec.Raw]


def stand_in(config, pipe) -> None:
    """The supervisor's control socket and the llm inbox, in a process of their own as in
    a real run: pings the actor, drains and counts what it forwards, stops it when told."""
    ctx = zmq.Context()
    control = ctx.socket(zmq.ROUTER)
    control.bind(config.endpoint("control"))
    llm = ctx.socket(zmq.PULL)
    llm.setsockopt(zmq.RCVHWM, protocol.DELIVER_HWM)  # as the llm actor's inbox
    llm.bind(config.instance_endpoint("llm_in", 0))
    deliveries = msgspec.msgpack.Decoder(DeliverCount)
    poller = zmq.Poller()
    for sock in (control, llm):
        poller.register(sock, zmq.POLLIN)
    poller.register(pipe.fileno(), zmq.POLLIN)
    ident, forwarded, next_ping = None, 0, 0.0
    while True:
        for sock, _ in poller.poll(100):
            if sock is control:
                frames = control.recv_multipart()
                if ident is None:
                    ident = frames[0]
                    pipe.send("ready")
            elif sock is llm:
                forwarded += len(deliveries.decode(llm.recv()).items)
            else:
                command = pipe.recv()
                if command == "forwarded":
                    pipe.send(forwarded)
                elif command == "stop":
                    control.send_multipart([ident, protocol.encode(protocol.Command(command="stop"))])
                elif command == "exit":
                    ctx.destroy(linger=0)
                    return
        if ident is not None and time.monotonic() > next_ping:
            control.send_multipart([ident, protocol.encode(protocol.Ping())])
            next_ping = time.monotonic() + 0.5


class DedupeUnderTest:
    """A real dedupe actor process and its stand-in peers, in a fresh data directory."""

    def __init__(self, root: str, busy_poll_us: float | None = None):
        dedupe = {} if busy_poll_us is None else {"busy_poll_us": busy_poll_us}
        self.config = config_from_dict({"run_dir": f"{root}/run", "data_dir": f"{root}/data",
                                        "supervisor": {"heartbeat_timeout_s": 30},
                                        "dedupe": dedupe})
        Path(self.config.path(self.config.run_dir)).mkdir(parents=True)
        ctx = multiprocess.get_context("forkserver")
        self.pipe, child_pipe = ctx.Pipe()
        self.helper = ctx.Process(target=stand_in, args=(self.config, child_pipe), daemon=True)
        self.helper.start()
        spec = ActorSpec(name="dedupe-0", kind="dedupe", index=0, config=self.config,
                         supervisor_pid=self.helper.pid, actor_class="actors.dedupe:DedupeActor")
        self.proc = ctx.Process(target=actor_main, args=(spec,))
        self.proc.start()
        if not self.pipe.poll(30) or self.pipe.recv() != "ready":
            raise SystemExit("the dedupe actor did not start")
        self.zctx = zmq.Context()
        self.sock = self.zctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.RCVTIMEO, 30_000)
        self.sock.connect(self.config.endpoint("dedupe_rpc"))
        self.codec = protocol.Codec(protocol.Claimed)
        self.claimed = 0
        # Warm up: a first claim opens pages and connections.
        self.roundtrip(protocol.encode(protocol.Claim(items=make_items(["warm-up-key"]))))

    def roundtrip(self, frame: bytes) -> protocol.Claimed:
        self.sock.send(frame)
        self.claimed += 1
        return self.codec.decode(self.sock.recv())

    def forwarded(self) -> int:
        self.pipe.send("forwarded")
        return self.pipe.recv()

    def close(self, expect_forwarded: int) -> int:
        """Waits until the llm stand-in got expect_forwarded items, then stops all."""
        deadline = time.monotonic() + 30
        while (forwarded := self.forwarded()) < expect_forwarded and time.monotonic() < deadline:
            time.sleep(0.05)
        self.sock.close()
        self.zctx.destroy(linger=0)
        self.pipe.send("stop")
        self.proc.join(30)
        self.pipe.send("exit")
        self.helper.join(10)
        return forwarded


def claim_frames(keys: list[str], batch: int) -> list[bytes]:
    """Encoded claims of `batch` new keys each."""
    return [protocol.encode(protocol.Claim(req_id=i + 1, items=make_items(keys[s:s + batch])))
            for i, s in enumerate(range(0, len(keys), batch))]


def bench_batches(actor: DedupeUnderTest, keys: list[str], batch: int) -> dict:
    """Claims of `batch` new keys, IN_FLIGHT of them pipelined."""
    return send_claims(actor, claim_frames(keys, batch), len(keys))


def send_claims(actor: DedupeUnderTest, frames: list[bytes], n_keys: int) -> dict:
    """Sends encoded claims, IN_FLIGHT of them pipelined; the clock runs from the first."""
    new = 0
    sent = 0
    t0 = time.perf_counter()
    while sent < min(IN_FLIGHT, len(frames)):
        actor.sock.send(frames[sent])
        sent += 1
    for _ in range(len(frames)):
        reply = actor.codec.decode(actor.sock.recv())
        new += len(reply.new)
        if sent < len(frames):
            actor.sock.send(frames[sent])
            sent += 1
    elapsed = time.perf_counter() - t0
    return {"claims_per_s": n_keys / elapsed, "new": new, "elapsed_s": elapsed}


def bench_roundtrips(actor: DedupeUnderTest, n: int) -> dict:
    """One-key claims one after the other, each a new key (a claim that writes)."""
    rtts = []
    for i in range(n):
        frame = protocol.encode(protocol.Claim(req_id=i, items=make_items([f"rtt-{i:036d}"])))
        t = time.perf_counter()
        reply = actor.roundtrip(frame)
        rtts.append(time.perf_counter() - t)
        assert len(reply.new) == 1
    q = statistics.quantiles(rtts, n=100)
    return {"p50_us": q[49] * 1e6, "p90_us": q[89] * 1e6, "p99_us": q[98] * 1e6}


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
    parser.add_argument("--roundtrips", type=int, default=3000)
    args = parser.parse_args()
    rtt = {}
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as d:
        actor = DedupeUnderTest(f"{d}/a")
        ours = bench_batches(actor, make_keys(args.keys, "ours"), args.batch)
        rtt["default"] = bench_roundtrips(actor, args.roundtrips)
        expected = ours["new"] + actor.claimed  # the batches, the warm-up, the round trips
        forwarded = actor.close(expected)
        # The same round trips from an actor that sleeps as soon as it has nothing to do.
        actor = DedupeUnderTest(f"{d}/b", busy_poll_us=0)
        rtt["busy_poll_us=0"] = bench_roundtrips(actor, args.roundtrips)
        actor.close(actor.claimed)
        base = bench_baseline(Path(d) / "old.db", make_keys(args.baseline_keys, "old"))
    assert ours["new"] == args.keys, f"only {ours['new']} of {args.keys} keys were new"
    assert forwarded == expected, f"the llm stand-in got {forwarded} of {expected} items"
    ratio = ours["claims_per_s"] / base["claims_per_s"]
    rows = [("dedupe actor over ZeroMQ, batch %d" % args.batch, args.keys,
             ours["claims_per_s"], ours["elapsed_s"]),
            ("old design: Lock + SELECT/INSERT/COMMIT per key", args.baseline_keys,
             base["claims_per_s"], base["elapsed_s"])]
    print(f"{'store':<50} {'keys':>8} {'claims/s':>10} {'seconds':>8}")
    for name, n, rate, secs in rows:
        print(f"{name:<50} {n:>8} {rate:>10,.0f} {secs:>8.2f}")
    print(f"forwarded to the llm inbox: {forwarded} of {expected} new keys")
    print()
    print(f"{'one-key claim round trip, ' + str(args.roundtrips) + ' claims':<50} "
          f"{'p50 us':>8} {'p90 us':>8} {'p99 us':>8}")
    for name, r in rtt.items():
        print(f"{name:<50} {r['p50_us']:>8.0f} {r['p90_us']:>8.0f} {r['p99_us']:>8.0f}")
    print(f"RESULT claims_per_s={ours['claims_per_s']:.0f} baseline_per_s={base['claims_per_s']:.0f} "
          f"ratio={ratio:.2f} roundtrip_p50_us={rtt['default']['p50_us']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
