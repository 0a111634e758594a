"""The HE worker processes end with the server process that started them, however it ends (SIGKILL included).

A worker that outlived a killed server would keep its memory (parsed contexts, cached plaintexts) and run
beside the next server. The server here is a small process that owns a ``ScoringPool`` and starts its workers.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SERVER = """
import os, sys, time
from he_engine import ScoringPool

pool = ScoringPool(workers=2, timeout=600)  # spawning on a loaded machine can be slow
pool.warm()
copy = os.fork() if "--fork-a-copy" in sys.argv else None
if copy == 0:  # a copy of the server without exec: it holds the write ends of the workers' parent pipes
    time.sleep(3600)
    os._exit(0)
print("ready", copy or 0, flush=True)
sys.stdin.read()  # until it is killed
"""


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by whoever adopted it) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pids: list[int]) -> dict[int, bool]:
    """pid -> still alive, once all are gone or a bound passed; the bound keeps a failing test from waiting forever
    on a loaded machine (they should go at once: the time is not checked)."""
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {pid: alive(pid) for pid in pids}


@pytest.mark.parametrize("fork_a_copy", [False, True], ids=["server", "server-with-a-forked-copy"])
def test_the_workers_exit_when_the_server_process_is_killed(fork_a_copy: bool) -> None:
    """With a forked copy of the server alive, the workers' parent pipes stay open and only the check of the parent
    pid sees the parent go; multiprocessing's resource tracker (whose pipe the copy holds too) goes with the copy."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, *(["--fork-a-copy"] if fork_a_copy else [])], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    started: list[int] = []
    try:
        assert server.stdout is not None
        # A guard against a hang only (the pool's own timeout is 600 s); the workers' start-up time is not checked.
        ready, _, _ = select.select([server.stdout], [], [], 900)
        line = server.stdout.readline().split() if ready else []
        assert line[:1] == [b"ready"], "the pool did not start"
        copy = int(line[1])
        started.extend(p for p in [copy] if p)
        procs = children(server.pid)  # the pool's workers, multiprocessing's resource tracker (and the copy)
        workers = [pid for pid, c in procs.items() if "spawn_main" in c]
        tracker = [pid for pid, c in procs.items() if "resource_tracker" in c]
        started.extend(workers + tracker)
        assert len(workers) == 2 and len(tracker) == 1, procs
        server.kill()
        server.wait()
        if copy:
            survivors = [pid for pid, up in wait_until_gone(workers).items() if up]
            assert not survivors, f"workers outlived the server: {survivors}"
            os.kill(copy, signal.SIGKILL)
        survivors = [pid for pid, up in wait_until_gone(workers + tracker).items() if up]
        assert not survivors, f"outlived the server: {[procs[pid] for pid in survivors]}"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for pid in started:  # leave nothing behind if the test failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
