"""tms_server.signals.StopFlag: the stop the supervisor and each worker wait for."""

from __future__ import annotations

import os
import threading
import time

from tms_server.signals import StopFlag


def test_a_flag_not_raised_waits_out_its_timeout() -> None:
    flag = StopFlag()
    started = time.monotonic()
    assert not flag.wait(0.05)
    assert time.monotonic() - started >= 0.04
    assert not flag.is_set()


def test_a_flag_raised_by_another_thread_wakes_the_waiter_at_once() -> None:
    flag = StopFlag()
    threading.Timer(0.05, flag.set, args=("SIGTERM",)).start()
    started = time.monotonic()
    assert flag.wait(30)
    assert time.monotonic() - started < 10
    assert flag.wait(30)  # and stays raised
    flag.set("SIGINT")  # a second stop changes nothing
    assert flag.reason == "SIGTERM"


def test_a_descriptor_becoming_readable_wakes_the_waiter_without_raising_the_flag() -> None:
    flag = StopFlag()
    read, write = os.pipe()  # as a worker's sentinel: readable once it has exited
    try:
        threading.Timer(0.05, os.close, args=(write,)).start()
        started = time.monotonic()
        assert not flag.wait(30, [read])
        assert time.monotonic() - started < 10
    finally:
        os.close(read)
