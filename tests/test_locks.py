"""One writer per output: a real second process is stopped, naming the holder; a killed holder's
lock is taken over."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from hecktor import locks

HOLD = """
import sys, time
from hecktor import locks
with locks.writing(sys.argv[1], "predict"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(path):
    """A process that takes the lock of ``path`` and keeps it."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_stops_naming_the_holder_until_it_ends(tmp_path):
    out = tmp_path / "out"
    process = _holder(out)
    try:
        with pytest.raises(locks.LockedError) as err, locks.writing(out, "predict"):
            pass
        message = str(err.value)
        assert f"process {process.pid}" in message and "`hecktor predict`" in message
        assert str(out) in message and "wait for it to end" in message
    finally:
        process.terminate()
        process.wait()
    with locks.writing(out, "predict"):  # a holder that ends gives it up
        assert json.loads(locks.lock_file(out).read_text())["pid"] == os.getpid()
    assert not locks.lock_file(out).exists()  # nothing left beside the output


def test_the_lock_of_a_killed_holder_is_taken_over_and_said(tmp_path, caplog):
    out = tmp_path / "out"
    process = _holder(out)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads(locks.lock_file(out).read_text())["pid"] == process.pid  # left behind
    with caplog.at_level(logging.WARNING, logger="hecktor.locks"), locks.writing(out, "export"):
        pass
    assert f"process {process.pid}" in caplog.text and "taken over" in caplog.text


def test_one_process_cannot_write_an_output_twice_at_once(tmp_path):
    with locks.writing(tmp_path / "a", "prepare"):
        with (
            pytest.raises(locks.LockedError, match=f"process {os.getpid()}"),
            locks.writing(tmp_path / "a", "prepare"),
        ):
            pass
        with locks.writing(tmp_path / "b", "prepare"):  # another output: its own lock
            pass


def test_alive_tells_running_from_ended_processes():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    time.sleep(0.1)
    assert locks.alive(os.getpid()) and not locks.alive(process.pid) and not locks.alive(0)
