"""The terminal view of a sweep: where it is, how long it has taken, and how long it will take.

A Ray Tune callback. Every running trial's phase is read from the results it already reports
(no extra reports: ASHA counts them): before its first report it is loading the model and
initializing the adapters (the gradient phase for methods that need one); a report at step k < N
means it is training past step k; the report at step N means it is scoring; the final report
ends it. The time left is estimated from the finished trials' mean duration and the trials
still to run, spread over as many as run at once.

On a terminal one live line is redrawn in place; in a log (not a TTY) each finished trial gets a
line, and a status line follows whenever a minute has passed without output."""

import sys
import time

from ray.tune import Callback

from harness.config import trial_spec
from reports.plots import lr_label, number

# <key>_seconds of a trial's final result, by phase, in the order the end summary names them
PHASES = {"training": ("train",), "scoring": ("score",), "validation": ("val",), "model load": ("load",),
          "gradient phase": ("grad",), "init": ("init", "init_save"), "data": ("data",)}
HEARTBEAT = 60  # seconds without output after which a log gets a status line
REDRAW = 1      # seconds between redraws of the live line on a terminal
SHOWN = 3       # running trials named in the line; more are counted


def clock_text(seconds: float) -> str:
    """62 -> '1:02', 3725 -> '1:02:05'."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def name_of(trial) -> str:
    spec = trial_spec(trial.config)
    return f"{spec['method']} lr={lr_label(spec['lr'])}"


class Progress(Callback):
    """Elapsed time, an estimate of the time left, the running trials with their phase, the counts
    by outcome and the best score so far per method."""

    def __init__(self, total: int, steps: int, *, clock=time.monotonic, out=None, tty=None):
        self.total, self.steps, self.clock, self._out = total, steps, clock, out
        self.tty = self.out.isatty() if tty is None else tty
        self.started = self.last_output = self.last_draw = clock()
        self.running = {}   # trial_id -> {trial, start, phase, diverged, result}
        self.ended = {}     # trial_id -> outcome: finished, diverged, failed, stopped
        self.durations = []  # seconds of each trial that ended on its own
        self.phases = {}    # phase -> seconds, over the trials that ended in this run
        self.best = {}      # method -> (val_loss, lr)
        self.most_at_once = 1

    @property
    def out(self):
        return self._out or sys.stdout

    def __getstate__(self):
        # Tune pickles callbacks with the experiment (tuner.pkl): a stream does not pickle
        return {**self.__dict__, "_out": None, "running": {}}

    def __setstate__(self, state):
        """A resumed sweep: times count from the restart, on the terminal of this run."""
        self.__dict__.update(state)
        self.started = self.last_output = self.last_draw = self.clock()
        self.durations, self.phases, self.tty = [], {}, self.out.isatty()

    # ---- Tune's callback methods ----

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running[trial.trial_id] = dict(trial=trial, start=self.clock(), phase="loading + init",
                                            diverged=False, result={})
        self.most_at_once = max(self.most_at_once, len(self.running))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        entry = self.running.get(trial.trial_id)
        if entry is None:
            return
        entry["diverged"] |= result.get("status") == "diverged"
        if result.get("final"):
            entry["phase"], entry["result"] = "done", result
            if result.get("status") == "finished" and result.get("val_loss") is not None:
                spec = trial_spec(trial.config)
                best = self.best.get(spec["method"])
                if best is None or result["val_loss"] < best[0]:
                    self.best[spec["method"]] = (result["val_loss"], spec["lr"])
        elif result.get("step", 0) >= self.steps:
            entry["phase"] = "scoring"
        else:
            entry["phase"] = f"training, step {result.get('step', 0)}/{self.steps}"

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self.running.pop(trial.trial_id, None) or dict(start=None, diverged=False, result={})
        result = entry["result"]
        outcome = "diverged" if entry["diverged"] else "finished" if result.get("final") else "stopped"
        self._end(trial, entry["start"], outcome, result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, self.running.pop(trial.trial_id, {}).get("start"), "failed", {})

    def on_step_end(self, iteration, trials, **info):
        now = self.clock()
        if self.tty and now - self.last_draw >= REDRAW:
            self._draw(self.status())
        elif not self.tty and now - self.last_output >= HEARTBEAT:
            self._say(self.status())

    def on_experiment_end(self, trials, **info):
        if self.tty:
            self.out.write("\r\x1b[K")
        self.out.write(self.summary() + "\n")
        if any(self.phases.values()):  # trials that report their phases (LLM tasks)
            self.out.write(self.time_spent() + "\n")
        self.out.flush()

    # ---- the text ----

    def status(self) -> str:
        """'[3:05, ~9:40 left] 4/15 trials done (1 diverged); running: lora lr=2e-3 training,
        step 16/24 | best val_loss: lora 0.871 at 2e-3'."""
        done = f"{len(self.ended)}/{self.total} trials done"
        bad = [f"{n} {k}" for k in ("diverged", "failed", "stopped")
               if (n := sum(v == k for v in self.ended.values()))]
        line = f"{self.head()} {done}" + (f" ({', '.join(bad)})" if bad else "")
        if self.running:
            now = self.clock()
            shown = [f"{name_of(e['trial'])} {e['phase']} ({clock_text(now - e['start'])})"
                     for e in list(self.running.values())[:SHOWN]]
            more = len(self.running) - SHOWN
            line += "; running: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        if self.best:
            line += " | best val_loss: " + ", ".join(
                f"{m} {number(v, 4)} at {lr_label(lr)}" for m, (v, lr) in sorted(self.best.items()))
        return line

    def summary(self) -> str:
        """'trials 15/15: 13 done, 1 failed, 1 diverged, 0 stopped in 31:05': the sweep's last line."""
        counts = {k: sum(v == k for v in self.ended.values()) for k in ("finished", "failed", "diverged", "stopped")}
        return (f"trials {len(self.ended)}/{self.total}: {counts['finished']} done, {counts['failed']} failed, "
                f"{counts['diverged']} diverged, {counts['stopped']} stopped in {clock_text(self.clock() - self.started)}")

    def time_spent(self) -> str:
        """'time in trials (30:12): training 43%, scoring 24%, ..., other 12% (Ray worker start,
        saving); 0:45 outside trials': where the sweep's time went, from the trials' phase timings."""
        in_trials = sum(self.durations)
        shares = sorted(self.phases.items(), key=lambda kv: -kv[1])
        parts = [f"{name} {seconds / in_trials:.0%}" for name, seconds in shares if seconds > 0]
        other = in_trials - sum(self.phases.values())
        line = f"time in trials ({clock_text(in_trials)}): {', '.join(parts)}, other {other / in_trials:.0%} " \
               f"(worker start, saving, reporting)"
        if self.most_at_once == 1:  # one at a time: the rest of the wall time is the driver's
            line += f"; {clock_text(max(0.0, self.clock() - self.started - in_trials))} outside trials"
        return line

    def head(self) -> str:
        """'[3:05, ~9:40 left]': elapsed time and the estimate of the time left."""
        left = self.time_left()
        return f"[{clock_text(self.clock() - self.started)}, " + (
            f"~{clock_text(left)} left]" if left is not None else "time left: after the first trial]")

    def time_left(self):
        """Seconds left: trials not yet ended at the mean duration of those that ended, less the
        time the running ones have had, spread over the trials that run at once. None before any
        trial has ended."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = self.clock()
        waiting = self.total - len(self.ended) - len(self.running)
        work = waiting * mean + sum(max(0.0, mean - (now - e["start"])) for e in self.running.values())
        return work / self.most_at_once

    def _end(self, trial, start, outcome, result):
        self.ended[trial.trial_id] = outcome
        seconds = None if start is None else self.clock() - start
        if seconds is not None and outcome in ("finished", "diverged"):
            self.durations.append(seconds)
            for name, keys in PHASES.items():
                spent = sum(result.get(f"{key}_seconds") or 0.0 for key in keys)
                self.phases[name] = self.phases.get(name, 0.0) + spent
        loss = result.get("val_loss")
        score = f": val_loss {number(loss, 4)}" if outcome == "finished" and loss is not None else ""
        took = f" in {clock_text(seconds)}" if seconds is not None else ""
        self._say(f"{self.head()} {outcome} {name_of(trial)} seed={trial_spec(trial.config)['seed']}{score}{took} "
                  f"({len(self.ended)}/{self.total})")

    def _say(self, line: str):
        """A line of its own (a live line on a terminal is redrawn below it)."""
        self.out.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.out.flush()
        self.last_output = self.clock()
        if self.tty:
            self._draw(self.status())

    def _draw(self, line: str):
        self.out.write("\r\x1b[K" + line)
        self.out.flush()
        self.last_draw = self.last_output = self.clock()


def table(rows: list[dict]) -> str:
    """The trials as an aligned text table; the GSM8K columns only where something was scored."""
    scored = any(r.get("gsm8k_flexible") is not None for r in rows)
    head = ["method", "lr", "seed", "status", "val_loss"] + (["strict", "flex"] if scored else []) + ["hparams"]
    body = []
    for r in rows:
        cells = [r["method"], lr_label(r["lr"]), str(r["seed"]), r["status"],
                 "-" if r["val_loss"] is None else number(r["val_loss"], 4)]
        if scored:
            cells += ["-" if r.get(k) is None else f"{r[k]:.3f}" for k in ("gsm8k_strict", "gsm8k_flexible")]
        body.append(cells + [" ".join(f"{k}={v}" for k, v in r["hparams"].items())])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    left = {"method", "status", "hparams"}  # text left, numbers right

    def line(row):
        return "  ".join(c.ljust(w) if h in left else c.rjust(w) for h, c, w in zip(head, row, widths)).rstrip()
    return "\n".join(line(row) for row in [head] + body)
