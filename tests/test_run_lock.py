"""One training per run directory: RunLock refuses a live holder, takes over a dead one, releases only its own."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sslsv.runs import RunError, RunLayout, RunLock

HOLD_LOCK = ("import sys; from sslsv.runs import RunLock; RunLock(sys.argv[1]).acquire(); "
             "print('locked', flush=True); sys.stdin.read()")


def _write_lock(run: Path, **holder) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = RunLayout(run).lock
    path.write_text(json.dumps({"host": socket.gethostname(), "started": "2024-01-01T00:00:00+00:00",
                                "argv": ["train.py"], **holder}))
    return path


def test_second_process_is_refused_then_dead_holder_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(RunError, match=rf"{re.escape(str(run))} is in use by another training \(pid "
                                           rf"{holder.pid} on host {re.escape(socket.gethostname())} since .*\); "
                                           r"wait for it or train into another run_dir"):
            RunLock(run).acquire()
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock file stays behind, naming a PID that no longer runs
    assert json.loads(RunLayout(run).lock.read_text())["pid"] == holder.pid
    lock = RunLock(run).acquire()
    assert f"taking over the lock of pid {holder.pid}" in capsys.readouterr().out
    assert json.loads(RunLayout(run).lock.read_text())["pid"] == os.getpid()
    lock.release()
    assert not RunLayout(run).lock.exists()


def test_lock_records_the_holder_and_context_manager_releases(tmp_path):
    run = tmp_path / "new" / "run"
    with RunLock(run):
        holder = json.loads(RunLayout(run).lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"] and holder["argv"] == sys.argv
        with pytest.raises(RunError, match="is in use by another training"):  # a second lock in the same process
            RunLock(run).acquire()
    assert not RunLayout(run).lock.exists()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    path = _write_lock(run, pid=12345)  # someone deleted ours and took the directory
    lock.release()
    assert path.exists()


def test_lock_of_another_host_is_refused_with_what_to_do(tmp_path):
    path = _write_lock(tmp_path / "run", pid=1, host="other-node")
    with pytest.raises(RunError, match=rf"pid 1 on host other-node .*if that process is gone, delete "
                                       rf"{re.escape(str(path))} and start again"):
        RunLock(tmp_path / "run").acquire()
    assert json.loads(path.read_text())["host"] == "other-node"


def test_reused_pid_and_unreadable_lock_are_taken_over(tmp_path, capsys):
    # our own PID with another start time: the PID was reused by a later process (e.g. after a reboot)
    _write_lock(tmp_path / "a", pid=os.getpid(), pid_start=-1)
    RunLock(tmp_path / "a").acquire().release()
    assert f"taking over the lock of pid {os.getpid()}" in capsys.readouterr().out
    # a process killed between creating the lock file and writing it
    (tmp_path / "b").mkdir()
    RunLayout(tmp_path / "b").lock.write_text("")
    RunLock(tmp_path / "b").acquire().release()
    assert "taking over the unreadable lock" in capsys.readouterr().out


def test_run_dir_naming_a_file_is_refused(tmp_path):
    file = tmp_path / "run"
    file.write_text("not a folder")
    with pytest.raises(RunError, match=f"{re.escape(str(file))} is a file, not a run directory"):
        RunLock(file).acquire()
