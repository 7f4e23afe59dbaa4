"""tms_server.crashes: calls noted as they run, suspects and poison made by the supervisor
when a worker exits, kept if it crashed, and poison refused; all within one process here."""

from __future__ import annotations

import signal
import time

import pytest

from tms_server.crashes import (
    SLOTS,
    UNWATCHED,
    CrashBoard,
    CrashGuard,
    crashed,
    fingerprint,
)
from tms_server.errors import Internal, Reason

METHOD = "/tms.v1.ModelService/RunImage"
BAD = bytes(range(256)) * 600  # 150 KB
NEAR = BAD[:1001] + b"\xff" + BAD[1002:]  # one byte apart, off the fingerprint's stride
OTHER = b"x" * 10


def mark(guard: CrashGuard, request: bytes, model: str = "model") -> tuple[int, int, int]:
    found = guard.check(METHOD, model, request)
    assert found is not None
    return found


def exit_while_running(
    board: CrashBoard, index: int, *requests: bytes, how: str = "killed by SIGSEGV"
) -> str | None:
    """Worker ``index`` exits while it runs ``requests`` (a crash unless ``how`` says not)."""
    guard = board.guard(index)

    def running(remaining: tuple[bytes, ...]) -> None:
        if remaining:
            guard.run(mark(guard, remaining[0]), running, remaining[1:])
        else:  # the supervisor sees its sentinel: the calls are still noted
            board.worker_dying(index)

    running(requests)
    return board.worker_died(index, how, crashed="SIGKILL" not in how)


def test_the_fingerprint_samples_a_request_and_the_full_hash_tells_inputs_apart() -> None:
    assert fingerprint(BAD, 1) == fingerprint(NEAR, 1) != fingerprint(BAD, 2)
    assert fingerprint(BAD, 1) == fingerprint(memoryview(BAD), 1)
    assert fingerprint(BAD[:-1], 1) != fingerprint(BAD, 1)
    board = CrashBoard(2)
    exit_while_running(board, 0, BAD)
    guard = board.guard(1)
    assert mark(guard, BAD)[2] not in (0, mark(guard, NEAR)[2])


def test_an_input_that_crashes_two_workers_is_refused_and_no_other() -> None:
    board = CrashBoard(3)
    assert mark(board.guard(0), BAD)[2] == 0  # no suspect: not hashed in full
    assert exit_while_running(board, 0, BAD) is None  # a suspect now
    assert repr(board) == "<CrashBoard suspects=1 poison=0>"
    crashes = exit_while_running(board, 1, BAD)
    assert crashes == "worker 0: killed by SIGSEGV; worker 1: killed by SIGSEGV"
    third = board.guard(2)
    with pytest.raises(Internal) as refused:
        third.check(METHOD, "model", BAD)
    assert refused.value.reason == Reason.MODEL_FAILED
    assert refused.value.retry_after is None  # clients do not retry INTERNAL anyway
    assert str(refused.value) == (
        f"this input crashed 2 workers ({crashes}); it is not run again until the model is "
        "reloaded or the server restarts"
    )
    assert mark(third, NEAR)[2]  # hashed in full, and run
    assert mark(third, BAD, "other")[2] == 0  # another model's input
    assert third.run((0, 0, 0), len, b"run") == 3


def test_a_call_waits_while_a_worker_that_ran_its_input_exits_and_runs_unless_it_crashed() -> None:
    board = CrashBoard(3)
    exit_while_running(board, 0, BAD)
    second, third = board.guard(1), board.guard(2)
    second.run(mark(second, BAD), board.worker_dying, 1)  # exiting, the exit code unknown
    assert third.check(METHOD, "model", BAD) is None  # wait and see
    assert third.check(METHOD, "model", BAD, wait=False) is not None  # waited long enough
    assert board.worker_died(1, "killed by SIGKILL", crashed=False) is None  # not a crash
    assert mark(third, BAD)[2]  # a suspect still, from worker 0
    assert repr(board) == "<CrashBoard suspects=1 poison=0>"


def test_an_exit_that_is_no_crash_leaves_nothing_behind() -> None:
    board = CrashBoard(1)
    assert exit_while_running(board, 0, BAD, how="killed by SIGKILL") is None
    assert repr(board) == "<CrashBoard suspects=0 poison=0>"


def test_a_crash_while_two_suspects_run_makes_neither_poison() -> None:
    board = CrashBoard(2)
    exit_while_running(board, 0, BAD, OTHER, how="killed by SIGABRT")
    assert exit_while_running(board, 1, BAD, OTHER, how="exit code 1") is None
    assert repr(board) == "<CrashBoard suspects=2 poison=0>"


def test_a_reload_forgets_the_inputs_of_its_model() -> None:
    board = CrashBoard(2)
    exit_while_running(board, 0, BAD)
    exit_while_running(board, 1, BAD)
    board.forget("other")
    assert repr(board) == "<CrashBoard suspects=1 poison=1>"
    board.forget("model")
    assert repr(board) == "<CrashBoard suspects=0 poison=0>"
    assert mark(board.guard(0), BAD)[2] == 0


def test_only_crash_signals_and_exit_codes_the_worker_does_not_use_are_crashes() -> None:
    own = frozenset({3, 4})
    assert [crashed(code, own) for code in (-signal.SIGSEGV, -signal.SIGABRT, 1)] == [True] * 3
    # SIGKILL: the supervisor's, an operator's, the OOM killer's; SIGTERM: a stop
    assert [crashed(code, own) for code in (-signal.SIGKILL, -signal.SIGTERM, 0, 3)] == [False] * 4


def test_a_crash_while_a_suspect_runs_beside_a_call_let_in_before_it_was_one_makes_no_poison() -> (
    None
):
    board = CrashBoard(3)
    second = board.guard(1)
    early = mark(second, BAD)  # another caller's BAD, let in on worker 1 before any crash
    assert early[2] == 0
    exit_while_running(board, 0, BAD, OTHER)  # OTHER, innocent, ran beside it: both suspects
    # Worker 1 crashes on that early BAD while OTHER, hashed now, runs beside it.
    second.run(early, second.run, mark(second, OTHER), board.worker_dying, 1)
    assert board.worker_died(1, "killed by SIGSEGV", crashed=True) is None
    assert mark(board.guard(2), OTHER)[2]  # not refused: BAD may have crashed worker 1 too
    assert repr(board) == "<CrashBoard suspects=2 poison=0>"


def test_a_call_let_in_while_the_supervisor_writes_the_tables_waits_and_does_not_sleep() -> None:
    board = CrashBoard(2)
    exit_while_running(board, 0, BAD)
    guard = board.guard(1)
    board._tables.version += 1  # the supervisor is writing (odd), as if descheduled meanwhile
    started = time.monotonic()
    assert guard.check(METHOD, "model", BAD) is None  # admit waits with asyncio.sleep
    assert time.monotonic() - started < 0.005  # no time.sleep on the event loop
    assert guard.check(METHOD, "model", BAD, wait=False) is not None  # waited long enough
    board._tables.version += 1  # written
    assert mark(guard, BAD)[2]  # a suspect: hashed in full


def test_a_crash_while_more_calls_run_than_a_worker_notes_makes_no_poison() -> None:
    board = CrashBoard(3)
    crowd = (OTHER,) * SLOTS  # one innocent input from many callers fills every slot
    exit_while_running(board, 0, *crowd, BAD)  # BAD, beyond the slots, runs unnoted
    assert exit_while_running(board, 1, *crowd, BAD) is None  # it may have crashed it
    assert mark(board.guard(2), OTHER)[2]  # OTHER is not refused
    assert repr(board) == "<CrashBoard suspects=1 poison=0>"


def test_a_crash_while_a_call_not_watched_runs_makes_no_poison() -> None:
    board = CrashBoard(3)
    for index in (0, 1):  # an HTTP call crashes two workers, OTHER beside it both times
        guard = board.guard(index)
        guard.run(UNWATCHED, guard.run, mark(guard, OTHER), board.worker_dying, index)
        assert board.worker_died(index, "killed by SIGSEGV", crashed=True) is None
    assert mark(board.guard(2), OTHER)[2]  # a suspect, not refused
    assert repr(board) == "<CrashBoard suspects=1 poison=0>"


def test_a_call_that_ended_is_not_blamed_for_a_later_crash_of_its_worker() -> None:
    board = CrashBoard(3)
    exit_while_running(board, 0, BAD)  # a suspect
    second = board.guard(1)
    assert second.run(mark(second, BAD), len, BAD) == len(BAD)  # ran on worker 1, and ended
    board.worker_dying(1)  # worker 1 crashes later, running no call (a thread of the model's)
    assert board.worker_died(1, "killed by SIGSEGV", crashed=True) is None
    assert mark(board.guard(2), BAD)[2]  # a suspect still, not refused
    assert repr(board) == "<CrashBoard suspects=1 poison=0>"
