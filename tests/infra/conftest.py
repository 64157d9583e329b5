"""Infra fixtures: a private `ray start --head` on 127.0.0.1 (helpers in infra_processes.py)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from infra_processes import end_group, pids_mentioning, start_head, wait_http


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1 (2 CPUs, own temp dir), ended by its process group.

    Ray gives a new raylet a fixed 30 s to register; on a loaded machine that can pass, and the
    head exits. Then one fresh attempt is made before failing.
    """
    procs = []
    try:
        for _ in range(2):
            temp_dir = tempfile.mkdtemp(prefix="rh")  # short: Ray's socket paths must stay under 107 bytes
            proc, port, dash = start_head(temp_dir)
            procs.append((proc, temp_dir))
            if proc.poll() is None:
                break
        log = (Path(temp_dir) / "ray_start.log").read_text()
        assert proc.poll() is None, f"ray start --head failed twice:\n{log[-3000:]}"
        wait_http(f"http://127.0.0.1:{dash}/api/version", 120, proc)
        yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{port}", "temp_dir": temp_dir}
    finally:
        for proc, temp_dir in procs:
            end_group(proc)
            for pid in pids_mentioning(temp_dir):  # anything that left the group
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)
