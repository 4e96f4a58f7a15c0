"""Stopping a sweep on SIGINT, SIGTERM or SIGHUP: the driver ends what it started (the parent run
marked KILLED, Ray shut down and its processes gone, the lock released) and exits with 128 + the
signal's number, the sweep left to `harness run --resume`.

The handler only records the signal; the driver acts on it at its next check: between its phases
(`check`), and in Tune's loop through Tune's own graceful stop (`Guard`), which saves the
experiment state and leaves unfinished trials to be rerun on resume. Raising from the handler
itself could cut a write to the tracking store or to Tune's state in half.

`Guard` also ends a sweep whose trials could not start in time: on a cluster that may add nodes,
a request no node fits yet waits at most `--scale-wait` seconds."""

import os
import signal
import time
from contextlib import contextmanager

from ray.tune import Callback

from harness.config import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state = {"signum": 0, "raised": False, "stopping": False, "deadline": 0.0, "late": False}


def _record(signum, frame):
    first = not _state["signum"]
    _state["signum"] = _state["signum"] or signum
    if not first and not _state["raised"]:  # a second signal before any check: do not wait for one
        check()


def check():
    """Raise Interrupted once, if a signal came."""
    if _state["signum"] and not _state["raised"]:
        _state["raised"] = True
        raise Interrupted(_state["signum"])


def install():
    """The recording handler for the three signals (again after ray.init, which sets its own for SIGTERM)."""
    for sig in SIGNALS:
        signal.signal(sig, _record)


@contextmanager
def caught():
    """The three signals are recorded while the block runs; the block is left with Interrupted if
    one came (also after its last check)."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # else Tune takes SIGINT for its own stop
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _state.update(signum=0, raised=False, stopping=False, deadline=0.0, late=False)
    install()
    try:
        yield
        check()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_nodes(seconds: float):
    """The sweep ends (`late`) if no trial has started within `seconds`."""
    _state["deadline"] = time.monotonic() + seconds


def late() -> bool:
    return _state["late"]


class Guard(Callback):
    """Stops Tune's loop once a signal came, or when no trial started before the deadline, by
    Tune's graceful stop (SIGUSR1, whose handler Tune installs for the loop)."""

    def on_step_begin(self, iteration, trials, **info):
        if _state["deadline"] and any(t.status != "PENDING" for t in trials):
            _state["deadline"] = 0.0  # a node took a trial
        _state["late"] = bool(_state["deadline"]) and time.monotonic() > _state["deadline"]
        if not _state["stopping"] and (_state["signum"] or _state["late"]):
            _state["stopping"] = True
            signal.raise_signal(signal.SIGUSR1)
