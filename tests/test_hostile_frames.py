"""No input crashes a process. Hostile frames on the supervisor's operator socket (the CLI's)
and control socket (the actors'), random arguments to real commands, and commands an actor
cannot carry out are each answered with an error or counted and dropped: afterwards every
process still has its pid, nothing was restarted, and `status` answers."""

from __future__ import annotations

import json
import os
import sqlite3
import time

import msgspec
import multiprocess
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actors import protocol
from actors.base import Actor, ActorSpec, actor_main
from catalyst_config import config_from_dict, load_config
from supervisor.control import ControlError, request
from tests.conftest import wait_for
from tests.test_supervision import quiet_config

HUGE = 18446744073709551615  # 2**64 - 1: the largest integer msgpack carries
FUZZ = settings(max_examples=200, deadline=None,
                # One supervisor serves every example of a test: that is the point.
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
REPLY_TIMEOUT_MS = 5000

_encode = msgspec.msgpack.encode


# Values msgpack can carry, of every type, including the awkward ones.
scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
           | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner,
                                        max_size=4), max_leaves=20)


def nested(depth: int, tag: str = "req", field: str = "args") -> bytes:
    """A frame of the given type whose free-form field nests a list `depth` deep."""
    head = {"req": {"t": "req", "v": 1, "command": "status"},
            "hb": {"t": "hb", "v": 1, "name": "dedupe-0", "pid": 1},
            "answer": {"t": "answer", "v": 1, "token": 1, "ok": True}}[tag]
    body = _encode(head)
    inner = b"\x81\xa1a" + b"\x91" * depth + b"\x90"  # {"a": [[[...]]]}
    if field == "result":
        inner = b"\x91" * depth + b"\x90"
    return bytes([body[0] + 1]) + body[1:] + _encode(field) + inner


def mutated(frame: bytes, data) -> bytes:
    """A valid frame with bytes flipped, cut or added."""
    how = data.draw(st.sampled_from(["flip", "cut", "append", "insert"]))
    at = data.draw(st.integers(0, max(0, len(frame) - 1)))
    if how == "flip":
        return frame[:at] + bytes([frame[at] ^ data.draw(st.integers(1, 255))]) + frame[at + 1:]
    if how == "cut":
        return frame[:at]
    junk = data.draw(st.binary(min_size=1, max_size=16))
    return frame + junk if how == "append" else frame[:at] + junk + frame[at:]


# The operator socket ----------------------------------------------------------------


class Operator:
    """A DEALER on the operator socket, sending REQ-shaped requests (an empty delimiter
    frame, then the request) or bare ones, and reading each reply with a deadline."""

    def __init__(self, config):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
        self.sock.connect(config.endpoint("cli"))

    def ask(self, payload: bytes, envelope: tuple[bytes, ...] = (b"",)) -> protocol.Reply:
        self.sock.send_multipart([*envelope, payload])
        try:
            frames = self.sock.recv_multipart()
        except zmq.Again:
            raise AssertionError(f"no reply within {REPLY_TIMEOUT_MS} ms to {payload[:80]!r}")
        assert frames[:-1] == list(envelope)
        return protocol.Codec(protocol.Reply).decode(frames[-1])

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def snapshot(running) -> dict[str, tuple[int, int]]:
    status = running.status()
    assert status is not None, "status did not answer"
    return {a["name"]: (a["pid"], a["restarts"]) for a in status["actors"]}


@pytest.fixture
def quiet(run_supervisor, workdir):
    """A supervisor with dedupe, llm and alert running (no feeds); after the test, every
    process must still be the one it was and `status` must answer."""
    running = run_supervisor(quiet_config(workdir))
    wait_for(running.all_running, 30, message="all running")
    running.config = load_config(running.config_path, with_secrets=False)
    before = snapshot(running)
    supervisor_pid = running.proc.pid
    yield running
    if hasattr(running, "fuzz_operator"):
        running.fuzz_operator.close()
    if hasattr(running, "fuzz_ctx"):
        running.fuzz_ctx.destroy(linger=0)
    assert running.proc.poll() is None, "the supervisor died:\n" + running.log_text()[-3000:]
    assert running.proc.pid == supervisor_pid
    assert snapshot(running) == before, "an actor was restarted"
    assert all(a["restarts"] == 0 for a in running.status()["actors"])
    assert running.admin_events() == []  # none raised, and none taken from a stranger


def test_the_field_reports_get_errors_and_restart_nothing(quiet):
    running = quiet
    op = Operator(running.config)
    try:
        # A 1 KB message nested 1,000 deep.
        frame = nested(1000)
        assert len(frame) < 1100
        reply = op.ask(frame)
        assert not reply.ok and "nested too deeply" in reply.error
        # Nested as deep as the decoder takes (900): refused by the command, answered.
        reply = op.ask(nested(900))
        assert not reply.ok and "status takes no arguments" in reply.error
    finally:
        op.close()
    with pytest.raises(ControlError, match="restart: name must be an actor's name"):
        request(running.config, "restart", {"name": ["dedupe-0"]})
    with pytest.raises(ControlError, match="limit must be a whole number from 0 to 10000"):
        request(running.config, "dead_letters", {"limit": HUGE})
    cli = running.cli("dead-letters", "--limit", str(HUGE))
    assert cli.returncode != 0 and "--limit" in cli.stderr and "out of range" in cli.stderr
    # The same command, in range, is relayed to the dedupe actor and answered.
    assert request(running.config, "dead_letters", {"limit": 10_000}) == {
        "total": 0, "dead_letters": []}


def test_malformed_envelopes_and_frames_on_both_sockets_crash_nothing(quiet):
    running = quiet
    op = Operator(running.config)
    ctx = zmq.Context()
    try:
        assert not op.ask(b"", envelope=()).ok  # an empty request frame
        assert op.ask(protocol.encode(protocol.Request(command="status")), envelope=()).ok
        # Too many frames to be a request: dropped unanswered, and the next one answered.
        op.sock.send_multipart([b""] * 20 + [protocol.encode(protocol.Request(command="stop"))])
        assert op.ask(protocol.encode(protocol.Request(command="status"))).ok
        control = ctx.socket(zmq.DEALER)
        control.setsockopt(zmq.IDENTITY, b"intruder")
        control.setsockopt(zmq.LINGER, 1000)
        control.connect(running.config.endpoint("control"))
        for frames in ([b"a", b"b", b"c"], [nested(900, "hb", "stats")],
                       [nested(900, "answer", "result")], [nested(5000, "hb", "stats")],
                       [_encode({"t": "hb", "v": 1, "name": "dedupe-0",
                                 "pid": running.actor("dedupe-0")["pid"], "stats": {"x": 1}})],
                       [_encode({"t": "admin", "v": 1, "event": "restart", "actor": "dedupe-0",
                                 "at": float("inf")})]):
            control.send_multipart(frames)
        wait_for(lambda: running.status()["supervisor"]["dropped_messages"].get("control", 0)
                 >= 6, 10, message="six control messages dropped")
    finally:
        op.close()
        ctx.destroy(linger=0)
    assert running.actor("dedupe-0")["stats"].get("x") is None  # the spoofed heartbeat


def _request_frame(data) -> bytes:
    """A request-shaped map with anything in its fields, or a field missing."""
    names = ["status", "stop", "restart", "dead_letters", "history", "reload", "nope", ""]
    command = data.draw(st.sampled_from(names) | st.text(max_size=20) | values)
    args = data.draw(st.dictionaries(st.sampled_from(["name", "limit", "replay", "all"])
                                     | st.text(max_size=8), values, max_size=3) | values)
    frame = {"t": data.draw(st.sampled_from(["req", "rep", "hb", "x"]) | values),
             "v": data.draw(st.just(1) | values), "command": command, "args": args}
    for field in data.draw(st.lists(st.sampled_from(sorted(frame)), max_size=2)):
        frame.pop(field, None)
    return _encode(frame)


def _command_frame(data) -> bytes:
    """A well-formed request for a real command, its real arguments given random values."""
    command = data.draw(st.sampled_from(["status", "stop", "restart", "dead_letters",
                                         "history"]))
    args = data.draw(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["dedupe-0", "llm-0", "nobody"]) | values,
        "limit": st.integers(-2**63, 2**64 - 1) | values,
        "replay": values,
        "verbose": values}))
    return _encode({"t": "req", "v": 1, "command": command, "args": args})


def _well_formed_and_dangerous(frame: bytes, actors: set[str]) -> bool:
    """A request that would really stop, restart, reload or replay: not for fuzzing."""
    try:
        req = protocol.Codec(protocol.Request).decode(frame)
    except Exception:
        return False
    if req.command in ("reload", "pause", "resume"):
        return True
    if req.command == "stop":
        return not req.args
    if req.command == "restart":
        name = req.args.get("name")
        return set(req.args) == {"name"} and isinstance(name, str) and name in actors
    if req.command == "dead_letters" and "replay" in req.args:
        replay = req.args["replay"]
        return replay == "all" or (isinstance(replay, list)
                                   and all(isinstance(k, str) for k in replay))
    return False


@FUZZ
@given(data=st.data())
def test_random_requests_on_the_operator_socket_are_all_answered(quiet, data):
    running = quiet
    op = getattr(running, "fuzz_operator", None) or Operator(running.config)
    running.fuzz_operator = op
    kind = data.draw(st.sampled_from(["bytes", "value", "request", "command", "mutated",
                                      "deep"]))
    if kind == "bytes":
        frame = data.draw(st.binary(max_size=2000))
    elif kind == "value":
        frame = _encode(data.draw(values))
    elif kind == "request":
        frame = _request_frame(data)
    elif kind == "command":
        frame = _command_frame(data)
    elif kind == "mutated":
        frame = mutated(protocol.encode(protocol.Request(
            command=data.draw(st.sampled_from(["status", "history", "dead_letters"])),
            args={"limit": 5})), data)
    else:
        frame = nested(data.draw(st.integers(1, 3000)))
    if not hasattr(running, "fuzz_names"):
        running.fuzz_names = set(snapshot(running))
    assume(not _well_formed_and_dangerous(frame, running.fuzz_names))
    envelope = data.draw(st.sampled_from([(b"",), ()]))
    reply = op.ask(frame, envelope)
    try:
        protocol.Codec(protocol.Request).decode(frame)
    except Exception:
        assert not reply.ok and reply.error.startswith("bad request")


@FUZZ
@given(data=st.data())
def test_random_frames_on_the_control_socket_are_dropped(quiet, data):
    running = quiet
    if not hasattr(running, "fuzz_ctx"):
        running.fuzz_ctx = zmq.Context()
        running.fuzz_actors = {name.encode() for name in snapshot(running)}
        running.fuzz_pids = [pid for pid, _ in snapshot(running).values()]
    identity = data.draw(st.binary(min_size=1, max_size=255).filter(
        lambda b: b[0] != 0 and b not in running.fuzz_actors))
    pid = st.sampled_from(running.fuzz_pids) | st.integers(-2**63, 2**64 - 1) | values
    kind = data.draw(st.sampled_from(["bytes", "value", "hb", "admin", "admin_ok", "answer",
                                      "mutated", "deep"]))
    if kind == "bytes":
        frame = data.draw(st.binary(max_size=2000))
    elif kind == "value":
        frame = _encode(data.draw(values))
    elif kind == "hb":
        frame = _encode({"t": "hb", "v": 1, "name": data.draw(st.sampled_from(
            sorted(n.decode() for n in running.fuzz_actors)) | values),
            "pid": data.draw(pid), "stats": data.draw(values)})
    elif kind == "admin":
        frame = _encode({"t": "admin", "v": data.draw(st.just(1) | values),
                         "event": data.draw(st.sampled_from(["restart", "give_up"]) | values),
                         "actor": data.draw(st.sampled_from(["dedupe-0", "x"]) | values),
                         "level": data.draw(st.sampled_from(["info", "error"]) | values),
                         "at": data.draw(st.floats() | values)})
    elif kind == "admin_ok":  # a well-formed event from a stranger: not to be written
        frame = protocol.encode(protocol.AdminEvent(
            event=data.draw(st.text(max_size=20)), actor=data.draw(st.text(max_size=20)),
            message=data.draw(st.text(max_size=100)),
            level=data.draw(st.sampled_from(["info", "warning", "error"])),
            at=data.draw(st.floats())))
    elif kind == "answer":
        frame = _encode({"t": "answer", "v": 1, "token": data.draw(st.integers(0, 5) | values),
                         "ok": data.draw(values), "result": data.draw(values),
                         "error": data.draw(values)})
    elif kind == "mutated":
        frame = mutated(protocol.encode(protocol.Heartbeat(
            name="dedupe-0", pid=running.fuzz_pids[0], stats={"pending": 0})), data)
    else:
        frame = nested(data.draw(st.integers(1, 3000)), data.draw(st.sampled_from(
            ["hb", "answer"])), "result")
    extra = data.draw(st.lists(st.binary(max_size=8), max_size=2))  # wrong frame counts too
    sock = running.fuzz_ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(running.config.endpoint("control"))
    sock.send_multipart([frame, *extra])
    sock.close()  # the context delivers it before it is destroyed (LINGER)
    if data.draw(st.integers(0, 19)) == 0:  # now and then, the supervisor still answers
        assert running.status() is not None


def test_fuzzed_control_frames_reached_the_supervisor(quiet):
    """The fuzz above is only worth something if its frames arrive: a burst of them is
    counted as dropped while everything keeps running."""
    running = quiet
    ctx = zmq.Context()
    try:
        for i in range(50):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, f"stranger-{i}".encode())
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(running.config.endpoint("control"))
            sock.send(os.urandom(64))
            sock.close()
        wait_for(lambda: running.status()["supervisor"]["dropped_messages"].get("control", 0)
                 >= 50, 10, message="50 frames dropped")
    finally:
        ctx.destroy(linger=2000)


class OddStatsActor(Actor):
    """Reports stats no JSON can hold: bytes, a number as a map key, 20 levels of nesting."""

    def stats(self) -> dict:
        deep: list = []
        for _ in range(20):
            deep = [deep]
        return {"blob": b"\x00\xff", "by_number": {1: "one"}, "deep": deep}


def test_stats_an_actor_should_not_send_leave_status_and_history_intact(run_supervisor,
                                                                        workdir):
    running = run_supervisor(quiet_config(workdir), extra_kinds=[
        {"name": "odd", "class": "tests.test_hostile_frames:OddStatsActor"}])
    wait_for(running.all_running, 30, message="all running")
    wait_for(lambda: running.status()["supervisor"]["dropped_messages"].get("control"), 10,
             message="the odd stats refused")
    shown = running.cli("status", "--json")
    assert shown.returncode == 0, shown.stderr
    odd = next(a for a in json.loads(shown.stdout)["actors"] if a["name"] == "odd-0")
    assert odd["state"] == "running" and odd["restarts"] == 0 and "blob" not in odd["stats"]
    running.cli("stop")
    assert running.wait_exit(60) == 0, running.log_text()[-3000:]
    saved = json.loads((workdir / "data" / "supervisor-history.json").read_text())
    assert "odd-0" in saved["actors"]


# An actor's control link ---------------------------------------------------------------


class CarelessActor(Actor):
    """Answers dead_letters by handing its limit straight to SQLite, as the dedupe actor
    did when an operator's 2**64 - 1 made SQLite raise OverflowError: a command handler
    that fails in a way it did not foresee."""

    def setup(self) -> None:
        self.db = sqlite3.connect(":memory:")

    def command(self, name: str, args: dict) -> dict:
        row = self.db.execute("SELECT ? + 0", (args.get("limit", 0),)).fetchone()
        return {"limit": row[0]}


class StandIn:
    """The supervisor's end of an actor's control link, played by the test: a real actor
    process, pinged, sent commands, its heartbeats and answers read back."""

    def __init__(self, root: str, actor_class: str = "actors.dedupe:DedupeActor"):
        self.config = config_from_dict({"run_dir": f"{root}/run", "data_dir": f"{root}/data",
                                        "supervisor": {"heartbeat_timeout_s": 30}})
        os.makedirs(self.config.path(self.config.run_dir), mode=0o700)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.config.endpoint("control"))
        spec = ActorSpec(name="dedupe-0", kind="dedupe", index=0, config=self.config,
                         supervisor_pid=os.getpid(), actor_class=actor_class)
        self.proc = multiprocess.get_context("forkserver").Process(target=actor_main,
                                                                   args=(spec,))
        self.proc.start()
        self.codec = protocol.Codec(protocol.Heartbeat, protocol.Answer, protocol.AdminEvent)
        self.token = 0
        self.next()  # its first heartbeat

    def send(self, frame: bytes) -> None:
        self.sock.send_multipart([b"dedupe-0", frame])

    def next(self, timeout_s: float = 10.0) -> protocol.Message:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                _, frame = self.sock.recv_multipart()
                return self.codec.decode(frame)
            self.send(protocol.encode(protocol.Ping()))
        raise AssertionError(f"the actor sent nothing for {timeout_s} s "
                             f"(alive: {self.proc.is_alive()})")

    def answer_to(self, command: str, args: dict) -> protocol.Answer:
        self.token += 1
        self.send(protocol.encode(protocol.Command(command=command, token=self.token, args=args)))
        return self.wait_answer(self.token)

    def wait_answer(self, token: int) -> protocol.Answer:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = self.next()
            if isinstance(msg, protocol.Answer) and msg.token == token:
                return msg
        raise AssertionError(f"no answer to command {token}")

    def close(self) -> None:
        if self.proc.is_alive():
            self.send(protocol.encode(protocol.Command(command="stop")))
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.ctx.destroy(linger=0)


@pytest.fixture
def stand_in(workdir):
    """A real dedupe actor on a control link the test holds; after the test it must be
    the same process, and answer."""
    s = StandIn(str(workdir))
    pid = s.proc.pid
    yield s
    assert s.proc.is_alive() and s.proc.pid == pid, "the dedupe actor died"
    assert s.answer_to("dead_letters", {}).ok
    s.close()


def test_a_command_that_fails_unforeseen_is_answered_and_the_actor_carries_on(workdir):
    careless = StandIn(str(workdir), "tests.test_hostile_frames:CarelessActor")
    try:
        pid = careless.proc.pid
        answer = careless.answer_to("dead_letters", {"limit": HUGE})
        assert not answer.ok and "OverflowError" in answer.error
        assert "dead_letters failed" in answer.error
        answer = careless.answer_to("dead_letters", {"limit": [1, 2]})  # not a number at all
        assert not answer.ok and "ProgrammingError" in answer.error
        assert careless.answer_to("dead_letters", {"limit": 7}).result == {"limit": 7}
        assert careless.proc.is_alive() and careless.proc.pid == pid
        hb = careless.next()
        while not isinstance(hb, protocol.Heartbeat):
            hb = careless.next()
        assert hb.stats["failed_commands"] == 2
    finally:
        careless.close()


def test_the_dedupe_actor_answers_an_out_of_range_limit_with_an_error(stand_in):
    answer = stand_in.answer_to("dead_letters", {"limit": HUGE})
    assert not answer.ok and "limit" in answer.error
    assert stand_in.answer_to("dead_letters", {"limit": 3}).result == {
        "total": 0, "dead_letters": []}


@FUZZ
@given(data=st.data())
def test_random_commands_to_an_actor_are_answered_or_dropped(stand_in, data):
    kind = data.draw(st.sampled_from(["bytes", "command", "mutated"]))
    token = stand_in.token = stand_in.token + 1
    if kind == "bytes":
        stand_in.send(data.draw(st.binary(max_size=500)))
        return
    if kind == "mutated":
        stand_in.send(mutated(protocol.encode(protocol.Command(  # a fixed size to mutate
            command="dead_letters", token=0, args={"limit": 1})), data))
        return
    args = data.draw(st.dictionaries(st.sampled_from(["limit", "replay"]) | st.text(max_size=6),
                                     values, max_size=3))
    assume(not ("replay" in args and (args["replay"] == "all" or (
        isinstance(args["replay"], list) and all(isinstance(k, str) for k in args["replay"])))))
    frame = _encode({"t": "cmd", "v": 1, "command": "dead_letters", "token": token,
                     "args": args})
    stand_in.send(frame)
    answer = stand_in.wait_answer(token)  # every command is answered, one way or the other
    assert answer.ok or answer.error
