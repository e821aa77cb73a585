"""How the actor loop waits: never past a deadline, spinning only in a burst of input.

How much busy polling gains is a benchmark's business (benchmarks/dedupe_throughput.py);
what a test can hold it to is the cost: an actor with nothing to do must not burn a core.
"""

from __future__ import annotations

import threading
import time

import psutil
import zmq

from actors import protocol
from actors.base import Actor, ActorSpec
from catalyst_config import config_from_dict, load_config
from tests.conftest import base_config, wait_for

IDLE_WINDOW_S = 2.0
IDLE_CPU_SHARE = 0.15  # a spinning actor would use ~1.0 of this window


def cpu_share(proc: psutil.Process, window_s: float) -> float:
    before = sum(proc.cpu_times()[:2])
    time.sleep(window_s)  # measuring over a window, not waiting for a condition
    return (sum(proc.cpu_times()[:2]) - before) / window_s


def test_a_deadline_already_past_does_not_block_the_loop(tmp_path):
    config = config_from_dict({"run_dir": str(tmp_path), "data_dir": str(tmp_path)})
    actor = Actor(ActorSpec(name="t-0", kind="t", index=0, config=config, supervisor_pid=0,
                            actor_class="actors.base:Actor"))
    poller = zmq.Poller()
    poller.register(actor.control, zmq.POLLIN)  # connected to nobody: nothing will come
    returned = []
    for busy_poll_s in (0.0, 0.001):  # sleeping, and at the end of a burst
        actor.busy_poll_s = busy_poll_s
        actor._burst = busy_poll_s > 0
        waiter = threading.Thread(target=lambda: returned.append(actor._wait(poller, -0.5)),
                                  daemon=True)
        waiter.start()
        waiter.join(5)
        assert not waiter.is_alive(), f"_wait blocked past its deadline ({busy_poll_s=})"
    assert returned == [[], []]
    actor.ctx.destroy(linger=0)


def test_the_dedupe_actor_spins_only_while_claims_come_in_bursts(run_supervisor, workdir):
    # A long spin (10 ms, the most allowed) makes a spin that never ends easy to see.
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}},
                      dedupe={"busy_poll_us": 10_000})
    running = run_supervisor(cfg)
    wait_for(running.all_running, 30, message="actors running")
    dedupe = psutil.Process(running.actor("dedupe-0")["pid"])
    assert cpu_share(dedupe, IDLE_WINDOW_S) < IDLE_CPU_SHARE, "idle before any claim"

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(load_config(running.config_path).endpoint("dedupe_rpc"))
    codec = protocol.Codec(protocol.Claimed)
    try:
        for i in range(500):  # back to back: a burst, so the actor spins between them
            item = protocol.Item(key=f"burst-{i}", title="t", link="l", source="s", kind="pr")
            sock.send(protocol.encode(protocol.Claim(req_id=i, items=[item])))
            reply = codec.decode(sock.recv())
            assert reply.req_id == i and reply.new == [f"burst-{i}"]
    finally:
        sock.close()
        ctx.term()
    # Then the acks of those items come back; once they are in, the actor is idle again.
    wait_for(lambda: len(running.alerts()) >= 500, 60, message="the burst alerted")
    wait_for(lambda: running.actor("dedupe-0")["stats"].get("pending") == 0, 30,
             message="every item acknowledged")
    assert cpu_share(dedupe, IDLE_WINDOW_S) < IDLE_CPU_SHARE, "idle after the burst"
