"""The sweep's terminal view (harness.progress) on a fake event stream: Tune's callback methods
driven with fake trials and a fake clock, as Tune calls them during a sweep."""

import io
import pickle
from types import SimpleNamespace

from harness.progress import HEARTBEAT, Progress, clock_text, table


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def fake_trial(i, method, lr):
    return SimpleNamespace(trial_id=f"t{i}", config={"trial": {"method": method, "lr": lr, "seed": 0, "hparams": {}}})


def sweep(tty=False):
    clock, out = Clock(), io.StringIO()
    return Progress(total=4, steps=24, clock=clock, out=out, tty=tty), clock, out


def run_one(p, clock, trial, seconds, val_loss=1.0):
    """A trial from start to final result: step 0, 8, 24 (then scoring) and the final report."""
    p.on_trial_start(0, [], trial)
    for step in (0, 8, 24):
        clock.now += seconds / 4
        p.on_trial_result(0, [], trial, {"step": step, "val_loss": 2.0, "status": "running"})
    clock.now += seconds / 4
    p.on_trial_result(0, [], trial, {"step": 24, "val_loss": val_loss, "status": "finished", "final": 1})
    p.on_trial_complete(0, [], trial)


def test_the_line_names_running_trials_with_their_phase_and_elapsed_time():
    p, clock, _ = sweep()
    a, b = fake_trial(0, "lora", 2e-3), fake_trial(1, "pissa", 3e-4)
    p.on_trial_start(0, [], a)
    clock.now += 5
    assert p.status() == ("[0:05, time left: after the first trial] 0/4 trials done; "
                          "running: lora lr=2e-3 loading + init (0:05)")
    p.on_trial_result(0, [], a, {"step": 0, "val_loss": 2.0, "status": "running"})
    p.on_trial_result(0, [], a, {"step": 16, "val_loss": 1.5, "status": "running"})
    p.on_trial_start(0, [], b)
    clock.now += 10
    assert "running: lora lr=2e-3 training, step 16/24 (0:15), pissa lr=3e-4 loading + init (0:10)" in p.status()
    p.on_trial_result(0, [], a, {"step": 24, "val_loss": 1.2, "status": "running"})
    assert "lora lr=2e-3 scoring (0:15)" in p.status()


def test_time_left_comes_from_finished_trials_and_the_plan():
    p, clock, out = sweep()
    run_one(p, clock, fake_trial(0, "lora", 2e-3), seconds=120, val_loss=0.8707)
    # 3 trials to go at 2:00 each, one at a time
    assert p.status().startswith("[2:00, ~6:00 left] 1/4 trials done | best val_loss: lora 0.8707 at 2e-3")
    p.on_trial_start(0, [], fake_trial(1, "lora", 3e-4))
    clock.now += 30
    assert p.status().startswith("[2:30, ~5:30 left] 1/4 trials done; running: lora lr=3e-4")
    assert "[2:00, ~6:00 left] finished lora lr=2e-3 seed=0: val_loss 0.8707 in 2:00 (1/4)" in out.getvalue()


def test_two_at_once_halve_the_estimate_and_outcomes_are_counted():
    p, clock, out = sweep()
    run_one(p, clock, fake_trial(0, "lora", 2e-3), seconds=100)
    bad, crash = fake_trial(1, "lora", 1e-1), fake_trial(2, "pissa", 1e-1)
    p.on_trial_start(0, [], bad)
    p.on_trial_start(0, [], crash)
    p.on_trial_result(0, [], bad, {"step": 3, "status": "diverged"})
    assert "1/4 trials done;" in p.status()  # diverged, but not ended yet
    p.on_trial_result(0, [], bad, {"step": 3, "status": "diverged", "final": 1})
    p.on_trial_complete(0, [], bad)
    p.on_trial_error(0, [], crash)
    assert p.status().startswith("[1:40, ~0:25 left] 3/4 trials done (1 diverged, 1 failed)")
    # mean 100 s over 2 ended on their own (0 s for the diverged one): 50 s; 1 to go, 2 at once
    assert p.time_left() == 25
    p.on_experiment_end([])
    assert out.getvalue().splitlines()[-1] == "trials 3/4: 1 done, 1 failed, 1 diverged, 0 stopped in 1:40"


def test_a_log_gets_a_heartbeat_at_most_every_minute_and_a_line_per_finished_trial():
    p, clock, out = sweep(tty=False)
    trial = fake_trial(0, "lora", 2e-3)
    p.on_trial_start(0, [], trial)
    for _ in range(3 * HEARTBEAT):  # three minutes of Tune loop steps, one a second
        clock.now += 1
        p.on_step_end(0, [])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("[") and "running: lora lr=2e-3" in line for line in lines)
    assert [line.split(",")[0] for line in lines] == ["[1:00", "[2:00", "[3:00"]
    p.on_trial_result(0, [], trial, {"step": 24, "val_loss": 0.95, "status": "finished", "final": 1})
    p.on_trial_complete(0, [], trial)
    assert out.getvalue().splitlines()[-1] == "[3:00, ~9:00 left] finished lora lr=2e-3 seed=0: val_loss 0.95 in 3:00 (1/4)"
    assert "\r" not in out.getvalue()


def test_a_terminal_gets_one_live_line_redrawn_in_place():
    p, clock, out = sweep(tty=True)
    p.on_trial_start(0, [], fake_trial(0, "lora", 2e-3))
    for _ in range(5):
        clock.now += 1
        p.on_step_end(0, [])
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 5 and "\n" not in text
    assert text.endswith("running: lora lr=2e-3 loading + init (0:05)")
    p.on_experiment_end([])  # the live line gives way to the summary
    assert out.getvalue().endswith("\r\x1b[Ktrials 0/4: 0 done, 0 failed, 0 diverged, 0 stopped in 0:05\n")


def test_progress_pickles_without_its_stream_for_resume():
    real = Progress(total=2, steps=8, out=io.StringIO(), tty=False)  # Tune saves callbacks in tuner.pkl
    real.on_trial_start(0, [], fake_trial(0, "lora", 2e-3))
    restored = pickle.loads(pickle.dumps(real))
    assert restored.running == {} and restored.total == 2 and restored._out is None


def test_clock_text():
    assert (clock_text(5), clock_text(62), clock_text(3725)) == ("0:05", "1:02", "1:02:05")


def test_table_columns_align_and_gsm8k_columns_only_when_scored():
    rows = [dict(method="lora", lr=0.015625, seed=0, status="finished", val_loss=1.12e-28, hparams={}),
            dict(method="riemannian", lr=1.0, seed=0, status="diverged", val_loss=None, hparams={"reg": 1e-6})]
    head, *body = table(rows).splitlines()
    assert head.split() == ["method", "lr", "seed", "status", "val_loss", "hparams"]
    assert body[0].split()[:5] == ["lora", "1.56e-2", "0", "finished", "1.120e-28"]
    for line in body:  # text starts under its heading, numbers end under theirs
        assert line.index("finished" if "finished" in line else "diverged") == head.index("status")
        end = head.index("val_loss") + len("val_loss")
        assert line[end - 1] != " " and line[end:end + 1] in ("", " ")
    scored = [dict(rows[0], gsm8k_strict=0.1, gsm8k_flexible=0.2)]
    assert table(scored).splitlines()[0].split()[5:7] == ["strict", "flex"]


def test_the_end_says_where_the_time_went():
    p, clock, out = sweep()
    trial = fake_trial(0, "lora", 2e-3)
    p.on_trial_start(0, [], trial)
    clock.now += 100
    p.on_trial_result(0, [], trial, {"step": 24, "val_loss": 1.0, "status": "finished", "final": 1,
                                     "train_seconds": 50.0, "score_seconds": 25.0, "val_seconds": 10.0,
                                     "load_seconds": 4.0, "init_seconds": 0.5, "init_save_seconds": 0.5})
    p.on_trial_complete(0, [], trial)
    clock.now += 20   # the driver's own time after the trial
    p.on_experiment_end([])
    last = out.getvalue().splitlines()[-1]
    assert last == ("time in trials (1:40): training 50%, scoring 25%, validation 10%, model load 4%, init 1%, "
                    "other 10% (worker start, saving, reporting); 0:20 outside trials")
