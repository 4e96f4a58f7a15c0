"""harness/interrupt.py: a signal is recorded and acted on at the next check, Tune's loop is
stopped through its graceful stop, and a request no node takes in time ends the sweep. The
end-to-end cases (a real `harness run` sent signals by pid) are in test_faults.py."""

import os
import signal
import time
from types import SimpleNamespace

import pytest

from harness import interrupt
from harness.config import Interrupted


def test_a_signal_waits_for_the_next_check_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        with interrupt.caught():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler has run: recorded, nothing raised
            cleaned = True
            interrupt.check()
            cleaned = False
    assert cleaned and err.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_after_the_last_check_still_ends_the_block():
    with pytest.raises(Interrupted) as err:
        with interrupt.caught():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
    assert err.value.signum == signal.SIGHUP


def test_a_second_signal_before_any_check_acts_at_once():
    start = time.monotonic()
    with pytest.raises(Interrupted) as err:
        with interrupt.caught():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # raised from the handler, before this ends
    assert err.value.signum == signal.SIGINT and time.monotonic() - start < 2


def test_the_guard_stops_tunes_loop_once(monkeypatch):
    stops = []
    monkeypatch.setattr(signal, "raise_signal", stops.append)
    guard, running = interrupt.Guard(), [SimpleNamespace(status="RUNNING")]
    with pytest.raises(Interrupted):
        with interrupt.caught():
            guard.on_step_begin(0, running)
            assert stops == []
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            guard.on_step_begin(1, running)
            guard.on_step_begin(2, running)
    assert stops == [signal.SIGUSR1]


def test_trials_that_no_node_takes_in_time_end_the_sweep(monkeypatch):
    stops = []
    monkeypatch.setattr(signal, "raise_signal", stops.append)
    guard, pending = interrupt.Guard(), [SimpleNamespace(status="PENDING")]
    with interrupt.caught():
        interrupt.wait_for_nodes(0.2)
        guard.on_step_begin(0, pending)
        assert stops == [] and not interrupt.late()
        time.sleep(0.3)
        guard.on_step_begin(1, pending)
        assert stops == [signal.SIGUSR1] and interrupt.late()
    with interrupt.caught():  # a trial that starts in time lifts the limit
        interrupt.wait_for_nodes(0.2)
        guard.on_step_begin(0, [SimpleNamespace(status="RUNNING")])
        time.sleep(0.3)
        guard.on_step_begin(1, pending)
        assert not interrupt.late() and len(stops) == 1
