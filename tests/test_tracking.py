"""Summary runs: one per seed group under the sweep's parent run, driven through the Recorder's and
Tracker's Tune callbacks with fake trials, and from a real tiny sweep."""

import pickle
import statistics
from types import SimpleNamespace

import pytest

from harness import record, tracking
from harness.report import analysis_of
from helpers import run_cli, sweep_runs, summary_runs
from services import free_port

# (lr, seed) -> final val loss; None: the trial diverged; "error": it crashed
TRIALS = {(1e-3, 0): 1.10, (1e-3, 1): 1.30, (1e-3, 2): None, (2e-3, 0): 0.90, (2e-3, 1): "error"}


def fake_trial(lr, seed):
    return SimpleNamespace(trial_id=f"t{lr:g}-{seed}", num_failures=0, error_file=None, last_result={},
                           config={"trial": {"method": "lora", "lr": lr, "seed": seed, "hparams": {"rank": 4}}})


def play(callbacks, lr, seed, loss):
    """What Tune calls for one trial, on each callback in order: start, step results (each then
    the trial's last result), the final result, then complete or error."""
    trial = fake_trial(lr, seed)

    def call(hook, *args):
        for callback in callbacks:
            getattr(callback, hook)(0, [], trial, *args)

    def result(values):
        call("on_trial_result", values)
        trial.last_result = values

    call("on_trial_start")
    result({"step": 4, "val_loss": 2.0, "status": "running"})
    if loss == "error":
        call("on_trial_error")
        return
    if loss is None:
        result({"step": 6, "status": "diverged"})
    else:
        result({"step": 8, "val_loss": loss, "status": "running"})
        result({"step": 8, "final": 1, "status": "finished", "out": "", "val_loss": loss,
                "best_val_loss": loss - 0.05, "gsm8k_flexible": loss / 10})
    call("on_trial_complete")


@pytest.fixture
def store(tmp_path):
    uri, where = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "s")
    parent = tracking.start_sweep(uri, "gsm8k", "s", {"trial.eval_limit": 0})
    callbacks = [record.Recorder(where), tracking.Tracker(uri, "gsm8k", "s", parent, where)]
    for (lr, seed), loss in TRIALS.items():
        play(callbacks, lr, seed, loss)
    return uri, tmp_path / "mlflow.db", parent, callbacks


def by_lr(runs):
    return {float(r.data.params["lr"]): r for r in runs}


def test_summary_holds_mean_std_and_count_of_the_finished_seeds(store):
    _, db, parent, _ = store
    mlf, _, children = sweep_runs(db, "s")
    summaries = by_lr(summary_runs(db, "s"))
    assert len(children) == 5 and sorted(summaries) == [1e-3, 2e-3]
    s = summaries[1e-3]
    assert s.data.tags["mlflow.parentRunId"] == parent and s.data.tags["harness.kind"] == "summary"
    assert s.data.tags["mlflow.runName"] == "lora lr=0.001 rank=4 (3 seeds)"  # rank 4 is not lora's default
    assert s.data.params["method"] == "lora" and s.data.params["rank"] == "4" and "seed" not in s.data.params
    finished = [c for c in children if c.data.params["lr"] == "0.001" and c.data.tags["status"] == "finished"]
    for key in ("val_loss", "best_val_loss", "gsm8k_flexible"):
        values = [c.data.metrics[key] for c in finished]
        assert s.data.metrics[f"{key}_mean"] == pytest.approx(statistics.fmean(values))
        assert s.data.metrics[f"{key}_std"] == pytest.approx(statistics.stdev(values))
        assert s.data.metrics[f"{key}_n"] == 2
    assert s.data.metrics["val_loss_mean"] == pytest.approx(1.20)
    assert (s.data.metrics["trials"], s.data.metrics["finished"], s.data.metrics["diverged"]) == (3, 2, 1)
    crashed = summaries[2e-3].data.metrics
    assert (crashed["trials"], crashed["failed"], crashed["val_loss_n"]) == (2, 1, 1)
    assert crashed["val_loss_mean"] == pytest.approx(0.90) and "val_loss_std" not in crashed  # one seed: no spread
    assert summaries[2e-3].info.status == "FINISHED"
    assert mlf.get_run(s.info.run_id).info.run_name == "lora lr=0.001 rank=4 (3 seeds)"


def test_a_restarted_driver_updates_the_same_summary_run(store, monkeypatch):
    uri, db, parent, callbacks = store
    before = {lr: r.info.run_id for lr, r in by_lr(summary_runs(db, "s")).items()}
    restored = pickle.loads(pickle.dumps(callbacks))  # as Tune.restore brings them back: no client, no runs
    where = callbacks[0].where
    monkeypatch.setattr(tracking.Tracker, "uri", uri)  # what the resuming driver sets
    monkeypatch.setattr(tracking.Tracker, "where", where)
    monkeypatch.setattr(record.Recorder, "where", where)
    play(restored, 1e-3, 3, 1.50)
    restored[1].update_summary(fake_trial(1e-3, 3).config["trial"])  # a second update changes nothing
    after = by_lr(summary_runs(db, "s"))
    assert {lr: r.info.run_id for lr, r in after.items()} == before
    m = after[1e-3].data.metrics
    assert (m["trials"], m["val_loss_n"]) == (4, 3) and m["val_loss_mean"] == pytest.approx((1.1 + 1.3 + 1.5) / 3)
    assert after[1e-3].data.tags["mlflow.runName"] == "lora lr=0.001 rank=4 (4 seeds)"


def test_reports_read_trials_not_summaries(store, tmp_path):
    uri = store[0]
    _, _, rows = tracking.sweep_rows(uri, "gsm8k", "s")
    assert sorted((r["lr"], r["seed"]) for r in rows) == sorted(TRIALS)
    _, _, analysis = analysis_of(uri, "gsm8k", "s")
    rungs = {r["lr"]: r for r in analysis["methods"]["lora"]["rungs"]}
    assert (rungs[1e-3]["trials"], rungs[1e-3]["n"], rungs[1e-3]["diverged"]) == (3, 2, 1)
    assert (rungs[2e-3]["trials"], rungs[2e-3]["failed"]) == (2, 1)


def test_a_store_down_queues_the_trials_without_failing_them_and_sync_writes_them_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_TRACKING_RETRY_SECONDS", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the CLI sets it
    uri, where = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "s")
    parent = tracking.start_sweep(uri, "gsm8k", "s", {"trial.eval_limit": 0})
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    callbacks = [record.Recorder(where), tracking.Tracker(down, "gsm8k", "s", parent, where)]
    for (lr, seed), loss in TRIALS.items():
        play(callbacks, lr, seed, loss)  # no callback raises: Tune would fail the trial
    assert capsys.readouterr().err.count("not answering") == 1
    recorded = sorted(r["key"] for r in record.records(where))
    assert len(recorded) == 5 and sorted(tracking.pending(where)) == recorded
    assert tracking.sync(uri, "gsm8k", "s", where, parent) == 5 and tracking.pending(where) == []
    tracking.sync(uri, "gsm8k", "s", where, parent)  # nothing left: writes nothing twice
    mlf, _, children = sweep_runs(tmp_path / "mlflow.db", "s")
    assert len(children) == 5
    statuses = {(float(c.data.params["lr"]), int(c.data.params["seed"])): c.data.tags["status"] for c in children}
    assert statuses == {(1e-3, 0): "finished", (1e-3, 1): "finished", (1e-3, 2): "diverged",
                        (2e-3, 0): "finished", (2e-3, 1): "failed"}
    finished = next(c for c in children if c.data.params["lr"] == "0.001" and c.data.params["seed"] == "0")
    history = mlf.get_metric_history(finished.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(4, 2.0), (8, 1.1)]
    assert finished.data.metrics["best_val_loss"] == pytest.approx(1.05)
    summary = by_lr(summary_runs(tmp_path / "mlflow.db", "s"))[1e-3].data.metrics
    assert (summary["trials"], summary["finished"], summary["diverged"]) == (3, 2, 1)


def test_summary_metrics_pure():
    m = tracking.summary_metrics([("finished", {"val_loss": 1.0, "gsm8k_n": 5.0}), ("finished", {"val_loss": 3.0}),
                                  ("finished", {"val_loss": float("nan")}), ("stopped", {"val_loss": 9.0})])
    assert (m["val_loss_mean"], m["val_loss_std"], m["val_loss_n"]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert (m["gsm8k_n_mean"], m["gsm8k_n_n"]) == (5.0, 1) and "gsm8k_n_std" not in m
    assert (m["trials"], m["finished"], m["stopped"], m["diverged"]) == (4, 3, 1, 0)


def test_real_sweep_has_one_summary_per_rung(tmp_path, data_dir):
    proc = run_cli("run", "--methods", "lora", "--preset", "smoke", "--data-dir", data_dir, "--storage", tmp_path,
                   "--name", "seeds", "--lrs", "1e-2,3e-2", "--seeds", "2", "--steps", "4", "--eval-interval", "2",
                   "--eval-limit", "0", "--cpus-per-trial", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, parents, children = sweep_runs(tmp_path / "mlflow.db", "seeds")
    summaries = by_lr(summary_runs(tmp_path / "mlflow.db", "seeds"))
    assert len(children) == 4 and sorted(summaries) == [1e-2, 3e-2]
    for lr, s in summaries.items():
        losses = [c.data.metrics["val_loss"] for c in children if float(c.data.params["lr"]) == lr]
        assert s.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert s.data.tags["mlflow.runName"] == f"lora lr={lr:g} (2 seeds)"
        assert s.data.metrics["val_loss_mean"] == pytest.approx(statistics.fmean(losses))
        assert s.data.metrics["val_loss_std"] == pytest.approx(statistics.stdev(losses))
        assert s.data.metrics["val_loss_n"] == 2
