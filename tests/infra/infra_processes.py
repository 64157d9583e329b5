"""Process helpers of the infra tests: start a private Ray head, wait for HTTP, end process groups.

A module with its own name (not conftest), so test files import it whatever folders pytest collects.
Never `ray stop`: it ends every Ray process on the machine, other people's included. Everything
here runs in its own process group (and its own Ray temp dir) and is ended by that group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


from ports import free_port  # noqa: E402  (one helper for every area)


def ray_env(**extra: str) -> dict[str, str]:
    """Environment for Ray CLIs: auth mode agreed on both sides, nodes kept on loopback."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    # As with an activated venv: a job's `python` entrypoint is the project's interpreter.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def end_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace_s
    while time.time() < deadline and group_alive(proc.pid):
        proc.poll()
        time.sleep(0.2)
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; only live (non-zombie) members matter.
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                return True
    return False


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a temp dir only our processes use)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmd and state != "Z":
                found.append(int(pid))
    return found


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def start_head(temp_dir: str) -> tuple[subprocess.Popen, int, int]:
    """One `ray start --head --block` in its own process group; (process, GCS port, dashboard port)."""
    port, dash = free_port(), free_port()
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--temp-dir", temp_dir, "--disable-usage-stats",
           # Fixed by default (52365, 10001): another Ray on this machine may hold them already.
           "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())]
    log = Path(temp_dir) / "ray_start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    # `ray start` prints this only once the raylet has registered with the GCS.
    while time.time() < deadline and proc.poll() is None and "Ray runtime started" not in log.read_text():
        time.sleep(0.5)
    return proc, port, dash
