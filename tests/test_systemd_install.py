"""The shipped systemd unit, run the way systemd would run it: the package installed into a
venv at the unit's ExecStart path, the unit's user (from the shipped sysusers.d file), its
State/Runtime/Logs/Configuration directories, `/` read-only but for those, no capabilities,
a NOTIFY_SOCKET and a watchdog. systemd is not PID 1 here, so a mount namespace
(`unshare -m`) stands in for the sandbox and `setpriv` for User=. The service must say
READY=1, fetch a loopback wire, send WATCHDOG=1, and on SIGTERM say STOPPING=1 and exit 0.

Not emulated (left to systemd itself, and to `systemd-analyze verify`, which checks the
unit file here): SystemCallFilter, PrivateDevices, ProtectKernel*, RestrictAddressFamilies,
DynamicUser-style ownership, MemoryMax. The venv is built from the system Python
(/usr/bin/python3): ProtectHome=yes hides interpreters under /root or /home.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEM_PYTHON = "/usr/bin/python3"
SERVICE_UID = 61234  # what systemd-sysusers would pick: a free system uid


def unit_settings(path: Path) -> dict[str, list[str]]:
    """key -> values of a unit file (systemd allows a key more than once)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def sysusers_user(path: Path) -> tuple[str, str]:
    """(name, home) of the `u` line of a sysusers.d file."""
    for line in path.read_text().splitlines():
        fields = shlex.split(line, comments=True)
        if fields and fields[0] == "u":
            return fields[1], fields[4]
    raise AssertionError(f"no user in {path}")


def namespaces_allowed() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount and to switch to the service's user"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} (a system Python for the service's venv) is missing"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs",
                            "tmpfs", "/mnt"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"mount namespaces are not permitted here: {probe.stderr.strip()}"
    return None


SANDBOX = r"""
set -euo pipefail
venv="$1"; conf_dir="$2"; state="$3"; runtime="$4"; logs="$5"; wheel="$6"; deps="$7"
user="$8"; home="$9"; uid="${10}"; config_src="${11}"; exec_start="${12}"; notify="${13}"
pip_python="${14}"
mount --make-rprivate /
for d in "$(dirname "$venv")" "$conf_dir" "$state" "$runtime" "$logs"; do
    mount -t tmpfs -o mode=0755 tmpfs "$d"
done
# The unit's user, as systemd-sysusers would add it.
cp /etc/passwd /etc/group "$runtime"/
echo "$user:x:$uid:$uid:Catalyst Supervisor:$home:/usr/sbin/nologin" >> "$runtime/passwd"
echo "$user:x:$uid:" >> "$runtime/group"
mount --bind "$runtime/passwd" /etc/passwd
mount --bind "$runtime/group" /etc/group
# The package, installed into a venv at the unit's ExecStart path.
/usr/bin/python3 -m venv --without-pip "$venv"
"$pip_python" -m pip --python "$venv/bin/python" install -q --no-deps --no-index "$wheel"
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$site/_deps_from_test_venv.pth"   # third-party libraries, read only
# The shipped systemd config (catalyst-supervisor init --systemd), then the directories
# systemd creates for StateDirectory= and kin, owned by the user, mode 0700.
"$venv/bin/catalyst-supervisor" init --systemd "$conf_dir" > /dev/null
cp "$config_src" "$conf_dir/config.yaml"
chown "$uid:$uid" "$state" "$runtime" "$logs"
chmod 0700 "$state" "$runtime" "$logs"
# ProtectSystem=strict: everything read-only but the unit's writable paths.
mount -o remount,bind,ro /
cd "$state"
setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all --no-new-privs \
    env -i PATH=/usr/bin:/bin HOME="$home" NOTIFY_SOCKET="$notify" WATCHDOG_USEC=2000000 \
    STATE_DIRECTORY="$state" RUNTIME_DIRECTORY="$runtime" LOGS_DIRECTORY="$logs" \
    CONFIGURATION_DIRECTORY="$conf_dir" $exec_start &
pid=$!
echo "PID $pid"
set +e
wait "$pid"
code=$?
echo "EXIT $code"
echo "FILES $(stat -c '%a %U %n' "$state"/* | tr '\n' ';')"
"""


@pytest.mark.parametrize("name", ["catalyst-supervisor.service",
                                  "catalyst-supervisor-failed.service"])
def test_the_shipped_units_pass_systemd_analyze_verify(tmp_path, name):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify also checks that ExecStart exists: the venv is not installed on this host, so
    # /bin/true stands in for it (the sandbox test runs the real one).
    binary = unit_settings(DEPLOY / name)["ExecStart"][0].split()[0]
    for unit in ("catalyst-supervisor.service", "catalyst-supervisor-failed.service"):
        text = (DEPLOY / unit).read_text()
        (tmp_path / unit).write_text(text if Path(binary).exists() else
                                     text.replace(binary, "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", f"./{name}"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_units_execstart_runs_under_its_sandbox(tmp_path, wire):
    reason = namespaces_allowed()
    if reason:
        pytest.skip(reason)
    unit = unit_settings(DEPLOY / "catalyst-supervisor.service")
    exec_start = unit["ExecStart"][0]
    venv = Path(exec_start.split()[0]).parent.parent
    user, home = sysusers_user(DEPLOY / "catalyst-supervisor.sysusers")
    assert unit["User"] == [user] and unit["Type"] == ["notify"]
    dirs = {key: Path(base) / unit[key][0] for key, base in (
        ("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run"), ("LogsDirectory", "/var/log"),
        ("ConfigurationDirectory", "/etc"))}
    created = [d for d in [venv.parent, *dirs.values()] if not d.exists()]
    for d in created:  # empty mount points on the host; the namespace mounts tmpfs on them
        d.mkdir(parents=True)
    try:
        _run_sandboxed(tmp_path, wire, exec_start, venv, user, home, dirs)
    finally:
        for d in reversed(created):
            d.rmdir()


def _run_sandboxed(tmp_path, wire, exec_start, venv, user, home, dirs):
    # A wheel of this checkout, built from a copy of what the package is made of (so the
    # tree stays clean, and a demo's run directory with its sockets is not copied).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for package in ("actors", "supervisor", "catalyst_config"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path / "wheel"), str(src)], check=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("catalyst_supervisor-*.whl"))
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    closed = [str(d) for d in [Path(deps), *Path(deps).parents] if not os.stat(d).st_mode & 0o001]
    if closed:  # the service's user must read the test venv's libraries
        pytest.skip(f"the test venv's libraries are not readable by another user ({closed[0]} "
                    "is not world-searchable); clone into a directory others may enter")
    # The config a new operator gets from init --systemd, with a contact and a loopback wire.
    feed = [{"title": "Sandbox Corp Announces FDA Approval of Widget (NASDAQ: SBXC)",
             "link": "https://news.example.com/sandbox/1", "published": time.time()}]
    url = wire.serve_feed("/sandbox.xml", lambda: feed)
    init_dir = tmp_path / "init"
    subprocess.run([sys.executable, "-m", "supervisor.cli", "init", "--systemd", str(init_dir)],
                   check=True, cwd=ROOT, capture_output=True, timeout=60)
    text = (init_dir / "config.yaml").read_text()
    assert f"data_dir: {dirs['StateDirectory']}" in text
    data = yaml.safe_load(text)
    data["sec_user_agent"] = "Sandbox Desk ops@sandbox-desk.test"
    data["feeds"] = [{"name": "sandbox", "kind": "pr", "url": url}]
    data["fetch"]["first_poll"] = "alert"
    data["supervisor"]["metrics_port"] = 0
    console_port = data["console"]["port"] = free_port()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    os.chmod(tmp_path, 0o755)
    # The notify socket, as systemd's: the service's user may reach and write to it.
    notify_dir = Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp"))
    os.chmod(notify_dir, 0o755)
    notify_path = notify_dir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    os.chmod(notify_path, 0o777)
    notify.settimeout(1.0)
    script = tmp_path / "sandbox.sh"
    script.write_text(SANDBOX)
    args = [str(venv), str(dirs["ConfigurationDirectory"]), str(dirs["StateDirectory"]),
            str(dirs["RuntimeDirectory"]), str(dirs["LogsDirectory"]), str(wheel), deps, user,
            home, str(SERVICE_UID), str(tmp_path / "config.yaml"), exec_start, str(notify_path),
            sys.executable]
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "bash", str(script),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen: list[str] = []
    try:
        pid = _service_pid(proc)
        _read_until(notify, seen, "READY=1", 60)
        wait_for(lambda: wire.hits.get("/sandbox.xml", 0) >= 1, 30, message="the wire fetched")
        # The probes a load balancer or a health check asks, answered from inside the sandbox.
        wait_for(lambda: _probe(console_port, "/ready") == 200, 30, interval=0.2,
                 message="/ready answering 200 from the sandboxed service")
        assert _probe(console_port, "/health") == 200
        _read_until(notify, seen, "WATCHDOG=1", 10)
        os.kill(pid, 15)
        _read_until(notify, seen, "STOPPING=1", 30)
        out, _ = proc.communicate(timeout=120)
    except AssertionError as exc:
        os.killpg(proc.pid, signal.SIGKILL)  # the sandbox and the service in it
        said = proc.communicate(timeout=30)[0][-6000:]
        raise AssertionError(f"{exc}\nthe sandbox said:\n{said}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        notify.close()
        shutil.rmtree(notify_dir, ignore_errors=True)
    assert "EXIT 0" in out, out[-4000:]
    files = out.split("FILES ", 1)[1]
    # seen.db and kin, written by the service's user, private (UMask=0077 and our own modes).
    assert "600 " in files and user in files and "seen.db" in files, files


def _probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as res:
            return res.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _service_pid(proc) -> int:
    deadline = time.monotonic() + 300
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("PID "):
            return int(line.split()[1])
    raise AssertionError("the sandbox did not start the service:\n" + "".join(lines)[-4000:])


def _read_until(sock: socket.socket, seen: list[str], word: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(word in m for m in seen):
        assert time.monotonic() < deadline, f"no {word} from the service; got {seen}"
        try:
            seen.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
