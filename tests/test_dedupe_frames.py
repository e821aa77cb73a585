"""Bounded frames on the dedupe actor's links, over real sockets: a claim it cannot take
is answered with the reason instead of dropped (so the fetcher stops resending it), and
Deliver frames are cut by encoded size, so the largest legal items reach the alerts
without taking anything to the dead letters."""

from __future__ import annotations

import msgspec
import zmq

from actors import protocol
from actors.protocol import Item
from actors.seen_store import SqliteSeenStore
from catalyst_config import SqliteConfig, load_config
from tests.conftest import base_config, wait_for
from tests.test_delivery import assert_each_alerted_once

CJK = "株式会社が新薬の承認を発表"  # 3 bytes a character in UTF-8
MAX_SUMMARY = 16384  # protocol.LongText
MAX_TITLE = 2048  # protocol.ShortText


def cjk(n: int, tag: str) -> str:
    text = tag + " "
    return (text + CJK * (n // len(CJK) + 1))[:n]


def big_item(i: int) -> Item:
    return Item(key=f"https://wire.example/big/{i}", title=cjk(MAX_TITLE, f"Acme{i} FDA Approval"),
                link=f"https://wire.example/big/{i}", source="manual", kind="pr",
                summary=cjk(MAX_SUMMARY, f"summary {i}"))


class Client:
    """A fetcher stand-in: a DEALER on the dedupe RPC socket."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.RCVTIMEO, 10_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.codec = protocol.Codec(protocol.Claimed)

    def ask(self, frame: bytes) -> protocol.Claimed:
        self.sock.send(frame)
        return self.codec.decode(self.sock.recv())

    def close(self) -> None:
        self.sock.close()


def start(run_supervisor, workdir, **overrides):
    cfg = base_config(workdir, [], actors={"fetcher": {"instances": 0}}, **overrides)
    running = run_supervisor(cfg)
    wait_for(running.all_running, 30, message="actors running")
    return running, Client(load_config(running.config_path).endpoint("dedupe_rpc"))


def test_a_claim_it_cannot_take_is_answered_with_the_reason_not_dropped(run_supervisor, workdir):
    running, client = start(run_supervisor, workdir)
    items = [big_item(i) for i in range(110)]  # over the 4 MiB limit, under the socket's 8
    frame = protocol.encode(protocol.Claim(req_id=41, items=items))
    assert protocol.MAX_MESSAGE_BYTES < len(frame) < protocol.SOCKET_MAX_BYTES
    too_big = client.ask(frame)
    assert too_big.req_id == 41 and too_big.new == [] and not too_big.retry
    assert str(protocol.MAX_MESSAGE_BYTES) in too_big.error and str(len(frame)) in too_big.error
    # Malformed: items is not a list. The request id is still read, leniently.
    bad = msgspec.msgpack.encode({"t": "claim", "v": 1, "req_id": 42, "items": "nothing"})
    invalid = client.ask(bad)
    assert invalid.req_id == 42 and not invalid.retry and "items" in invalid.error
    # Not even a map: answered with req_id 0.
    assert client.ask(b"\xc1 not msgpack").req_id == 0
    ok = client.ask(protocol.encode(protocol.Claim(req_id=43, items=items[:2])))
    assert ok.error is None and len(ok.new) == 2  # the split halves go through
    stats = wait_for(lambda: (lambda a: a["stats"] if a["stats"].get("claims_refused_invalid")
                              == 2 else None)(running.actor("dedupe-0")), 10,
                     message="refusals counted")
    assert stats["claims_refused_too_large"] == 1 and stats["claimed"] == 2
    assert running.actor("dedupe-0")["restarts"] == 0
    client.close()


def test_items_with_the_largest_summaries_are_all_delivered_none_dead_lettered(
        run_supervisor, workdir):
    # 150 items of 55 KB (a 16 KB CJK summary, a 2 KB CJK title) wait in the ledger from an
    # earlier run: at start all are due at once, and 100 of them made a 5.5 MB frame, which
    # the llm refused, until every one was a dead letter. 60 more come in claims.
    items = [big_item(i) for i in range(210)]
    store = SqliteSeenStore(workdir / "data" / "seen.db", sqlite_cfg=SqliteConfig(),
                            lease_s=60, max_attempts=2, ttl_s=3600)
    assert len(store.claim(items[:150])) == 150
    store.close()
    # Few attempts and short leases: a refused frame would dead-letter within seconds.
    running, client = start(run_supervisor, workdir, dedupe={"lease_s": 1.5, "max_attempts": 2})
    for req_id, start_at in enumerate(range(150, len(items), 30), 1):
        reply = client.ask(protocol.encode(protocol.Claim(req_id=req_id,
                                                          items=items[start_at:start_at + 30])))
        assert reply.error is None and len(reply.new) == 30
    wait_for(lambda: len(running.alerts()) >= len(items), 60, message="all 210 alerted")
    running.cli("stop")
    assert running.wait_exit(60) == 0
    assert_each_alerted_once(running.alerts(), len(items))
    assert [e for e in running.admin_events() if e["event"] == "dead_letter"] == []
    client.close()


def item_of_encoded_size(delivery_over: int) -> Item:
    """An item whose Claim alone fits a frame but whose Delivery does not fit a Deliver
    frame (its tickers list is the one field without a length cap)."""
    tickers = ["ABCDEFGHIJKLMNOP"] * (delivery_over // 17)
    base = Item(key="https://wire.example/huge", title="Huge Corp Announces FDA Approval",
                link="https://wire.example/huge", source="manual", kind="pr", tickers=tickers)
    return base


def test_an_item_no_frame_can_carry_goes_alone_to_the_dead_letters(run_supervisor, workdir):
    running, client = start(run_supervisor, workdir)
    budget = protocol.MAX_MESSAGE_BYTES - protocol.FRAME_OVERHEAD_BYTES
    huge = item_of_encoded_size(budget + 40)
    delivery = len(protocol.encode(protocol.Deliver(items=[protocol.Delivery(item=huge,
                                                                              attempt=1)])))
    assert delivery > budget
    small = [Item(key=f"https://wire.example/s{i}", title=f"Small{i} Corp Announces FDA Approval",
                  link=f"https://wire.example/s{i}", source="manual", kind="pr")
             for i in range(3)]
    frame = protocol.encode(protocol.Claim(req_id=1, items=[huge]))
    assert len(frame) <= protocol.MAX_MESSAGE_BYTES  # a claim dedupe takes
    assert client.ask(frame).new == [huge.key]
    assert len(client.ask(protocol.encode(protocol.Claim(req_id=2, items=small))).new) == 3
    wait_for(lambda: len(running.alerts()) >= 3, 30, message="the 3 small items alerted")
    events = wait_for(lambda: [e for e in running.admin_events() if e["event"] == "dead_letter"],
                      10, message="the dead letter event")
    assert len(events) == 1 and events[0]["reason"] == "too_large"
    assert huge.key in events[0]["message"] and str(protocol.MAX_MESSAGE_BYTES) in events[0]["message"]
    listed = running.cli("dead-letters", "--json")
    assert huge.key in listed.stdout and listed.returncode == 0, listed
    assert {a["key"] for a in running.alerts()} == {s.key for s in small}
    client.close()
