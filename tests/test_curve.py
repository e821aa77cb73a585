"""tcp:// endpoints under CurveZMQ: what the configuration refuses, the key pairs the
`keys` command writes, who a secured socket lets in, and the whole service over tcp."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from zmq.auth import load_certificate

from actors.errors import ConfigError
from actors.transport import Transport
from catalyst_config import config_from_dict
from supervisor.cli import main as cli_main
from tests.conftest import ROOT, base_config, wait_for

ENDPOINTS = ("control", "cli", "dedupe_rpc", "dedupe_acks", "llm_in", "alert_in")
REFUSAL_DEADLINE_S = 10.0


def make_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """A host's pair, made by the `keys` command: (secret file, public file)."""
    assert cli_main(["keys", str(folder), "--name", name]) == 0
    return folder / f"{name}.key_secret", folder / f"{name}.key"


def allow(keys_dir: Path, *public_files: Path) -> Path:
    keys_dir.mkdir(exist_ok=True)
    for public in public_files:
        shutil.copy(public, keys_dir / public.name)
    return keys_dir


def free_ports(*runs: int) -> list[int]:
    """Ports free on 127.0.0.1 now, all distinct: for each run length, the first of that
    many free ports in a row (an endpoint whose instances listen on PORT + i)."""
    found: list[int] = []
    held: list[socket.socket] = []
    try:
        for length in runs:
            while True:
                probe = socket.socket()
                held.append(probe)
                probe.bind(("127.0.0.1", 0))
                first = probe.getsockname()[1]
                try:
                    for port in range(first + 1, first + length):
                        extra = socket.socket()
                        held.append(extra)
                        extra.bind(("127.0.0.1", port))
                except OSError:
                    continue
                found.append(first)
                break
    finally:
        for s in held:
            s.close()
    return found


def curve_config(secret: Path | None, keys_dir: Path | None, **endpoints: str):
    data = {"endpoints": endpoints, "curve": {
        "secret_key": str(secret) if secret else None,
        "public_keys_dir": str(keys_dir) if keys_dir else None}}
    return config_from_dict(data, with_secrets=False)


# (a) What the configuration refuses ---------------------------------------------------


def test_a_tcp_endpoint_without_curve_keys_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as err:
        curve_config(None, None, dedupe_rpc="tcp://127.0.0.1:5701")
    assert err.value.path == "endpoints.dedupe_rpc"
    assert "tcp:// needs curve.secret_key" in str(err.value)
    assert "catalyst-supervisor keys" in str(err.value)


@pytest.mark.parametrize("address", [
    "tcp://127.0.0.1", "tcp://*:5701", "tcp://127.0.0.1:*", "tcp://127.0.0.1:0",
    "tcp://127.0.0.1:70000", "tcp://eth0;127.0.0.1:5701", "tcp://127.0.0.1:57o1",
    "tcp://:5701", "tcp://[::1:5701"])
def test_a_tcp_endpoint_must_be_a_fixed_host_and_port(tmp_path, address):
    secret, public = make_keys(tmp_path, "127.0.0.1")
    keys_dir = allow(tmp_path / "allowed", public)
    with pytest.raises(ConfigError) as err:
        curve_config(secret, keys_dir, cli=address)
    assert err.value.path == "endpoints.cli"
    assert "tcp://HOST:PORT" in str(err.value) or "outside 1-65535" in str(err.value)


def test_instances_listen_on_consecutive_ports_that_no_other_endpoint_may_take(tmp_path):
    secret, public = make_keys(tmp_path, "127.0.0.1")
    keys_dir = allow(tmp_path / "allowed", public)
    data = {"actors": {"llm": {"instances": 3}},
            "endpoints": {"llm_in": "tcp://127.0.0.1:5710", "alert_in": "tcp://127.0.0.1:5712"},
            "curve": {"secret_key": str(secret), "public_keys_dir": str(keys_dir)}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, with_secrets=False)
    assert err.value.path == "endpoints.alert_in"
    assert "port 5712 on 127.0.0.1 is already endpoints.llm_in (instance 2)" in str(err.value)
    data["endpoints"]["alert_in"] = "tcp://127.0.0.1:5713"
    cfg = config_from_dict(data, with_secrets=False)
    assert [cfg.instance_endpoint("llm_in", i) for i in range(3)] == [
        "tcp://127.0.0.1:5710", "tcp://127.0.0.1:5711", "tcp://127.0.0.1:5712"]
    data["endpoints"] = {"llm_in": "tcp://127.0.0.1:65534"}  # instance 2 would be 65536
    with pytest.raises(ConfigError, match="endpoints.llm_in: port 65534 .* outside"):
        config_from_dict(data, with_secrets=False)


def test_curve_files_that_cannot_serve_are_refused_naming_the_file(tmp_path):
    secret, public = make_keys(tmp_path, "127.0.0.1")
    keys_dir = allow(tmp_path / "allowed")  # the server's public key is not in it yet
    with pytest.raises(ConfigError) as err:
        curve_config(secret, keys_dir, cli="tcp://127.0.0.1:5720")
    assert err.value.path == "endpoints.cli"
    assert str(keys_dir / "127.0.0.1.key") in str(err.value)
    allow(keys_dir, public)
    with pytest.raises(ConfigError, match="curve.secret_key: .* has no secret key"):
        curve_config(public, keys_dir, cli="tcp://127.0.0.1:5720")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="curve.secret_key: .* readable by every user"):
        curve_config(secret, keys_dir, cli="tcp://127.0.0.1:5720")
    os.chmod(secret, 0o600)
    shutil.copy(secret, keys_dir / "oops.key")  # a secret dropped among the public keys
    with pytest.raises(ConfigError, match="curve.public_keys_dir: .*oops.key holds a secret"):
        curve_config(secret, keys_dir, cli="tcp://127.0.0.1:5720")
    (keys_dir / "oops.key").unlink()
    cfg = curve_config(secret, keys_dir, cli="tcp://127.0.0.1:5720", control=None)
    assert cfg.endpoint("cli") == "tcp://127.0.0.1:5720"
    assert cfg.endpoint("control").startswith("ipc://")  # ipc stays as it was


# (b) The keys command -------------------------------------------------------------------


def test_keys_writes_a_private_secret_and_a_public_key_whatever_the_umask(tmp_path):
    target = tmp_path / "curve"
    run = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "keys", str(target), "--name", "ingest-1",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.umask(0), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    wrote = json.loads(run.stdout)
    secret, public = Path(wrote["secret_key"]), Path(wrote["public_key"])
    assert (secret.name, public.name) == ("ingest-1.key_secret", "ingest-1.key")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct(public.stat().st_mode & 0o777) == "0o644"
    assert oct(target.stat().st_mode & 0o777) == "0o700"
    pub_key, secret_key = load_certificate(secret)
    assert secret_key and load_certificate(public) == (pub_key, None)
    assert sorted(p.name for p in target.iterdir()) == ["ingest-1.key", "ingest-1.key_secret"]
    again = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "keys", str(target), "--name", "ingest-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 1 and "exists (--force" in again.stderr
    assert load_certificate(secret) == (pub_key, secret_key)  # the pair was not replaced


# (c) Who a secured socket lets in ---------------------------------------------------------


def _client(ctx: zmq.Context, secret_file: Path | None, server_public: bytes, endpoint: str):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if secret_file is not None:
        sock.curve_publickey, sock.curve_secretkey = load_certificate(secret_file)
        sock.curve_serverkey = server_public
    sock.connect(endpoint)
    try:  # a refused client has no peer left: its send would wait forever
        sock.send(b"hello", zmq.NOBLOCK)
    except zmq.Again:
        pass
    return sock


def test_a_secured_router_lets_in_only_allowed_curve_keys_and_counts_the_rest(tmp_path,
                                                                             caplog):
    caplog.set_level(logging.WARNING, logger="catalyst.transport")
    (port,) = free_ports(1)
    endpoint = f"tcp://127.0.0.1:{port}"
    server_secret, server_public = make_keys(tmp_path / "server", "127.0.0.1")
    friend_secret, friend_public = make_keys(tmp_path / "friend", "friend")
    stranger_secret, stranger_public = make_keys(tmp_path / "stranger", "stranger")
    keys_dir = allow(tmp_path / "allowed", server_public, friend_public)
    server_cfg = curve_config(server_secret, keys_dir, dedupe_rpc=endpoint)
    ctx = zmq.Context()
    counts: dict[str, int] = {}
    try:
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        server = Transport(server_cfg, ctx, counts, "test-server")
        server.bind(router, endpoint)

        # The friend connects as an actor does: through its own host's Transport.
        friend_dir = allow(tmp_path / "friend-allowed", server_public)
        friend_cfg = curve_config(friend_secret, friend_dir, dedupe_rpc=endpoint)
        friend = ctx.socket(zmq.DEALER)
        friend.linger = 0
        Transport(friend_cfg, ctx).connect(friend, endpoint)
        friend.send(b"hello")
        assert router.poll(REFUSAL_DEADLINE_S * 1000), "the allowed key never got through"
        assert router.recv_multipart()[-1] == b"hello"

        server_key = load_certificate(server_public)[0]
        stranger = _client(ctx, stranger_secret, server_key, endpoint)
        wait_for(lambda: counts["curve_refused"] >= 1, REFUSAL_DEADLINE_S,
                 message="the stranger's key refused and counted")
        plain = _client(ctx, None, b"", endpoint)
        wait_for(lambda: counts["curve_handshake_failed"] >= 1, REFUSAL_DEADLINE_S,
                 message="the plain client refused and counted")
        # Both were turned away at the handshake: nothing of theirs arrives, ever.
        assert not router.poll(1000)
        assert counts["curve_refused"] >= 1
        for sock in (friend, stranger, plain):
            sock.close()
    finally:
        ctx.destroy(linger=0)  # ends the ZAP thread too (its poll sees ETERM)
    server.guard.thread.join(5)
    assert not server.guard.thread.is_alive()
    stranger_key = load_certificate(stranger_public)[0].decode()
    secrets = [load_certificate(f)[1].decode()
               for f in (server_secret, friend_secret, stranger_secret)]
    lines = [r.getMessage() for r in caplog.records]
    assert any(stranger_key in line and "is not in" in line for line in lines), lines
    assert any("does not use CurveZMQ" in line for line in lines), lines
    assert not any(s in line for s in secrets for line in lines)  # never a secret key


def test_a_key_added_to_the_allowed_directory_is_let_in_without_a_restart(tmp_path):
    (port,) = free_ports(1)
    endpoint = f"tcp://127.0.0.1:{port}"
    server_secret, server_public = make_keys(tmp_path / "server", "127.0.0.1")
    newcomer_secret, newcomer_public = make_keys(tmp_path / "newcomer", "newcomer")
    keys_dir = allow(tmp_path / "allowed", server_public)
    ctx = zmq.Context()
    counts: dict[str, int] = {}
    try:
        router = ctx.socket(zmq.ROUTER)
        router.linger = 0
        Transport(curve_config(server_secret, keys_dir, cli=endpoint), ctx, counts,
                  "test-server").bind(router, endpoint)
        server_key = load_certificate(server_public)[0]
        early = _client(ctx, newcomer_secret, server_key, endpoint)
        wait_for(lambda: counts["curve_refused"] >= 1, REFUSAL_DEADLINE_S,
                 message="the newcomer refused before its key is there")
        early.close()
        allow(keys_dir, newcomer_public)
        later = _client(ctx, newcomer_secret, server_key, endpoint)
        assert router.poll(REFUSAL_DEADLINE_S * 1000), "the newcomer's key was not picked up"
        assert router.recv_multipart()[-1] == b"hello"
        later.close()
    finally:
        ctx.destroy(linger=0)


def test_a_server_bound_with_another_hosts_key_is_a_config_error(tmp_path):
    (port,) = free_ports(1)
    endpoint = f"tcp://127.0.0.1:{port}"
    _, own_public = make_keys(tmp_path / "own", "127.0.0.1")
    other_secret, _ = make_keys(tmp_path / "other", "other")
    cfg = curve_config(other_secret, allow(tmp_path / "allowed", own_public), cli=endpoint)
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        with pytest.raises(ConfigError, match="clients expect the key in .*127.0.0.1.key"):
            Transport(cfg, ctx, {}, "test").bind(router, endpoint)
    finally:
        ctx.destroy(linger=0)


# (d) The whole service over tcp ----------------------------------------------------------


def test_the_service_alerts_each_item_once_over_curve_tcp_and_status_works(
        run_supervisor, workdir, wire):
    items = [{"title": f"Acme (NASDAQ: ACME{i}) announces FDA approval of drug {i}",
              "link": f"https://wire.test/tcp/{i}"} for i in range(12)]
    url = wire.serve_feed("/tcp", lambda: items)
    secret, public = make_keys(workdir / "curve", "127.0.0.1")
    keys_dir = allow(workdir / "allowed", public)
    control, cli_port, rpc, acks, llm_port, alert_port = free_ports(1, 1, 1, 1, 2, 1)
    endpoints = {"control": f"tcp://127.0.0.1:{control}", "cli": f"tcp://127.0.0.1:{cli_port}",
                 "dedupe_rpc": f"tcp://127.0.0.1:{rpc}", "dedupe_acks": f"tcp://127.0.0.1:{acks}",
                 "llm_in": f"tcp://127.0.0.1:{llm_port}",
                 "alert_in": f"tcp://127.0.0.1:{alert_port}"}
    assert set(endpoints) == set(ENDPOINTS)
    cfg = base_config(workdir, [{"name": "tcp-wire", "kind": "pr", "url": url}],
                      endpoints=endpoints,
                      curve={"secret_key": str(secret), "public_keys_dir": str(keys_dir)},
                      actors={"llm": {"instances": 2}})
    running = run_supervisor(cfg)
    wait_for(lambda: len(running.alerts()) >= len(items), 45, message="every item alerted")
    status = running.cli("status", "--json")
    assert status.returncode == 0, status.stderr + running.log_text()[-3000:]
    actors = {a["name"]: a for a in json.loads(status.stdout)["actors"]}
    assert set(actors) == {"fetcher-0", "dedupe-0", "llm-0", "llm-1", "alert-0"}
    assert all(a["state"] == "running" and a["restarts"] == 0 for a in actors.values())

    # A stranger knocking on dedupe's claim socket is refused and shows in its stats.
    stranger_secret, _ = make_keys(workdir / "stranger", "stranger")
    ctx = zmq.Context()
    try:
        stranger = _client(ctx, stranger_secret, load_certificate(public)[0],
                           endpoints["dedupe_rpc"])
        wait_for(lambda: ((running.actor("dedupe-0") or {}).get("stats") or {})
                 .get("curve_refused", 0) >= 1, 20, message="dedupe counts the refusal")
        stranger.close()
    finally:
        ctx.destroy(linger=0)

    stop = running.cli("stop", "--wait", "--timeout", "60")
    assert stop.returncode == 0, stop.stderr + running.log_text()[-3000:]
    keys = [a["key"] for a in running.alerts()]
    assert len(keys) == len(items) and len(set(keys)) == len(items), keys
    assert not list((workdir / "run").glob("*.sock"))  # every socket was tcp
    assert "Traceback" not in running.log_text()
